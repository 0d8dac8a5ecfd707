use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::keys::{
    self, FORMAT_VERSION, META, META_FORMAT_VERSION, META_READY_PROBE, META_SESSION_COUNT,
};
use super::{OpenError, StoreError};
use crate::files::create_private_dir;
use crate::store::Health;

/// The sled database with Keyhold's trees. Cheap to clone: clones share one database.
#[derive(Clone)]
pub struct Store {
    pub(super) db: sled::Db,
    pub(super) meta: sled::Tree,
    pub(super) users: sled::Tree,
    pub(super) users_by_email: sled::Tree,
    pub(super) users_by_username: sled::Tree,
    pub(super) sessions: sled::Tree,
    pub(super) sessions_by_user: sled::Tree,
    pub(super) refresh_tokens: sled::Tree,
    pub(super) email_codes: sled::Tree,
    pub(super) signing_keys: sled::Tree,
    pub(super) challenges: sled::Tree,
    pub(super) factor_failures: sled::Tree,
    pub(super) step_ups_by_user: sled::Tree,
    pub(super) challenges_by_user: sled::Tree,
    pub(super) reset_codes: sled::Tree,
    pub(super) reset_by_user: sled::Tree,
    pub(super) ceremonies: sled::Tree,
    pub(super) expiry: sled::Tree,
    pub(super) mail_queue: sled::Tree,
    pub(super) audit: sled::Tree,
    /// Writers hold it shared; a backup holds it alone, so that it copies one consistent
    /// state of every tree.
    gate: Arc<RwLock<()>>,
    /// One of these is held by every change to an account or to the set of its sessions,
    /// challenges and codes, from the scan of what it ends to its transaction: sled cannot
    /// scan inside a transaction, so this is what keeps a session started meanwhile from
    /// surviving a password change or a disable.
    accounts: Arc<[Mutex<()>; ACCOUNT_LOCKS]>,
    flusher: Arc<Flusher>,
    /// The abuse limits: this process's alone, as the store is (one process opens it).
    pub(super) limits: Arc<crate::limits::Limits>,
    path: PathBuf,
}

/// Stripes of the per-account lock: accounts whose ids share a stripe wait for each other.
const ACCOUNT_LOCKS: usize = 64;

/// How long opening waits for a lock that a handle closed just before still holds.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Group commit: one fsync covers every write made before it started, so callers that
/// arrive while a flush runs share the next one instead of each paying for their own.
#[derive(Default)]
struct Flusher {
    /// Flush requests so far; each caller takes the next number after its writes.
    requested: AtomicU64,
    /// The highest request number a finished flush has covered.
    covered: AtomicU64,
    /// Flushes of the log that ran (each one write and fsync, however many callers it covered).
    flushes: AtomicU64,
    /// Held while a flush runs.
    running: tokio::sync::Mutex<()>,
}

/// Whether the flush leader may wait for the log write on its own thread: only on a runtime
/// with other workers to serve meanwhile. A single-threaded runtime (an embedding test's
/// `#[tokio::test]`) hands the wait to a blocking thread instead.
fn leader_may_block() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && runtime.metrics().num_workers() > 1
    })
}

