//! `keyhold migrate --from A --to B`: copies a stopped Keyhold's storage into an empty one of
//! another backend (sled into PostgreSQL, or back), through the `Storage` traits alone.
//!
//! Copied: accounts (with their passwords, second factors and recovery codes), device
//! sessions with their current refresh tokens (so they keep working), signing keys, queued
//! mail, the audit log and the storage's flags. Not copied: pending codes and challenges
//! (a verification, reset or second-factor code lives minutes; it is asked for again) and
//! the abuse limits' counts.

use anyhow::{Context, bail};

use crate::auth::Secrets;
use crate::config::Config;
use crate::store::{CreateOutcome, Storage};

/// What a migration copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub users: usize,
    pub sessions: usize,
    pub signing_keys: usize,
    pub mail: usize,
    pub audit: usize,
}

/// Copies everything [the module](self) lists from `from` into `to`, which must be empty.
pub async fn copy(from: &dyn Storage, to: &dyn Storage) -> anyhow::Result<Copied> {
    if !to.all_users().await?.is_empty() || !to.signing_keys().await?.is_empty() {
        bail!("the target storage is not empty: migrate into a new, empty one");
    }
    let mut copied = Copied::default();
    for key in from.signing_keys().await? {
        to.add_signing_key(&key).await?;
        copied.signing_keys += 1;
    }
    for user in from.all_users().await? {
        match to.insert_user(&user).await? {
            CreateOutcome::Created => copied.users += 1,
            other => bail!("account {} cannot be copied: {other:?}", user.id),
        }
        for session in from.sessions_of(user.id).await? {
            // The account as it is: the copy changes nothing of it.
            match to
                .start_session(&session, usize::MAX, |_| Ok::<(), ()>(()))
                .await?
            {
                crate::store::Changed::Done { .. } => copied.sessions += 1,
                _ => bail!("a session of account {} cannot be copied", user.id),
            }
        }
    }
    let mail: Vec<_> = from
        .queued_mail()
        .await?
        .into_iter()
        .map(|m| m.record)
        .collect();
    to.enqueue(&mail).await?;
    copied.mail = mail.len();
    for event in from.audit_since(i64::MIN, None, usize::MAX).await? {
        to.append_audit(&event).await?;
        copied.audit += 1;
    }
    if from.secrets_sealed().await? {
        to.mark_secrets_sealed().await?;
    }
    Ok(copied)
}

/// The key file of `from`, which must exist, made the key of `to` too: copied to `to`'s key
/// file when that does not exist, refused when it holds another key. Both storages are then
/// bound to it.
pub async fn same_key(
    from_config: &Config,
    from: &dyn Storage,
    to_config: &Config,
    to: &dyn Storage,
) -> anyhow::Result<Secrets> {
    let source = from_config.hmac_key_path();
    let bytes = std::fs::read(&source)
        .with_context(|| format!("the key file of the source, {}", source.display()))?;
    let secrets = Secrets::from_key(&source, &bytes)?;
    let target = to_config.hmac_key_path();
    match std::fs::read(&target) {
        Ok(theirs) if theirs == bytes => {}
        Ok(_) => bail!(
            "{} holds another key than {}: the copied codes, tokens and signing keys would not open; point storage.hmac_key_file of the target at the source's key",
            target.display(),
            source.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::auth::secrets::write_key_file(&target, &bytes)?;
        }
        Err(e) => return Err(e).with_context(|| format!("{}", target.display())),
    }
    crate::auth::check_key(from, &secrets, from_config).await?;
    crate::auth::check_key(to, &secrets, to_config).await?;
    Ok(secrets)
}
