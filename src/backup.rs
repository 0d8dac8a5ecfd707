//! Backups of a running or stopped Keyhold: the database (one consistent state) and the key
//! file kept beside it, in one file encrypted to the operator's age key; scheduled backups
//! with pruning; restore.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::files::create_private_dir;
use crate::store::BackupSummary;
use crate::store::Storage;
use crate::store::{StagedRestore, stage_restore};

/// The files beside the database that a backup carries, relative to `storage.path`.
const ATTACHMENTS: [&str; 1] = ["keys/hmac.key"];
/// The key file among them: without it, nothing sealed in the database opens.
const KEY_FILE: &str = "keys/hmac.key";

/// The age recipient of `config`'s backups: there is no backup without one, since a backup
/// carries the key file.
fn recipient(config: &Config) -> anyhow::Result<age::x25519::Recipient> {
    let text = config.storage.backup_recipient.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "storage.backup_recipient is not set: a backup carries the key file, so it is written only encrypted to a key kept away from this server (make one with `keyhold backup-key FILE`)"
        )
    })?;
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("storage.backup_recipient: {e}"))
}

/// Backs up `store` (open in this process) with its key file to `file`, encrypted to
/// `storage.backup_recipient` (age, X25519): the file alone yields nothing, and any change to
/// it, or a cut, is found on restore.
pub fn backup_store(
    config: &Config,
    store: &dyn Storage,
    file: &Path,
    now: i64,
) -> anyhow::Result<BackupSummary> {
    use std::io::Write;
    let recipient = recipient(config)?;
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
    let tmp = file.with_extension("partial");
    let out = create_private(&tmp)?;
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .context("encrypting the backup")?;
    let mut sealed = encryptor.wrap_output(std::io::BufWriter::new(out))?;
    let summary = store
        .backup_to(&mut sealed, file, &attachments, now)
        .with_context(|| format!("writing the backup {}", file.display()))?;
    let mut out = sealed.finish()?;
    out.flush()?;
    let out = out.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    tracing::info!(file = %file.display(), entries = summary.entries, "backup written");
    Ok(summary)
}

/// Restores `file` into the storage of a stopped server, opening it with the age identity
/// in `identity` (the file `keyhold backup-key` wrote). The whole backup is decrypted, read
/// into a new database and checked (its key file opens its signing keys) before anything
/// of the live storage changes.
pub async fn restore(
    config: &Config,
    file: &Path,
    identity: &Path,
    now: i64,
) -> anyhow::Result<BackupSummary> {
    let identities = age::IdentityFile::from_file(identity.display().to_string())
        .and_then(|f| f.into_identities().map_err(std::io::Error::other))
        .with_context(|| format!("reading the identity {}", identity.display()))?;
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let decryptor = age::Decryptor::new_buffered(std::io::BufReader::new(input)).map_err(|e| {
        anyhow::anyhow!("{} is not an encrypted Keyhold backup: {e}", file.display())
    })?;
    let plain = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| anyhow::anyhow!("{} does not open with this identity: {e}", file.display()))?;
    create_private_dir(&config.storage.path)?;
    let staged = stage_restore(config, file, std::io::BufReader::new(plain), &ATTACHMENTS)
        .with_context(|| format!("restoring {}", file.display()))?;
    let checked = check_staged(&staged).await;
    if let Err(e) = checked {
        staged.discard();
        return Err(e.context(format!("restoring {}", file.display())));
    }
    for (name, data) in staged.attachments() {
        let path = config.storage.path.join(name);
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        write_private(&path, data)?;
    }
    Ok(staged.install(now)?)
}

/// Makes a new age identity in `file` (mode 0600; an existing file is left alone and is an
/// error). Returns its recipient, for `storage.backup_recipient`.
pub fn make_identity(file: &Path) -> anyhow::Result<String> {
    use age::secrecy::ExposeSecret;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    writeln!(
        out,
        "# Keyhold backup identity: restores backups encrypted to"
    )?;
    writeln!(out, "# public key: {recipient}")?;
    writeln!(out, "{}", identity.to_string().expose_secret())?;
    out.sync_all()?;
    Ok(recipient)
}

/// Whether a staged backup is whole: its key file is there and opens its signing keys.
async fn check_staged(staged: &StagedRestore) -> anyhow::Result<()> {
    let (_, key) = staged
        .attachments()
        .iter()
        .find(|(name, _)| name == KEY_FILE)
        .ok_or_else(|| anyhow::anyhow!("the backup carries no key file"))?;
    let secrets = crate::auth::Secrets::from_key(Path::new(KEY_FILE), key)?;
    let store = staged.open()?;
    let keys = crate::auth::tokens::check_sealed_keys(&*store, &secrets).await?;
    drop(store);
    if keys == 0 {
        anyhow::bail!("the backup holds no signing key");
    }
    Ok(())
}

/// `path`, created (or emptied) for writing with mode 0600.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = create_private(&tmp)?;
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
    store: std::sync::Arc<dyn Storage>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let interval = config.storage.backup_interval;
    if interval == Duration::ZERO {
        return;
    }
    if config.storage.backend == crate::config::StorageBackend::Postgres {
        tracing::info!(
            "no scheduled backups: a PostgreSQL store is backed up with pg_dump (README, \"Running several instances\")"
        );
        return;
    }
    if config.storage.backup_recipient.is_none() {
        tracing::warn!(
            "no scheduled backups: storage.backup_recipient is not set (a backup is written only encrypted to a key kept away from this server; `keyhold backup-key FILE` makes one)"
        );
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
            backup_store(&config, &*store, &scheduled_name(&config, now), now)?;
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
