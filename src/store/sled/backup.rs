//! Backups: a consistent copy of every tree (writers are held off while it is taken) as a
//! stream of lines, and restoring one into a stopped server's storage. The file around the
//! stream (its encryption) is `crate::backup`'s.

use crate::store::BackupSummary;

use std::future::Future;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::keys::FORMAT_VERSION;
use super::{OpenError, Store, StoreError};

/// The backup file's own format: 3 added the writes made while the backup was taken
/// (`Removed` lines among them); 2 is read too.
const BACKUP_VERSION: u32 = 3;
const READABLE_VERSIONS: [u32; 2] = [2, 3];

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", untagged)]
enum Line {
    Header {
        keyhold_backup: u32,
        storage_format: u32,
        created_at: i64,
    },
    Attachment {
        attachment: String,
        data: String,
    },
    Entry {
        tree: String,
        key: String,
        value: String,
    },
    /// A key removed while the backup was taken (version 3).
    Removed {
        tree: String,
        removed: String,
    },
    End {
        end: bool,
        entries: u64,
    },
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::unavailable(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

fn bad(path: &Path, what: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("{}: {what}", path.display()),
    }
}

impl Store {
    /// Writes every tree, and `attachments` (files kept beside the database), to `out`, as
    /// one consistent state of the database: the one at the moment the copy ends. `file`
    /// names the destination in errors.
    ///
    /// Writes go on while the trees are read. Each tree's writes are watched from the start
    /// (sled's subscribers see every write of a key in the order they apply), and the copy
    /// ends with them: a restore that applies them over the entries brings every key to its
    /// value at the end. Writers wait only twice, while the watch starts and ends, for the
    /// writes already under way.
    pub fn backup_to(
        &self,
        out: &mut dyn Write,
        file: &Path,
        attachments: &[(&str, Vec<u8>)],
        created_at: i64,
    ) -> Result<BackupSummary, StoreError> {
        let mut write = |line: &Line| -> Result<(), StoreError> {
            let mut bytes = serde_json::to_vec(line).unwrap_or_default();
            bytes.push(b'\n');
            out.write_all(&bytes).map_err(|e| io(file, e))
        };
        write(&Line::Header {
            keyhold_backup: BACKUP_VERSION,
            storage_format: FORMAT_VERSION,
            created_at,
        })?;
        for (name, data) in attachments {
            write(&Line::Attachment {
                attachment: (*name).to_string(),
                data: STANDARD.encode(data),
            })?;
        }
        let (trees, watch) = {
            let _quiet = self.quiesced();
            let mut trees = Vec::new();
            let mut subscribers = Vec::new();
            for name in self.db.tree_names() {
                let tree = self.db.open_tree(&name)?;
                subscribers.push(tree.watch_prefix(Vec::new()));
                trees.push((STANDARD.encode(&name), tree));
            }
            (trees, Watch::start(subscribers)?)
        };
        let mut entries = 0u64;
        let copied = trees.iter().try_for_each(|(name, tree)| {
            tree.iter().try_for_each(|entry| {
                let (key, value) = entry?;
                entries += 1;
                write(&Line::Entry {
                    tree: name.clone(),
                    key: STANDARD.encode(&key),
                    value: STANDARD.encode(&value),
                })
            })
        });
        let changes = {
            let _quiet = self.quiesced();
            watch.finish()
        };
        copied?;
        // Without every write made meanwhile, the copy is not one state: no backup.
        let changes = changes.ok_or_else(|| {
            StoreError::unavailable(std::io::Error::other(
                "the backup's watch of the writes made during it stopped",
            ))
        })?;
        for (tree, event) in changes {
            let tree = trees[tree].0.clone();
            entries += 1;
            write(&match event {
                sled::Event::Insert { key, value } => Line::Entry {
                    tree,
                    key: STANDARD.encode(&key),
                    value: STANDARD.encode(&value),
                },
                sled::Event::Remove { key } => Line::Removed {
                    tree,
                    removed: STANDARD.encode(&key),
                },
            })?;
        }
        write(&Line::End { end: true, entries })?;
        Ok(BackupSummary {
            trees: trees.len(),
            entries,
        })
    }
}

/// Every write to the watched trees, collected on a thread of its own so that writers never
/// wait for room in a subscriber's buffer.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(usize, sled::Event)>>,
}

impl Watch {
    fn start(subscribers: Vec<sled::Subscriber>) -> Result<Watch, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keyhold-backup-watch".into())
            .spawn(move || watch(subscribers, &stopped))
            .map_err(sled::Error::Io)?;
        Ok(Watch { stop, thread })
    }

    /// The writes seen, in order for each key; `None` if the watching thread failed. Call
    /// it while no write is under way: every write finished by then is among them.
    fn finish(self) -> Option<Vec<(usize, sled::Event)>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().ok()
    }
}

