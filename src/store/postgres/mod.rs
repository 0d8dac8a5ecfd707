//! The PostgreSQL backend: several Keyhold instances on one database. Everything that knows
//! PostgreSQL is in this folder. Every method is one transaction (or one statement), and a
//! commit is its durability. Records are stored as the JSON of `domain::records`, beside the
//! columns they are looked up, locked, ordered and swept by (`migrations/`).
//!
//! Concurrency is row locks (`SELECT … FOR UPDATE` on the account a change belongs to),
//! conditional writes (`UPDATE … WHERE revision = $n`), upserts, and `FOR UPDATE SKIP
//! LOCKED` claims: no session-level advisory lock, so that the SQL also suits
//! PostgreSQL-compatible distributed databases. Serialization failures and deadlocks
//! (`40001`, `40P01`) are retried.

mod accounts;
mod ceremonies;
mod challenges;
mod connect;
mod limits;
mod mail;
mod migrate;
mod sessions;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod test_cluster;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;

use crate::store::{
    BackupSummary, ExpiryStore, Health, StorageStats, StoreError, SweepReport, UserStore,
};

pub use connect::{OpenError, open};

/// How many times a transaction that lost a serialization race runs again.
pub(crate) const MAX_TRIES: u32 = 10;

/// The PostgreSQL storage: a pool of connections.
#[derive(Clone)]
pub struct Store {
    pool: deadpool_postgres::Pool,
    /// A few of the pool's connections, shared by single-statement reads.
    readers: Arc<Readers>,
    /// The rules of the abuse limits; their counts are rows (see `limits`).
    limits: Arc<crate::limits::Limits>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("postgres::Store")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// Why a step of a transaction failed: the database's error (perhaps worth another try),
/// or the store's own.
pub(crate) enum Fail {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(fail: Fail) -> StoreError {
        match fail {
            Fail::Db(e) => db_error(e),
            Fail::Store(e) => e,
        }
    }
}

/// The store's error for one of the database's.
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::UNIQUE_VIOLATION =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::unavailable(e),
    }
}

/// Whether running the transaction again may succeed.
pub(crate) fn retryable(fail: &Fail) -> bool {
    matches!(fail, Fail::Db(e) if e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    }))
}

/// The constraint a unique violation broke, if that is what `fail` is.
pub(crate) fn violated(fail: &Fail) -> Option<&str> {
    match fail {
        Fail::Db(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            e.as_db_error().and_then(|d| d.constraint())
        }
        _ => None,
    }
}

/// Runs `$body` in a transaction on a pooled connection as `$tx`, and commits when it falls
/// through; a `return` from the body rolls back instead. A serialization failure or a
/// deadlock runs it again, up to [`MAX_TRIES`] times.
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut client = $store.client().await?;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let outcome: Result<_, $crate::store::postgres::Fail> = async {
                let $tx = client.transaction().await?;
                let value = $body;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Ok(value) => break Ok(value),
                Err(fail)
                    if tries < $crate::store::postgres::MAX_TRIES
                        && $crate::store::postgres::retryable(&fail) => {}
                Err(fail) => break Err($crate::store::StoreError::from(fail)),
            }
        }
    }};
}
pub(crate) use transaction;

/// The JSON record in column `idx` of `row`.
pub(crate) fn record<T: DeserializeOwned>(
    row: &Row,
    idx: usize,
    table: &str,
) -> Result<T, StoreError> {
    row.try_get::<_, Json<T>>(idx)
        .map(|json| json.0)
        .map_err(|e| StoreError::Corrupt {
            what: format!("a record in table {table}: {e}"),
        })
}

/// A record as its JSON column takes it.
pub(crate) fn json<T: Serialize + std::fmt::Debug>(value: &T) -> Json<&T> {
    Json(value)
}

