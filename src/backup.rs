//! Backups of a running or stopped Keyhold: the database (one consistent state) and the key
//! file kept beside it, in one file; scheduled backups with pruning; restore.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::store::backup::{BackupSummary, restore_into};
use crate::store::{Store, create_private_dir};

/// The files beside the database that a backup carries, relative to `storage.path`.
const ATTACHMENTS: [&str; 1] = ["keys/hmac.key"];

/// Backs up `store` (open in this process) with its key file to `file`.
pub fn backup_store(
    config: &Config,
    store: &Store,
    file: &Path,
    now: i64,
) -> anyhow::Result<BackupSummary> {
    let mut attachments = Vec::new();
    for name in ATTACHMENTS {
        let path = config.storage.path.join(name);
        if path.exists() {
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            attachments.push((name, data));
        }
    }
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let summary = store
        .backup_to(file, &attachments, now)
        .with_context(|| format!("writing the backup {}", file.display()))?;
    tracing::info!(file = %file.display(), entries = summary.entries, "backup written");
    Ok(summary)
}

/// Restores `file` into the storage of a stopped server.
pub fn restore(config: &Config, file: &Path, now: i64) -> anyhow::Result<BackupSummary> {
    create_private_dir(&config.storage.path)?;
    let restored = restore_into(&config.db_path(), file, now)
        .with_context(|| format!("restoring {}", file.display()))?;
    for (name, data) in &restored.attachments {
        if !ATTACHMENTS.contains(&name.as_str()) {
            anyhow::bail!("the backup carries an unexpected file {name}");
        }
        let path = config.storage.path.join(name);
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        write_private(&path, data)?;
    }
    Ok(restored.summary)
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `storage.path/backups/keyhold-<unix seconds>.backup`: names sort by age.
pub fn scheduled_name(config: &Config, now: i64) -> PathBuf {
    config
        .backups_dir()
        .join(format!("keyhold-{now:012}.backup"))
}

/// Deletes all but the newest `keep` scheduled backups.
pub fn prune(config: &Config) -> anyhow::Result<usize> {
    let dir = config.backups_dir();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("keyhold-") && n.ends_with(".backup"))
        })
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(config.storage.backup_keep);
    for old in &names[..excess] {
        std::fs::remove_file(old)?;
    }
    Ok(excess)
}

/// Makes a backup every `storage.backup_interval` (none when it is 0) until `stop`. A
/// backup under way when `stop` comes is finished first.
pub async fn run_backups(
    config: std::sync::Arc<Config>,
    store: Store,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let interval = config.storage.backup_interval;
    if interval == Duration::ZERO {
        return;
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let (config, store, now) = (config.clone(), store.clone(), clock.unix_seconds());
        let made = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            create_private_dir(&config.backups_dir())?;
            backup_store(&config, &store, &scheduled_name(&config, now), now)?;
            prune(&config)?;
            Ok(())
        })
        .await;
        match made {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "scheduled backup failed"),
            Err(e) => tracing::error!(error = %e, "scheduled backup failed"),
        }
    }
}