fn watch(mut subscribers: Vec<sled::Subscriber>, stop: &AtomicBool) -> Vec<(usize, sled::Event)> {
    // Polled as futures: the blocking `next_timeout` never gets past a write that was
    // retried (its dropped reservation reads as a timeout, again and again).
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let mut seen = Vec::new();
    loop {
        // After the stop, one more pass takes what the last writes left.
        let last = stop.load(Ordering::SeqCst);
        let before = seen.len();
        for (tree, subscriber) in subscribers.iter_mut().enumerate() {
            while let Poll::Ready(Some(event)) = Pin::new(&mut *subscriber).poll(&mut context) {
                seen.push((tree, event));
            }
        }
        if last {
            return seen;
        }
        if seen.len() == before {
            #[expect(
                clippy::disallowed_methods,
                reason = "a thread of its own polling sled's subscribers, off the runtime"
            )]
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A backup read whole into a new database beside the live one, which is not touched yet.
#[derive(Debug)]
pub struct Staged {
    pub summary: BackupSummary,
    pub attachments: Vec<(String, Vec<u8>)>,
    /// The new database.
    pub path: PathBuf,
}

impl Staged {
    /// Puts the staged database in the place of the one at `db_path`, which is kept beside
    /// it as `db.replaced-<now>`.
    pub fn install(self, db_path: &Path, now: i64) -> Result<BackupSummary, OpenError> {
        if db_path.exists() {
            let aside = db_path.with_extension(format!("replaced-{now}"));
            std::fs::rename(db_path, &aside).map_err(|e| io(db_path, e))?;
        }
        std::fs::rename(&self.path, db_path).map_err(|e| io(db_path, e))?;
        Ok(self.summary)
    }

    /// Removes the staged database: the backup is not restored.
    pub fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Reads the backup stream `input` (from `file`) whole into a new database beside the one at
/// `db_path`, which no process may have open, and which is left as it is. Every line is
/// checked: its frame, its version, the attachment names (`allowed`), and the count at its
/// end. Anything wrong leaves nothing behind.
pub fn stage_restore(
    db_path: &Path,
    file: &Path,
    input: impl BufRead,
    allowed: &[&str],
) -> Result<Staged, OpenError> {
    // Refuses while a server holds the database.
    drop(Store::open(db_path)?);
    let staging = db_path.with_extension("restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io(&staging, e))?;
    }
    let staged = read_into(&staging, file, input, allowed);
    if staged.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    staged
}

fn read_into(
    staging: &Path,
    file: &Path,
    input: impl BufRead,
    allowed: &[&str],
) -> Result<Staged, OpenError> {
    let db = sled::Config::new().path(staging).open()?;
    let mut attachments = Vec::new();
    let mut trees = std::collections::BTreeSet::new();
    let mut entries = 0u64;
    let mut header = false;
    let mut ended = None;
    for line in input.lines() {
        let line = line.map_err(|e| io(file, e))?;
        let decode = |s: &str| STANDARD.decode(s).map_err(|_| bad(file, "bad base64"));
        match serde_json::from_str::<Line>(&line).map_err(|_| bad(file, "not a Keyhold backup"))? {
            Line::Header {
                keyhold_backup,
                storage_format,
                ..
            } => {
                if !READABLE_VERSIONS.contains(&keyhold_backup) || storage_format > FORMAT_VERSION {
                    return Err(bad(file, "made by another version of Keyhold").into());
                }
                header = true;
            }
            Line::Attachment { attachment, data } => {
                if !allowed.contains(&attachment.as_str()) {
                    return Err(bad(file, "it carries an unexpected file").into());
                }
                attachments.push((attachment, decode(&data)?));
            }
            Line::Entry { tree, key, value } => {
                if !header || ended.is_some() {
                    return Err(bad(file, "entries outside the backup's frame").into());
                }
                let name = decode(&tree)?;
                db.open_tree(&name)?
                    .insert(decode(&key)?, decode(&value)?)?;
                trees.insert(name);
                entries += 1;
            }
            Line::Removed { tree, removed } => {
                if !header || ended.is_some() {
                    return Err(bad(file, "entries outside the backup's frame").into());
                }
                db.open_tree(decode(&tree)?)?.remove(decode(&removed)?)?;
                entries += 1;
            }
            Line::End { entries: count, .. } => ended = Some(count),
        }
    }
    if !header || ended != Some(entries) {
        return Err(bad(file, "incomplete: the backup was cut short").into());
    }
    db.flush()?;
    drop(db);
    Ok(Staged {
        summary: BackupSummary {
            trees: trees.len(),
            entries,
        },
        attachments,
        path: staging.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sled::Transactional;
    use sled::transaction::ConflictableTransactionError;
    use std::sync::mpsc;

    fn number(bytes: Option<sled::IVec>) -> u64 {
        bytes.map_or(0, |b| u64::from_be_bytes(b.as_ref().try_into().unwrap()))
    }

    /// Moves `amount` from `a`'s counter to `b`'s and the one marker key one step on, in one
    /// transaction over both trees: the counters always sum to 1,000 and there is always
    /// exactly one marker.
    fn move_along(store: &Store, a: &sled::Tree, b: &sled::Tree, step: u64) {
        let _writing = store.writing();
        (a, b)
            .transaction(|(a, b)| {
                let (x, y) = (number(a.get("n")?), number(b.get("n")?));
                let amount = step % 7;
                let (x, y) = if x >= amount {
                    (x - amount, y + amount)
                } else {
                    (x + y / 2, y - y / 2)
                };
                a.insert("n", &x.to_be_bytes())?;
                b.insert("n", &y.to_be_bytes())?;
                b.remove(format!("marker{}", step).as_bytes())?;
                b.insert(format!("marker{}", step + 1).as_bytes(), b"")?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .unwrap();
    }

    /// Restores `backup` beside `dir` and checks the invariants of [`move_along`].
    fn check_restored(dir: &Path, n: usize, backup: &[u8]) {
        let db_path = dir.join(format!("restored-{n}"));
        let staged = stage_restore(&db_path, Path::new("backup"), backup, &[]).unwrap();
        let db = crate::store::sled::store::open_sled(&staged.path).unwrap();
        let (a, b) = (db.open_tree("a").unwrap(), db.open_tree("b").unwrap());
        let sum = number(a.get("n").unwrap()) + number(b.get("n").unwrap());
        assert_eq!(sum, 1000, "backup {n} is not one state");
        let markers = b.scan_prefix("marker").count();
        assert_eq!(markers, 1, "backup {n} is not one state");
    }

    #[test]
    fn a_backup_taken_while_transactions_run_restores_one_state_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let a = store.db.open_tree("a").unwrap();
        let b = store.db.open_tree("b").unwrap();
        a.insert("n", &500u64.to_be_bytes()).unwrap();
        b.insert("n", &500u64.to_be_bytes()).unwrap();
        b.insert("marker0", b"").unwrap();
        // Bulk, so that each copy takes a while.
        for i in 0..2_000u32 {
            store
                .users
                .insert(i.to_be_bytes(), [7u8; 64].as_slice())
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let step = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (store, a, b, stop, step) = (
                    store.clone(),
                    a.clone(),
                    b.clone(),
                    stop.clone(),
                    step.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // One step at a time: the marker moves from `step` to `step + 1`.
                        let _account = store.account(&uuid::Uuid::nil());
                        let now = step.fetch_add(1, Ordering::SeqCst);
                        move_along(&store, &a, &b, now);
                    }
                })
            })
            .collect();
        for n in 0..5 {
            let mut backup = Vec::new();
            store
                .backup_to(&mut backup, Path::new("backup"), &[], 0)
                .unwrap();
            check_restored(dir.path(), n, &backup);
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
        assert!(step.load(Ordering::SeqCst) > 0, "the writers ran");
    }

    /// A sink that, at the first entry, waits until a write to the store has finished.
    struct WaitsForAWrite {
        started: mpsc::Sender<()>,
        written: mpsc::Receiver<()>,
        waited: Option<bool>,
    }

    impl Write for WaitsForAWrite {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.waited.is_none() && buf.starts_with(b"{\"tree\"") {
                let _ = self.started.send(());
                let finished = self.written.recv_timeout(Duration::from_secs(30));
                self.waited = Some(finished.is_ok());
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_finish_while_a_backup_is_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        store.users.insert("someone", b"before".as_slice()).unwrap();
        let (started, copy_started) = mpsc::channel();
        let (wrote, written) = mpsc::channel();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                copy_started.recv().unwrap();
                let _writing = store.writing();
                store.users.insert("someone", b"during".as_slice()).unwrap();
                store.users.remove("nobody").unwrap();
                wrote.send(()).unwrap();
            })
        };
        let mut sink = WaitsForAWrite {
            started,
            written,
            waited: None,
        };
        store
            .backup_to(&mut sink, Path::new("backup"), &[], 0)
            .unwrap();
        writer.join().unwrap();
        assert_eq!(sink.waited, Some(true), "the write waited for the backup");
    }
}