/// A count or limit as PostgreSQL's `bigint`.
pub(crate) fn big(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Connections that single-statement reads share. tokio-postgres pipelines the queries of
/// concurrent requests on one connection, so that PostgreSQL answers many of them each time
/// it wakes, instead of a process of its own waking for each one. A plain read never waits
/// for a row lock, so no read holds up the others behind it; writes and transactions take a
/// connection of their own from the pool.
pub(crate) struct Readers {
    slots: Box<[parking_lot::Mutex<Option<Arc<deadpool_postgres::Object>>>]>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    /// Shared connections for a pool of `pool_size`: one for every sixteen, at least one and
    /// at most four, and none for a pool too small to give them up. Fewer is better while one
    /// keeps up: the more requests share a connection, the more of them PostgreSQL answers
    /// each time it wakes (BENCHMARKS.md, "On PostgreSQL": one shared connection served
    /// `userProfile` at about 85 µs of CPU a request where two took about 110).
    pub(crate) fn for_pool(pool_size: usize) -> Readers {
        let shared = if pool_size < 4 {
            0
        } else {
            (pool_size / 16).clamp(1, 4)
        };
        Readers {
            slots: (0..shared).map(|_| parking_lot::Mutex::new(None)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Store {
    /// A connection from the pool: `Unavailable` when none comes within the connect timeout.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::unavailable)
    }

    /// A connection for one statement that only reads: a shared one, in turn, replaced from
    /// the pool once it has closed (the database restarted or went away).
    pub(crate) async fn reader(&self) -> Result<Arc<deadpool_postgres::Object>, StoreError> {
        let slots = &self.readers.slots;
        if slots.is_empty() {
            return Ok(Arc::new(self.client().await?));
        }
        let turn = self
            .readers
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = &slots[turn % slots.len()];
        let open = |held: &Option<Arc<deadpool_postgres::Object>>| {
            held.as_ref().filter(|c| !c.is_closed()).cloned()
        };
        if let Some(shared) = open(&slot.lock()) {
            return Ok(shared);
        }
        let fresh = Arc::new(self.client().await?);
        let mut held = slot.lock();
        // Another request may have filled the slot meanwhile: ours goes back to the pool.
        Ok(open(&held).unwrap_or_else(|| {
            *held = Some(fresh.clone());
            fresh
        }))
    }

    /// Whether this store's connections are encrypted: for tests of `sslmode`.
    #[doc(hidden)]
    pub async fn uses_tls(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(row.get(0))
    }

    /// Queues `mail` inside a running transaction.
    pub(crate) async fn queue_in(
        tx: &deadpool_postgres::Transaction<'_>,
        mail: &[crate::domain::records::MailQueueRecord],
    ) -> Result<(), Fail> {
        if mail.is_empty() {
            return Ok(());
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO mail_queue (attempts, next_attempt_at, created_at, sealed)
                 VALUES ($1, $2, $3, $4)",
            )
            .await?;
        for m in mail {
            tx.execute(
                &insert,
                &[
                    &i64::from(m.attempts),
                    &m.next_attempt_at,
                    &m.created_at,
                    &m.sealed,
                ],
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::store::AuditStore for Store {
    async fn append_audit(&self, record: &crate::store::AuditRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let insert = client
            .prepare_cached("INSERT INTO audit (at, email, user_id, data) VALUES ($1, $2, $3, $4)")
            .await
            .map_err(db_error)?;
        client
            .execute(
                &insert,
                &[&record.at, &record.email, &record.user_id, &json(record)],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn audit_since(
        &self,
        since: i64,
        email: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::AuditRecord>, StoreError> {
        let user_id = match email {
            Some(e) => self.user_by_email(e).await?.map(|u| u.id),
            None => None,
        };
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT data FROM audit
                 WHERE at >= $1 AND ($2::text IS NULL OR email = $2 OR user_id = $3)
                 ORDER BY at, id LIMIT $4",
                &[&since, &email, &user_id, &big(limit)],
            )
            .await
            .map_err(db_error)?;
        rows.iter().map(|row| record(row, 0, "audit")).collect()
    }

    async fn prune_audit(&self, before: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM audit WHERE at < $1", &[&before])
            .await
            .map_err(db_error)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[async_trait::async_trait]
impl crate::store::PasswordStore for Store {
    async fn put_reset_code(
        &self,
        hash: &[u8; 32],
        code: &crate::domain::records::ResetCodeRecord,
        mail: &[crate::domain::records::MailQueueRecord],
    ) -> Result<(), StoreError> {
        transaction!(self, |tx| {
            // The user's one code: a new one takes the place of the old.
            let put = tx
                .prepare_cached(
                    "INSERT INTO reset_codes (hash, user_id, expires_at, data)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id) DO UPDATE
                     SET hash = EXCLUDED.hash, expires_at = EXCLUDED.expires_at,
                         data = EXCLUDED.data",
                )
                .await?;
            tx.execute(
                &put,
                &[
                    &hash.as_slice(),
                    &code.user_id,
                    &code.expires_at,
                    &json(code),
                ],
            )
            .await?;
            Store::queue_in(&tx, mail).await?;
        })
    }

    async fn reset_code(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<crate::domain::records::ResetCodeRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT data FROM reset_codes WHERE hash = $1",
                &[&hash.as_slice()],
            )
            .await
            .map_err(db_error)?;
        row.map(|row| record(&row, 0, "reset_codes")).transpose()
    }
}

#[async_trait::async_trait]
impl ExpiryStore for Store {
    async fn sweep_expired(&self, now: i64, limit: usize) -> Result<SweepReport, StoreError> {
        let client = self.client().await?;
        let mut report = SweepReport::default();
        let mut left = big(limit);
        // One statement per kind, each removing at most what is left of the batch.
        for (table, key, expiry) in [
            ("email_codes", "hash", "expires_at"),
            ("reset_codes", "hash", "expires_at"),
            ("sessions", "id", "refresh_expires_at"),
            ("challenges", "id", "expires_at"),
            ("ceremonies", "id", "expires_at"),
        ] {
            if left == 0 {
                break;
            }
            let removed = client
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE {key} IN
                         (SELECT {key} FROM {table} WHERE {expiry} <= $1 ORDER BY {expiry} LIMIT $2)"
                    ),
                    &[&now, &left],
                )
                .await
                .map_err(db_error)?;
            left -= i64::try_from(removed).unwrap_or(left);
            match table {
                "email_codes" => report.email_codes += removed,
                "reset_codes" => report.reset_codes += removed,
                "sessions" => report.sessions += removed,
                "challenges" => report.challenges += removed,
                _ => report.ceremonies += removed,
            }
            report.entries += removed;
        }
        Ok(report)
    }
}

#[async_trait::async_trait]
impl Health for Store {
    async fn check_writable(&self, now_unix_nanos: i128) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('probe', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&now_unix_nanos.to_string()],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn stats(&self) -> Result<StorageStats, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM mail_queue)",
                &[],
            )
            .await
            .map_err(db_error)?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        let status = self.pool.status();
        Ok(StorageStats {
            device_sessions: count(0),
            queued_mail: count(1),
            counters: vec![
                (
                    "keyhold_postgres_connections",
                    u64::try_from(status.size).unwrap_or(u64::MAX),
                ),
                (
                    "keyhold_postgres_connections_idle",
                    u64::try_from(status.available).unwrap_or(u64::MAX),
                ),
            ],
        })
    }
}

impl crate::store::Storage for Store {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn backup_to(
        &self,
        _out: &mut dyn std::io::Write,
        _file: &std::path::Path,
        _attachments: &[(&str, Vec<u8>)],
        _now: i64,
    ) -> Result<BackupSummary, StoreError> {
        Err(StoreError::unavailable(std::io::Error::other(
            "a PostgreSQL store is backed up with pg_dump, not keyhold backup",
        )))
    }

    fn close(self: Arc<Self>) -> Result<bool, StoreError> {
        // Nothing to checkpoint: every write was committed when it returned.
        self.pool.close();
        Ok(true)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The storage contract, on a database of its own in the tests' PostgreSQL.
#[cfg(test)]
mod conformance {
    crate::storage_conformance_tests!(optional: async {
        let url = super::test_cluster::fresh_database().await?;
        let config = super::test_cluster::config_for(&url);
        let store = super::open(&config, &crate::config::LimitsConfig::default())
            .await
            .unwrap();
        Some((
            std::sync::Arc::new(store) as std::sync::Arc<dyn crate::store::Storage>,
            (),
        ))
    });
}
