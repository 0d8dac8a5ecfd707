//! Backups: a consistent copy of every tree (writers are held off while it is taken) in a
//! line-oriented file, and restoring one into a stopped server's storage.

use std::io::{BufRead, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::keys::FORMAT_VERSION;
use super::{Store, StoreError};

/// The backup file's own format.
const BACKUP_VERSION: u32 = 1;

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
    End {
        end: bool,
        entries: u64,
    },
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    pub trees: usize,
    pub entries: u64,
}

/// What a restore found besides the trees: files kept outside the database.
#[derive(Debug)]
pub struct Restored {
    pub summary: BackupSummary,
    pub attachments: Vec<(String, Vec<u8>)>,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::CreateDir {
        path: path.to_path_buf(),
        source: e,
    }
}

fn bad(path: &Path, what: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

impl Store {
    /// Writes every tree, and `attachments` (files kept beside the database), to `file`
    /// (mode 0600, written under a temporary name and renamed when complete). No write
    /// happens while the trees are read, so the copy is one consistent state.
    pub fn backup_to(
        &self,
        file: &Path,
        attachments: &[(&str, Vec<u8>)],
        created_at: i64,
    ) -> Result<BackupSummary, StoreError> {
        let tmp = file.with_extension("partial");
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        let mut out = BufWriter::new(out);
        let mut write = |line: &Line| -> Result<(), StoreError> {
            let mut bytes = serde_json::to_vec(line).unwrap_or_default();
            bytes.push(b'\n');
            out.write_all(&bytes).map_err(|e| io(&tmp, e))
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
        let mut summary = BackupSummary {
            trees: 0,
            entries: 0,
        };
        {
            let _quiet = self.quiesced();
            for name in self.db.tree_names() {
                let tree = self.db.open_tree(&name)?;
                summary.trees += 1;
                for entry in tree.iter() {
                    let (key, value) = entry?;
                    write(&Line::Entry {
                        tree: STANDARD.encode(&name),
                        key: STANDARD.encode(&key),
                        value: STANDARD.encode(&value),
                    })?;
                    summary.entries += 1;
                }
            }
        }
        write(&Line::End {
            end: true,
            entries: summary.entries,
        })?;
        let out = out.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
        out.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, file).map_err(|e| io(file, e))?;
        Ok(summary)
    }
}

/// Restores `file` as the database at `db_path`, which no process may have open. The backup
/// is read into a new database first; only when that is complete does it take the place of
/// the old one, which is kept beside it as `db.replaced-<time>`.
pub fn restore_into(db_path: &Path, file: &Path, now: i64) -> Result<Restored, StoreError> {
    // Refuses while a server holds the database.
    drop(Store::open(db_path)?);
    let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(|e| io(file, e))?);
    let staging = db_path.with_extension("restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io(&staging, e))?;
    }
    let db = sled::Config::new().path(&staging).open()?;
    let mut attachments = Vec::new();
    let mut trees = std::collections::BTreeSet::new();
    let mut entries = 0u64;
    let mut header = false;
    let mut ended = None;
    for line in reader.lines() {
        let line = line.map_err(|e| io(file, e))?;
        let decode = |s: &str| STANDARD.decode(s).map_err(|_| bad(file, "bad base64"));
        match serde_json::from_str::<Line>(&line).map_err(|_| bad(file, "not a Keyhold backup"))? {
            Line::Header {
                keyhold_backup,
                storage_format,
                ..
            } => {
                if keyhold_backup != BACKUP_VERSION || storage_format > FORMAT_VERSION {
                    return Err(bad(file, "made by a newer Keyhold"));
                }
                header = true;
            }
            Line::Attachment { attachment, data } => attachments.push((attachment, decode(&data)?)),
            Line::Entry { tree, key, value } => {
                if !header || ended.is_some() {
                    return Err(bad(file, "entries outside the backup's frame"));
                }
                let name = decode(&tree)?;
                db.open_tree(&name)?
                    .insert(decode(&key)?, decode(&value)?)?;
                trees.insert(name);
                entries += 1;
            }
            Line::End { entries: count, .. } => ended = Some(count),
        }
    }
    if !header || ended != Some(entries) {
        return Err(bad(file, "incomplete: the backup was cut short"));
    }
    db.flush()?;
    drop(db);
    if db_path.exists() {
        let aside = db_path.with_extension(format!("replaced-{now}"));
        std::fs::rename(db_path, &aside).map_err(|e| io(db_path, e))?;
    }
    std::fs::rename(&staging, db_path).map_err(|e| io(db_path, e))?;
    Ok(Restored {
        summary: BackupSummary {
            trees: trees.len(),
            entries,
        },
        attachments,
    })
}
