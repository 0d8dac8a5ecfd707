//! Backups: a consistent copy of every tree (writers are held off while it is taken) as a
//! stream of lines, and restoring one into a stopped server's storage. The file around the
//! stream (its encryption) is `crate::backup`'s.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::keys::FORMAT_VERSION;
use super::{Store, StoreError};

/// The backup file's own format.
const BACKUP_VERSION: u32 = 2;

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
    /// Writes every tree, and `attachments` (files kept beside the database), to `out`. No
    /// write happens while the trees are read, so the copy is one consistent state. `file`
    /// names the destination in errors.
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
        Ok(summary)
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
    pub fn install(self, db_path: &Path, now: i64) -> Result<BackupSummary, StoreError> {
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
) -> Result<Staged, StoreError> {
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
) -> Result<Staged, StoreError> {
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
                if keyhold_backup != BACKUP_VERSION || storage_format > FORMAT_VERSION {
                    return Err(bad(file, "made by another version of Keyhold"));
                }
                header = true;
            }
            Line::Attachment { attachment, data } => {
                if !allowed.contains(&attachment.as_str()) {
                    return Err(bad(file, "it carries an unexpected file"));
                }
                attachments.push((attachment, decode(&data)?));
            }
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
    Ok(Staged {
        summary: BackupSummary {
            trees: trees.len(),
            entries,
        },
        attachments,
        path: staging.to_path_buf(),
    })
}
