//! The sled backend: Keyhold's embedded default. Everything that knows sled is in this
//! folder: the trees and their keys ([`keys`]), how records are written ([`records`]), the
//! group flush, the format migrations, backup and restore, and the checkpoint on close.

mod account_tx;
mod accounts;
mod audit;
pub mod backup;
mod ceremonies;
mod challenges;
mod expiry;
pub mod keys;
mod limits;
mod mail_queue;
mod passwords;
pub mod records;
mod sessions;
mod store;

use std::path::PathBuf;

// The neutral items the files below name as `super::…`.
use crate::store::{ExpiryStore, StoreError, UserStore};

pub use backup::{Staged, stage_restore};
pub use store::{FlushStats, Store};

/// Why the sled database could not be opened (or a backup read into a new one).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for OpenError {
    fn from(e: sled::Error) -> OpenError {
        OpenError::Store(e.into())
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt {
                what: e.to_string(),
            },
            other => StoreError::unavailable(other),
        }
    }
}

/// A record of `tree` that cannot be read.
pub(crate) fn corrupt(tree: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: format!("a record in tree {tree}: {what}"),
    }
}

/// Turns a transaction's outcome into the store's error.
pub(crate) fn tx_result<T>(
    result: sled::transaction::TransactionResult<T, StoreError>,
) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => e.into(),
    })
}

/// A 16-byte id read back from an index value.
pub(crate) fn uuid_from(tree: &str, bytes: &[u8]) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::from_slice(bytes).map_err(|_| corrupt(tree, "an id is not 16 bytes"))
}

/// The storage contract, on sled in a temporary folder.
#[cfg(test)]
mod conformance {
    crate::storage_conformance_tests!(async {
        let dir = tempfile::tempdir().unwrap();
        let store = super::Store::open(&dir.path().join("db")).unwrap();
        (
            std::sync::Arc::new(store) as std::sync::Arc<dyn crate::store::Storage>,
            dir,
        )
    });
}
