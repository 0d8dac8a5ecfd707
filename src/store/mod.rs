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

pub use account_tx::{AccountChange, Changed, Ends, UserChange};
pub use accounts::{CreateOutcome, UserStore, VerifyOutcome};
pub use audit::{AuditRecord, AuditStore};
pub use challenges::{ChallengeStore, FactorFailuresRecord, Revision, Versioned};
pub use expiry::SweepReport;
pub use mail_queue::MailQueueStore;
pub use passwords::PasswordStore;
pub use sessions::{LegacyRefresh, RotateOutcome, SessionStore, SigningKeyStore};

/// Opens the storage that `storage.backend` names: the one place the server and every
/// command open it.
pub fn open(config: &crate::Config) -> Result<std::sync::Arc<dyn Storage>, StoreError> {
    match config.storage.backend {
        crate::config::StorageBackend::Sled => {
            Ok(std::sync::Arc::new(Store::open(&config.db_path())?))
        }
    }
}
pub use backup::BackupSummary;
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

/// Whether the store can take writes, and what `/metrics` reports of it.
#[async_trait::async_trait]
pub trait Health: Send + Sync {
    /// Writes a probe: what `/readyz` asks.
    async fn check_writable(&self, now_unix_nanos: i128) -> Result<(), StoreError>;
    /// Counts for `/metrics`.
    async fn stats(&self) -> Result<StorageStats, StoreError>;
}

/// What `/metrics` reports of the storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub device_sessions: u64,
    pub queued_mail: u64,
    /// The backend's own counters, by metric name (sled: its group commit's flushes).
    pub counters: Vec<(&'static str, u64)>,
}

/// Reclaims what has expired. Expiry is enforced where a record is used; sweeping only
/// frees the space.
#[async_trait::async_trait]
pub trait ExpiryStore: Send + Sync {
    /// Removes at most `limit` records (codes, refresh tokens, sessions, challenges) that
    /// are expired at `now`. `entries < limit` in the report means nothing more is due.
    async fn sweep_expired(&self, now: i64, limit: usize) -> Result<SweepReport, StoreError>;
}

/// Everything Keyhold keeps. Every method is one whole operation, durable when it returns.
///
/// The server, the jobs and the commands hold it as an `Arc<dyn Storage>`: one type whatever
/// the backend, chosen at start-up by `storage.backend`, for the price of one boxed future
/// per call.
pub trait Storage:
    UserStore
    + SessionStore
    + ChallengeStore
    + PasswordStore
    + SigningKeyStore
    + MailQueueStore
    + AuditStore
    + ExpiryStore
    + Health
{
    /// The backend, as `storage.backend` names it.
    fn backend(&self) -> &'static str;

    /// Writes one consistent copy of everything, with `attachments` (files kept beside the
    /// store), to `out`, as the backup `file`. Blocking: call it off the async threads.
    fn backup_to(
        &self,
        out: &mut dyn std::io::Write,
        file: &std::path::Path,
        attachments: &[(&str, Vec<u8>)],
        now: i64,
    ) -> Result<BackupSummary, StoreError>;

    /// Closes the store after a clean stop, when this is its last handle, leaving it quick
    /// to open again; returns whether it did. Blocking: call it off the async threads.
    fn close(self: std::sync::Arc<Self>) -> Result<bool, StoreError>;

    /// The backend itself, for tests of what is particular to it.
    #[doc(hidden)]
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The typed forms of the methods that take a closure: the closure's value and refusal
/// are carried past the object-safe trait methods, which see `Result<(), ()>`.
impl dyn Storage + '_ {
    /// [`UserStore::change_user_with`], with `change`'s value and refusal.
    pub async fn change_user<T: Send, E: Send>(
        &self,
        id: uuid::Uuid,
        how: AccountChange<'_>,
        change: impl Fn(&mut records::UserRecord) -> Result<T, E> + Send + Sync,
    ) -> Result<Changed<T, E>, StoreError> {
        let last = parking_lot::Mutex::new(None);
        let changed = self
            .change_user_with(id, how, &|user| {
                let outcome = change(user);
                let refused = outcome.is_err();
                *last.lock() = Some(outcome);
                if refused { Err(()) } else { Ok(()) }
            })
            .await?;
        typed(changed, last.into_inner())
    }

    /// [`SessionStore::start_session_with`], with `sign_in`'s refusal.
    pub async fn start_session<E: Send>(
        &self,
        session: &records::SessionRecord,
        max_sessions: usize,
        sign_in: impl Fn(&mut records::UserRecord) -> Result<(), E> + Send + Sync,
    ) -> Result<Changed<(), E>, StoreError> {
        let last = parking_lot::Mutex::new(None);
        let changed = self
            .start_session_with(session, max_sessions, &|user| {
                let outcome = sign_in(user);
                let refused = outcome.is_err();
                *last.lock() = Some(outcome);
                if refused { Err(()) } else { Ok(()) }
            })
            .await?;
        typed(changed, last.into_inner())
    }
}

/// A change's outcome with the value or refusal of its closure's last run: the run whose
/// outcome the backend kept.
fn typed<T, E>(
    changed: Changed<(), ()>,
    last: Option<Result<T, E>>,
) -> Result<Changed<T, E>, StoreError> {
    let lost = || StoreError::Record {
        tree: "*".into(),
        what: "a change finished without running its closure".into(),
    };
    Ok(match changed {
        Changed::Done { user, ended, .. } => match last {
            Some(Ok(value)) => Changed::Done { user, value, ended },
            _ => return Err(lost()),
        },
        Changed::Refused(()) => match last {
            Some(Err(refused)) => Changed::Refused(refused),
            _ => return Err(lost()),
        },
        Changed::Missing => Changed::Missing,
        Changed::EmailTaken => Changed::EmailTaken,
        Changed::UsernameTaken => Changed::UsernameTaken,
    })
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
