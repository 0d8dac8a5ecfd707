//! Storage: small traits that the use cases depend on, and sled behind them. Every sled call
//! in Keyhold lives under this module.

pub mod keys;
mod sled_store;

use std::path::PathBuf;

pub use sled_store::{Store, create_private_dir};

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
}

/// Whether the store can take writes: what `/readyz` asks.
pub trait Health: Send + Sync {
    fn check_writable(&self, now_unix_nanos: i128) -> Result<(), StoreError>;
}