/// How well group commit is doing: durable writes waited for, and the flushes that covered
/// them. Counted since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Calls of [`Store::flush`]: writes that waited until they were on disk.
    pub requests: u64,
    /// Flushes of the log that ran for them.
    pub flushes: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the database at `path`, checking its storage format, with the
    /// default abuse limits.
    pub fn open(path: &Path) -> Result<Store, OpenError> {
        Store::open_with_limits(path, &crate::config::LimitsConfig::default())
    }

    /// Opens (or creates) the database at `path`, checking its storage format.
    pub fn open_with_limits(
        path: &Path,
        limits: &crate::config::LimitsConfig,
    ) -> Result<Store, OpenError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent).map_err(|e| OpenError::CreateDir {
                path: e.path,
                source: e.source,
            })?;
        }
        let db = open_sled(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| OpenError::CreateDir {
                path: path.to_path_buf(),
                source,
            },
        )?;
        let store = Store {
            meta: db.open_tree(META)?,
            users: db.open_tree(keys::USERS)?,
            users_by_email: db.open_tree(keys::USERS_BY_EMAIL)?,
            users_by_username: db.open_tree(keys::USERS_BY_USERNAME)?,
            sessions: db.open_tree(keys::SESSIONS)?,
            sessions_by_user: db.open_tree(keys::SESSIONS_BY_USER)?,
            refresh_tokens: db.open_tree(keys::REFRESH_TOKENS)?,
            email_codes: db.open_tree(keys::EMAIL_CODES)?,
            signing_keys: db.open_tree(keys::SIGNING_KEYS)?,
            challenges: db.open_tree(keys::CHALLENGES)?,
            factor_failures: db.open_tree(keys::FACTOR_FAILURES)?,
            step_ups_by_user: db.open_tree(keys::STEP_UPS_BY_USER)?,
            challenges_by_user: db.open_tree(keys::CHALLENGES_BY_USER)?,
            reset_codes: db.open_tree(keys::RESET_CODES)?,
            reset_by_user: db.open_tree(keys::RESET_BY_USER)?,
            ceremonies: db.open_tree(keys::CEREMONIES)?,
            expiry: db.open_tree(keys::EXPIRY)?,
            mail_queue: db.open_tree(keys::MAIL_QUEUE)?,
            audit: db.open_tree(keys::AUDIT)?,
            gate: Arc::new(RwLock::new(())),
            accounts: Arc::new(std::array::from_fn(|_| Mutex::new(()))),
            flusher: Arc::new(Flusher::default()),
            limits: Arc::new(crate::limits::Limits::new(limits)),
            db,
            path: path.to_path_buf(),
        };
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> Result<(), OpenError> {
        match self.meta.get(META_FORMAT_VERSION)? {
            None => Ok(self.write_current_format()?),
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| OpenError::Corrupt {
                        path: self.path.clone(),
                        what: "the format version record is not 4 bytes".into(),
                    })?;
                if found > FORMAT_VERSION {
                    return Err(OpenError::FormatTooNew {
                        path: self.path.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                if found < FORMAT_VERSION {
                    // 1 → 2: refresh tokens name their session and generation, and new ones
                    // are no longer written to `refresh_tokens`. Format 1 records read as they
                    // are (generation 0) and format 1 tokens rotate through that tree, so
                    // nothing is rewritten; the new version keeps an older Keyhold, which
                    // cannot read the new tokens, from opening the database.
                    // 2 → 3: the sessions are counted once, here; the new version keeps an
                    // older Keyhold, which would not keep the count, from opening the database.
                    self.write_current_format()?;
                    tracing::info!(from = found, to = FORMAT_VERSION, "storage format migrated");
                }
                Ok(())
            }
        }
    }

    /// Makes a new or older store one of the current format, durably: its sessions counted
    /// by walking their tree (the one walk), then the version. The count goes first, so a
    /// crash between the two leaves the old version, and the next open counts again.
    fn write_current_format(&self) -> Result<(), StoreError> {
        let sessions = u64::try_from(self.sessions.len()).unwrap_or(u64::MAX);
        self.meta
            .insert(META_SESSION_COUNT, &sessions.to_be_bytes())?;
        self.meta
            .insert(META_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The storage format recorded in the database.
    pub fn format_version(&self) -> Result<u32, StoreError> {
        let bytes = self
            .meta
            .get(META_FORMAT_VERSION)?
            .ok_or_else(|| super::corrupt(keys::META, "no format version record"))?;
        <[u8; 4]>::try_from(bytes.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| super::corrupt(keys::META, "the format version record is not 4 bytes"))
    }

    /// Held while writing. Recursive, so a write inside another never waits on a backup
    /// that is itself waiting for the outer one.
    pub(super) fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read_recursive()
    }

    /// Held across every change to the account `id`, its sessions, challenges and codes.
    /// Take it before [`Store::writing`], and never two at once.
    pub(super) fn account(&self, id: &uuid::Uuid) -> MutexGuard<'_, ()> {
        // Ids are random (v4), so their last byte spreads them evenly.
        self.accounts[usize::from(id.as_bytes()[15]) % ACCOUNT_LOCKS].lock()
    }

    /// Held while copying everything: no write happens meanwhile.
    pub(super) fn quiesced(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write()
    }

    /// Writes everything written so far to disk, durably, before it returns.
    ///
    /// sled's own `flush_async` can hang forever when several callers await it at once
    /// (spacejam/sled#1308, open in 0.34.7), so sled's blocking `flush` runs one at a time,
    /// and callers that queued meanwhile share the next one.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let flusher = &self.flusher;
        let ticket = flusher.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = flusher.running.lock().await;
        if flusher.covered.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every request numbered up to here was made after its writes.
        let covers = flusher.requested.load(Ordering::SeqCst);
        if leader_may_block() {
            // One worker writes the log and waits for the disk while the others serve
            // (sled's flush writes on its caller's thread: vendor/sled/PATCHES.md), then
            // wakes the queued callers on the runtime. A blocking thread in between would
            // add two hand-offs to every flush (docs/benchmarks-history.md, "The group
            // flush on the worker").
            self.db.flush()?;
        } else {
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(|e| thread_failed("flush", &e))??;
        }
        flusher.covered.fetch_max(covers, Ordering::SeqCst);
        flusher.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Makes every write so far durable, blocking: for tools that write without the
    /// traits (seeding a benchmark's store).
    #[doc(hidden)]
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Runs `write` (this store's writes, made on the calling thread) and returns once they
    /// are durable: every write method of the store traits is one of these.
    pub(super) async fn durably<T>(
        &self,
        write: impl FnOnce() -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.durably_if(write, |_| true).await
    }

    /// As [`Store::durably`], for an operation that may find nothing to write (a claim of
    /// mail when none is due, a prune with nothing old): it waits for the disk only when
    /// `wrote` says, from what it returned, that it wrote.
    pub(super) async fn durably_if<T>(
        &self,
        write: impl FnOnce() -> Result<T, StoreError> + Send,
        wrote: impl FnOnce(&T) -> bool + Send,
    ) -> Result<T, StoreError> {
        let value = write()?;
        if wrote(&value) {
            self.flush().await?;
        }
        Ok(value)
    }

    /// Durable writes and the flushes that covered them, since this store was opened.
    pub fn flush_stats(&self) -> FlushStats {
        // Flushes first: each one counted was asked for before it ran, so the two read in
        // this order never show more flushes than requests.
        let flushes = self.flusher.flushes.load(Ordering::SeqCst);
        FlushStats {
            requests: self.flusher.requested.load(Ordering::SeqCst),
            flushes,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the store after a clean stop: flushes it and, when this is the last handle,
    /// leaves sled a fresh recovery snapshot, so that the next open reads none of the log
    /// written so far. Returns whether it did (it does not while other handles are open).
    ///
    /// sled 0.34 writes that snapshot only while it opens: it reads the log written since
    /// the last snapshot, then records how far it got. Without one, the next start reads
    /// everything this process wrote, which with many accounts is most of start-up (a
    /// store that took 100,000 sign-ups in one run: over half a second). So a clean stop
    /// opens the database once more and pays that read itself, as a database checkpoints
    /// at shutdown. A crash skips this, and the next start reads the log as before.
    ///
    /// Blocking: it reads the log. Call it off the async runtime.
    pub fn close(self) -> Result<bool, StoreError> {
        self.db.flush()?;
        if Arc::strong_count(&self.gate) > 1 {
            return Ok(false);
        }
        let path = self.path.clone();
        // The last handle: every tree and the database go with it.
        drop(self);
        drop(open_sled(&path).map_err(StoreError::unavailable)?);
        Ok(true)
    }

    /// How far into the log the newest recovery snapshot of the database at `path` reaches:
    /// where the next open starts to read (sled names each snapshot file for that log
    /// sequence number). For tests of the checkpoint.
    #[doc(hidden)]
    pub fn checkpointed_lsn(path: &Path) -> u64 {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Sets the recorded format version; only tests of the version check use it.
    #[doc(hidden)]
    pub fn force_format_version(&self, version: u32) -> Result<(), StoreError> {
        self.meta
            .insert(META_FORMAT_VERSION, &version.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}

/// A blocking thread that did store work and panicked, as an I/O error of the store.
pub(super) fn thread_failed(what: &str, e: &tokio::task::JoinError) -> StoreError {
    StoreError::unavailable(std::io::Error::other(format!(
        "the {what} thread failed: {e}"
    )))
}

/// Opens sled's database at `path`; a lock still held by a handle that this process closed
/// a moment ago is waited for, briefly.
#[expect(
    clippy::disallowed_methods,
    reason = "waits, briefly and in real time, for a lock this process let go of"
)]
pub(super) fn open_sled(path: &Path) -> Result<sled::Db, OpenError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new().path(path).open().map_err(|e| match e {
            sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                OpenError::Locked {
                    path: path.to_path_buf(),
                }
            }
            sled::Error::Io(ref io) if io.to_string().contains("lock") => OpenError::Locked {
                path: path.to_path_buf(),
            },
            other => other.into(),
        });
        match opened {
            // A handle closed in this process a moment ago can hold the lock briefly: sled's
            // last log write runs on its own thread and lets go of the file just after the
            // drop returns. Another process holding it is still an error.
            Err(OpenError::Locked { .. }) if started.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

impl crate::store::Storage for Store {
    fn backend(&self) -> &'static str {
        "sled"
    }

    fn backup_to(
        &self,
        out: &mut dyn std::io::Write,
        file: &Path,
        attachments: &[(&str, Vec<u8>)],
        now: i64,
    ) -> Result<crate::store::BackupSummary, StoreError> {
        Store::backup_to(self, out, file, attachments, now)
    }

    fn close(self: Arc<Self>) -> Result<bool, StoreError> {
        match Arc::try_unwrap(self) {
            Ok(store) => Store::close(store),
            Err(shared) => {
                shared.db.flush()?;
                Ok(false)
            }
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[async_trait::async_trait]
impl Health for Store {
    async fn stats(&self) -> Result<crate::store::StorageStats, StoreError> {
        // Counting the mail queue walks its tree: off the async threads.
        let store = self.clone();
        let (device_sessions, queued_mail) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.session_count()?, store.mail_queue.len() as u64))
        })
        .await
        .map_err(|e| thread_failed("statistics", &e))??;
        let flushed = self.flush_stats();
        Ok(crate::store::StorageStats {
            device_sessions,
            queued_mail,
            counters: vec![
                ("keyhold_store_flush_requests_total", flushed.requests),
                ("keyhold_store_flushes_total", flushed.flushes),
            ],
        })
    }

    async fn check_writable(&self, now_unix_nanos: i128) -> Result<(), StoreError> {
        let _writing = self.writing();
        let stamp = i64::try_from(now_unix_nanos).unwrap_or(i64::MAX);
        self.meta.insert(META_READY_PROBE, &stamp.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_records_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.format_version().unwrap(), FORMAT_VERSION);
        let mode = std::fs::metadata(dir.path().join("data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.format_version().unwrap(), FORMAT_VERSION);
    }

    /// `n` tasks that each write a key of `meta` and wait for it to be durable.
    fn spawn_writers(store: &Store, n: u32) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.meta.insert(i.to_be_bytes(), &[1]).unwrap();
                    store.flush().await.unwrap();
                })
            })
            .collect()
    }

    async fn all_finish(writers: Vec<tokio::task::JoinHandle<()>>) {
        let all = futures_util::future::join_all(writers);
        let done = tokio::time::timeout(std::time::Duration::from_secs(60), all).await;
        for writer in done.expect("no flush hangs") {
            writer.unwrap();
        }
    }

    /// 200 writers flush at once: every one finishes, and every write is there on reopening.
    async fn many_writers_flush_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let writers = spawn_writers(&store, 200);
        all_finish(writers).await;
        assert!(store.flusher.covered.load(Ordering::SeqCst) >= 1);
        drop(store);
        let again = Store::open(&path).unwrap();
        assert!((0..200u32).all(|i| again.meta.contains_key(i.to_be_bytes()).unwrap()));
    }

    /// The leader waits for the log write on its worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_writers_flushing_at_once_all_finish_and_their_writes_stay() {
        assert!(leader_may_block());
        many_writers_flush_at_once().await;
    }

    /// The leader hands the wait to a blocking thread: the runtime has no other worker.
    #[tokio::test]
    async fn on_a_single_threaded_runtime_many_writers_flushing_at_once_all_finish_too() {
        assert!(!leader_may_block());
        many_writers_flush_at_once().await;
    }

    /// Write system calls made by the calling thread so far (`/proc/thread-self/io`).
    fn writes_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|line| line.strip_prefix("syscw: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// vendor/sled/PATCHES.md, 3: the thread that flushes writes the log buffer itself, rather
    /// than waiting for one of sled's I/O threads to write it and wake it.
    #[test]
    fn a_flush_writes_the_log_on_the_flushing_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let mut written_here = 0;
        for round in 0..5u32 {
            store.meta.insert(round.to_be_bytes(), &[1]).unwrap();
            let before = writes_by_this_thread();
            store.db.flush().unwrap();
            if writes_by_this_thread() > before {
                written_here += 1;
            }
        }
        // sled's own flusher (every 500 ms) may write a round first, leaving this flush
        // nothing to do; unpatched, no round writes here at all.
        assert!(written_here >= 4, "{written_here} of 5 flushes wrote here");
        drop(store);
        let again = Store::open(&path).unwrap();
        assert!((0..5u32).all(|i| again.meta.contains_key(i.to_be_bytes()).unwrap()));
    }

    /// vendor/sled/PATCHES.md, 2: sled's I/O pool wakes one thread per job. Writers that fill
    /// log buffer after log buffer (each one a job for the pool) while others flush all
    /// finish, and every write is there on reopening.
    #[test]
    fn writers_filling_many_log_buffers_while_others_flush_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let value = vec![5u8; 64 * 1024];
        let (done, finished) = std::sync::mpsc::channel();
        for writer in 0..6u32 {
            let (store, value, done) = (store.clone(), value.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..64u32 {
                    let key = [writer.to_be_bytes(), i.to_be_bytes()].concat();
                    store.users.insert(key, value.as_slice()).unwrap();
                    if writer % 2 == 0 && i % 8 == 0 {
                        store.db.flush().unwrap();
                    }
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..6 {
            finished
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("no writer hangs");
        }
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.users.len(), 6 * 64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_queued_behind_a_flush_share_the_next_one_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.flush_stats(), FlushStats::default());
        // As if a flush were running: every writer below queues behind it.
        let running = store.flusher.running.lock().await;
        let writers = spawn_writers(&store, 50);
        let queued = async {
            while store.flush_stats().requests < 50 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), queued)
            .await
            .expect("every writer asks for a flush");
        drop(running);
        all_finish(writers).await;
        assert_eq!(
            store.flush_stats(),
            FlushStats {
                requests: 50,
                flushes: 1
            }
        );
        store.flush().await.unwrap();
        assert_eq!(
            store.flush_stats(),
            FlushStats {
                requests: 51,
                flushes: 2
            }
        );
    }

    #[test]
    fn a_clean_close_leaves_a_snapshot_past_every_write_and_loses_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let opened_at = Store::checkpointed_lsn(&path);
        let value = vec![7u8; 1024];
        for i in 0..500u32 {
            store
                .users
                .insert(i.to_be_bytes(), value.as_slice())
                .unwrap();
        }
        assert!(store.close().unwrap(), "the last handle checkpoints");
        // Half a megabyte went into the log after the snapshot of the first open; the next
        // open starts after all of it.
        assert!(Store::checkpointed_lsn(&path) >= opened_at + 500 * 1024);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.users.len(), 500);
        assert!((0..500u32).all(|i| again.users.get(i.to_be_bytes()).unwrap().unwrap() == value));
    }

    #[test]
    fn a_close_while_another_handle_is_open_only_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let other = store.clone();
        store.users.insert(b"k", b"v".as_slice()).unwrap();
        assert!(!store.close().unwrap());
        // The other handle goes on working, and nothing was lost.
        other.users.insert(b"k2", b"v2".as_slice()).unwrap();
        assert_eq!(other.users.get(b"k").unwrap().unwrap().as_ref(), b"v");
        assert!(other.close().unwrap());
        assert_eq!(Store::open(&path).unwrap().users.len(), 2);
    }

    #[test]
    fn a_format_1_store_is_migrated_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Store::open(&path).unwrap().force_format_version(1).unwrap();
        assert_eq!(
            Store::open(&path).unwrap().format_version().unwrap(),
            FORMAT_VERSION
        );
    }

    #[test]
    fn a_format_2_store_has_its_sessions_counted_once_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        // What format 2 left: sessions and no count.
        for i in 0..3u8 {
            store
                .sessions
                .insert([i; 16], b"a session".as_slice())
                .unwrap();
        }
        store.meta.remove(META_SESSION_COUNT).unwrap();
        store.force_format_version(2).unwrap();
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.format_version().unwrap(), FORMAT_VERSION);
        assert_eq!(again.session_count().unwrap(), 3);
        // Counted once: from now on the count is read, not the tree.
        again
            .sessions
            .insert([9; 16], b"a session".as_slice())
            .unwrap();
        drop(again);
        assert_eq!(Store::open(&path).unwrap().session_count().unwrap(), 3);
    }

    #[test]
    fn a_newer_format_stops_the_open_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Store::open(&path)
            .unwrap()
            .force_format_version(FORMAT_VERSION + 1)
            .unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, crate::store::sled::OpenError::FormatTooNew { found, .. } if found == FORMAT_VERSION + 1)
        );
        assert!(err.to_string().contains("newer Keyhold"), "{err}");
    }

    /// The background passes that find nothing to do (the mail worker's last claim of each
    /// pass, the sweeper's prune and sweep) wait for no flush; ones that write do.
    #[tokio::test]
    async fn a_claim_prune_or_sweep_that_writes_nothing_waits_for_no_flush() {
        use crate::domain::records::MailQueueRecord;
        use crate::store::{AuditStore, ExpiryStore, MailQueueStore};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert!(store.claim_mail(1_000, 60, 10).await.unwrap().is_empty());
        assert_eq!(store.prune_audit(1_000).await.unwrap(), 0);
        assert_eq!(store.sweep_expired(1_000, 10).await.unwrap().entries, 0);
        assert_eq!(store.flush_stats(), FlushStats::default());
        let mail = MailQueueRecord {
            attempts: 0,
            next_attempt_at: 1_000,
            created_at: 1_000,
            sealed: "sealed".into(),
        };
        store.enqueue(&[mail]).await.unwrap();
        assert_eq!(store.claim_mail(1_000, 60, 10).await.unwrap().len(), 1);
        assert_eq!(store.flush_stats().requests, 2, "the enqueue and the claim");
    }

    #[tokio::test]
    async fn the_health_probe_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.check_writable(42).await.unwrap();
        assert_eq!(
            store.meta.get(META_READY_PROBE).unwrap().unwrap().as_ref(),
            42i64.to_be_bytes()
        );
    }
}
