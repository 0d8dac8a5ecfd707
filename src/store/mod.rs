//! Storage: small traits that the use cases depend on, and sled behind them. Every sled call
//! in Keyhold lives under this module.

mod account_tx;
mod accounts;
pub mod audit;
pub mod backup;
mod challenges;
mod expiry;
pub mod keys;
mod mail_queue;
mod passwords;
pub mod records;
mod sessions;
mod sled_store;

use std::path::PathBuf;

pub use account_tx::{AccountChange, Changed, Ends};
pub use accounts::{CreateOutcome, UserStore, VerifyOutcome};
pub use audit::{AuditRecord, AuditStore};
pub use challenges::{ChallengeStore, FactorFailuresRecord, Versioned};
pub use expiry::SweepReport;
pub use mail_queue::MailQueueStore;
pub use passwords::PasswordStore;
pub use sessions::{LegacyRefresh, RotateOutcome, SessionStore, SigningKeyStore};

/// Opens the storage that `storage.backend` names: the one place the server and every
/// command open it.
pub fn open(config: &crate::Config) -> Result<Store, StoreError> {
    match config.storage.backend {
        crate::config::StorageBackend::Sled => Store::open(&config.db_path()),
    }
}
pub use sled_store::{FlushStats, Store, create_private_dir};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the storage folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the database at {path} is in use by another process (is another Keyhold running on the same storage.path?)"
    )]
    Locked { path: PathBuf },
    #[error(
        "the database at {path} has storage format {found}, but this Keyhold reads format {supported} at most: run a newer Keyhold, or restore a backup made by this version"
    )]
    FormatTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("the database at {path} is damaged: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("a record in tree {tree} cannot be read: {what}")]
    Record { tree: String, what: String },
}

/// Whether the store can take writes: what `/readyz` asks.
pub trait Health: Send + Sync {
    fn check_writable(&self, now_unix_nanos: i128) -> Result<(), StoreError>;
}

/// Turns a transaction's outcome into the store's error.
pub(crate) fn tx_result<T>(
    result: sled::transaction::TransactionResult<T, StoreError>,
) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

/// A 16-byte id read back from an index value.
pub(crate) fn uuid_from(tree: &str, bytes: &[u8]) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::from_slice(bytes).map_err(|_| StoreError::Record {
        tree: tree.to_string(),
        what: "an id is not 16 bytes".into(),
    })
}
