//! Storage: the traits the use cases depend on, what their operations report, and a neutral
//! error. Every method is one whole operation, durable when it returns. The backends live
//! below: [`sled`] (the embedded default) and [`postgres`] (one database that several
//! instances share). Nothing outside a backend's folder knows how it keeps its data.

mod account_tx;
mod accounts;
mod audit;
mod ceremonies;
mod challenges;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod conformance;
mod expiry;
mod limits;
mod mail_queue;
mod passwords;
pub mod postgres;
mod sessions;
pub mod sled;

pub use account_tx::{AccountChange, Changed, Ends, UserChange};
pub use accounts::{CreateOutcome, UserStore, VerifyOutcome};
pub use audit::{AuditRecord, AuditStore};
pub use ceremonies::CeremonyStore;
pub use challenges::{ChallengeStore, FactorFailuresRecord, Revision, Versioned};
pub use expiry::SweepReport;
pub use limits::LimitStore;
pub use mail_queue::MailQueueStore;
pub use passwords::PasswordStore;
pub use sessions::{LegacyRefresh, RotateOutcome, SessionStore, SigningKeyStore};

use std::sync::Arc;

/// Opens the storage that `storage.backend` names: the one place the server and every
/// command open it. sled's open reads its log on a blocking thread.
pub async fn open(config: &crate::Config) -> Result<Arc<dyn Storage>, OpenError> {
    match config.storage.backend {
        crate::config::StorageBackend::Sled => {
            let (path, limits) = (config.db_path(), config.limits.clone());
            let opened =
                tokio::task::spawn_blocking(move || sled::Store::open_with_limits(&path, &limits))
                    .await
                    .map_err(OpenError::new)?;
            Ok(Arc::new(opened.map_err(OpenError::new)?))
        }
        crate::config::StorageBackend::Postgres => Ok(Arc::new(
            postgres::open(&config.storage.postgres, &config.limits)
                .await
                .map_err(OpenError::new)?,
        )),
    }
}

/// Why the storage could not be opened: the backend's own error, with its own message
/// (a locked folder, a newer format, an unreachable server).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct OpenError(Box<dyn std::error::Error + Send + Sync>);

impl OpenError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> OpenError {
        OpenError(Box::new(e))
    }

    /// The backend's error, for callers (and tests) that know the backend.
    pub fn backend_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Stored data cannot be read: damaged, or written by an unknown version.
    #[error("stored data cannot be read: {what}")]
    Corrupt { what: String },
    /// A write conflicted with another one and could not be retried.
    #[error("a write conflicted with another: {0}")]
    Conflict(String),
    /// The backend failed or cannot be reached (I/O, a lost connection).
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Unavailable(Box::new(e))
    }
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    pub trees: usize,
    pub entries: u64,
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
    + CeremonyStore
    + PasswordStore
    + SigningKeyStore
    + MailQueueStore
    + AuditStore
    + ExpiryStore
    + LimitStore
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
        change: impl Fn(&mut crate::domain::records::UserRecord) -> Result<T, E> + Send + Sync,
    ) -> Result<Changed<T, E>, StoreError> {
        let last = parking_lot::Mutex::new(None);
        let changed = self
            .change_user_with(id, how, &erased(&change, &last))
            .await?;
        typed(changed, last.into_inner())
    }

    /// [`SessionStore::start_session_with`], with `sign_in`'s refusal.
    pub async fn start_session<E: Send>(
        &self,
        session: &crate::domain::records::SessionRecord,
        max_sessions: usize,
        sign_in: impl Fn(&mut crate::domain::records::UserRecord) -> Result<(), E> + Send + Sync,
    ) -> Result<Changed<(), E>, StoreError> {
        let last = parking_lot::Mutex::new(None);
        let changed = self
            .start_session_with(session, max_sessions, &erased(&sign_in, &last))
            .await?;
        typed(changed, last.into_inner())
    }
}

/// `change` as the object-safe methods take it: each run's outcome is kept in `last`, and
/// the backend sees only whether it refused.
fn erased<'a, T: Send, E: Send>(
    change: &'a (impl Fn(&mut crate::domain::records::UserRecord) -> Result<T, E> + Sync),
    last: &'a parking_lot::Mutex<Option<Result<T, E>>>,
) -> impl Fn(&mut crate::domain::records::UserRecord) -> Result<(), ()> + Send + Sync + 'a {
    move |user| {
        let outcome = change(user);
        let refused = outcome.is_err();
        *last.lock() = Some(outcome);
        if refused { Err(()) } else { Ok(()) }
    }
}

/// A change's outcome with the value or refusal of its closure's last run: the run whose
/// outcome the backend kept.
fn typed<T, E>(
    changed: Changed<(), ()>,
    last: Option<Result<T, E>>,
) -> Result<Changed<T, E>, StoreError> {
    let lost = || StoreError::Corrupt {
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

/// A backup read whole into new storage beside the live one, which is not touched yet: it
/// is checked, then installed in the live one's place or discarded.
#[derive(Debug)]
pub struct StagedRestore {
    staged: sled::Staged,
    db_path: std::path::PathBuf,
}

/// Reads the backup stream `input` (from `file`) whole into new storage beside the stopped
/// storage that `config` names. The files it may carry beside the store are `allowed`.
/// Anything wrong leaves nothing behind.
pub fn stage_restore(
    config: &crate::Config,
    file: &std::path::Path,
    input: impl std::io::BufRead,
    allowed: &[&str],
) -> Result<StagedRestore, OpenError> {
    match config.storage.backend {
        crate::config::StorageBackend::Postgres => Err(OpenError::new(std::io::Error::other(
            "a PostgreSQL store is restored with pg_restore (or psql), not keyhold restore",
        ))),
        crate::config::StorageBackend::Sled => {
            let db_path = config.db_path();
            let staged =
                sled::stage_restore(&db_path, file, input, allowed).map_err(OpenError::new)?;
            Ok(StagedRestore { staged, db_path })
        }
    }
}

impl StagedRestore {
    /// The files the backup carries beside the store, by name.
    pub fn attachments(&self) -> &[(String, Vec<u8>)] {
        &self.staged.attachments
    }

    /// Opens the staged storage, to check it before it is installed.
    pub fn open(&self) -> Result<Arc<dyn Storage>, OpenError> {
        Ok(Arc::new(
            sled::Store::open(&self.staged.path).map_err(OpenError::new)?,
        ))
    }

    /// Puts the staged storage in the place of the live one, which is kept beside it.
    pub fn install(self, now: i64) -> Result<BackupSummary, OpenError> {
        self.staged
            .install(&self.db_path, now)
            .map_err(OpenError::new)
    }

    /// Removes the staged storage: the backup is not restored.
    pub fn discard(self) {
        self.staged.discard();
    }
}
