//! The second factor's checks: mailed codes, TOTP, recovery codes and the password behind
//! a token; how codes are made; and the sealing of TOTP secrets at rest. What a code is
//! checked against, not what happens to the challenge (`challenge`) or the account
//! (`two_factor`).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use totp_rs::{Builder, Secret, Totp};

use super::Auth;
use super::secrets::{SEALED_PREFIX, random_bytes};
use crate::domain::records::{ChallengeRecord, UserRecord};
use crate::error::{Error, Result};
use crate::store::{AccountChange, Changed, Ends};

/// Purpose tag of mailed second-factor and step-up codes in the keyed hash.
pub(super) const MAILED_CODE: &str = "two-factor-code";

/// Purpose tag of recovery codes in the keyed hash.
pub(super) const RECOVERY_CODE: &str = "recovery-code";

/// Recovery codes handed out when two-factor sign-in is turned on.
pub const RECOVERY_CODES: usize = 10;

/// Letters and digits that cannot be mistaken for one another.
pub(super) const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A code the caller typed: which kind it turned out to be.
pub(crate) enum Matched {
    Mailed,
    /// The time step of the app's code.
    Totp(u64),
    /// The keyed hash of the recovery code.
    Recovery([u8; 32]),
    /// A passkey's answer, verified at `at`: spending it moves the passkey's counter on.
    Passkey {
        result: Box<webauthn_rs::prelude::AuthenticationResult>,
        at: i64,
    },
}

/// The label TOTP secrets are sealed under.
pub(super) const TOTP_SECRET: &[u8] = b"totp-secret";

/// Six decimal digits, uniform, from the CSPRNG.
pub fn six_digits() -> String {
    loop {
        let n = u32::from_be_bytes(random_bytes::<4>());
        // Reject the top sliver so that every code is equally likely.
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

pub(super) fn recovery_code() -> String {
    let bytes = random_bytes::<10>();
    let letters: String = bytes
        .iter()
        .map(|b| char::from(RECOVERY_ALPHABET[usize::from(*b) % RECOVERY_ALPHABET.len()]))
        .collect();
    format!("{}-{}", &letters[..5], &letters[5..])
}

pub(super) fn normalize_recovery(code: &str) -> String {
    code.trim().to_lowercase().replace(['-', ' '], "")
}

impl Auth {
    /// The TOTP generator of a stored secret: sealed (`Secrets::seal_text`), or in clear
    /// as an older Keyhold stored it until [`Auth::seal_clear_secrets`] ran.
    pub(super) fn totp(&self, stored: &str, account: &str) -> Result<Totp> {
        let opened;
        let secret_base32 = if stored.starts_with(SEALED_PREFIX) {
            opened = self
                .secrets
                .open_text(TOTP_SECRET, stored)
                .ok_or_else(|| Error::internal(anyhow::anyhow!("a TOTP secret does not open")))?;
            opened.as_str()
        } else {
            stored
        };
        let secret = Secret::try_from_base32(secret_base32)
            .map_err(|e| Error::internal(anyhow::anyhow!("stored TOTP secret: {e:?}")))?;
        Builder::new()
            .with_secret(secret)
            .with_account_name(account)
            .with_issuer(Some(self.config.two_factor.totp_issuer.as_str()))
            .build()
            .map_err(|e| Error::internal(anyhow::anyhow!("TOTP: {e:?}")))
    }

    /// The step of a valid TOTP code newer than the last one used, if it is one.
    pub(super) fn totp_step(&self, user: &UserRecord, code: &str) -> Result<Option<u64>> {
        let Some(tf) = &user.two_factor else {
            return Ok(None);
        };
        let Some(secret) = &tf.totp_secret else {
            return Ok(None);
        };
        let now = u64::try_from(self.now()).unwrap_or(0);
        let step = self.totp(secret, &user.email)?.check(code.trim(), now);
        Ok(step.filter(|s| tf.totp_last_step.is_none_or(|last| *s > last)))
    }

    /// The keyed hash of `code` if it is one of the account's unused recovery codes.
    pub(super) fn recovery_match(&self, user: &UserRecord, code: &str) -> Option<[u8; 32]> {
        let tf = user.two_factor.as_ref()?;
        let hash = self
            .secrets
            .keyed_hash(RECOVERY_CODE, &normalize_recovery(code));
        tf.recovery_codes
            .iter()
            .any(|h| verify_slices_are_equal(h, &hash).is_ok())
            .then_some(hash)
    }

    pub(super) fn mailed_code_matches(&self, challenge: &ChallengeRecord, code: &str) -> bool {
        let hash = self.secrets.keyed_hash(MAILED_CODE, code.trim());
        challenge
            .code_hash
            .is_some_and(|h| verify_slices_are_equal(&h, &hash).is_ok())
    }

    /// Uses up what a matched code spends, on the account as it is inside the transaction
    /// that makes the session or applies the change: a TOTP step no newer than the last one
    /// used, or a recovery code already gone, is refused, so one code never counts twice
    /// however the requests race.
    pub(crate) fn spend(user: &mut UserRecord, matched: &Matched) -> Result<()> {
        match matched {
            // The challenge holding it was removed by compare-and-swap already.
            Matched::Mailed => {}
            Matched::Passkey { result, at } => {
                super::passkey_login::spend_passkey(user, result, *at)
                    .map_err(|_| Error::InvalidCode)?;
            }
            Matched::Totp(step) => {
                let tf = user.two_factor.as_mut().ok_or(Error::InvalidCode)?;
                if tf.totp_last_step.is_some_and(|last| *step <= last) {
                    return Err(Error::InvalidCode);
                }
                tf.totp_last_step = Some(*step);
            }
            Matched::Recovery(hash) => {
                let tf = user.two_factor.as_mut().ok_or(Error::InvalidCode)?;
                let index = tf
                    .recovery_codes
                    .iter()
                    .position(|h| verify_slices_are_equal(h, hash).is_ok())
                    .ok_or(Error::InvalidCode)?;
                tf.recovery_codes.remove(index);
            }
        }
        Ok(())
    }

    /// The password of a signed-in caller, checked like a sign-in: refused while the account
    /// waits after failed sign-ins (even when right), and a wrong or missing one counts as a
    /// failed sign-in. Aliases in one request run one after another, so each is counted.
    pub(crate) async fn check_password(
        &self,
        user: &UserRecord,
        password: Option<String>,
    ) -> Result<()> {
        let now = self.now();
        self.store.check_lockout(&user.email, now).await??;
        let matches = match password {
            Some(password) => {
                self.passwords
                    .verify(password, Some(user.password_hash.clone()))
                    .await?
                    .matches
            }
            None => false,
        };
        if matches {
            Ok(())
        } else {
            self.store.record_sign_in_failure(&user.email, now).await?;
            Err(Error::InvalidCredentials)
        }
    }

    pub(super) fn new_recovery_codes(&self) -> (Vec<String>, Vec<[u8; 32]>) {
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let hashes = codes
            .iter()
            .map(|c| {
                self.secrets
                    .keyed_hash(RECOVERY_CODE, &normalize_recovery(c))
            })
            .collect();
        (codes, hashes)
    }

    /// Seals every TOTP secret that an older Keyhold stored in clear. Run at start, once per
    /// database (a mark in `meta` says it has run); each account is changed in its own
    /// transaction. Returns how many were sealed.
    pub async fn seal_clear_secrets(&self) -> Result<usize> {
        if self.store.secrets_sealed().await? {
            return Ok(0);
        }
        let clear = |s: &String| !s.starts_with(SEALED_PREFIX);
        let mut sealed = 0;
        for user in self.store.all_users().await? {
            let has_clear = user
                .two_factor
                .as_ref()
                .and_then(|tf| tf.totp_secret.as_ref())
                .is_some_and(clear)
                || user.pending_totp.as_ref().is_some_and(|p| clear(&p.secret));
            if !has_clear {
                continue;
            }
            let changed = self
                .store
                .change_user(user.id, AccountChange::ending(Ends::Nothing), |u| {
                    if let Some(secret) =
                        u.two_factor.as_mut().and_then(|tf| tf.totp_secret.as_mut())
                        && clear(secret)
                    {
                        *secret = self.secrets.seal_text(TOTP_SECRET, secret);
                    }
                    if let Some(p) = u.pending_totp.as_mut()
                        && clear(&p.secret)
                    {
                        p.secret = self.secrets.seal_text(TOTP_SECRET, &p.secret);
                    }
                    Ok::<_, Error>(())
                })
                .await?;
            if let Changed::Done { .. } = changed {
                sealed += 1;
            }
        }
        if sealed > 0 {
            tracing::info!(accounts = sealed, "sealed TOTP secrets stored in clear");
        }
        self.store.mark_secrets_sealed().await?;
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_digit_codes_are_six_digits() {
        for _ in 0..1000 {
            let code = six_digits();
            assert_eq!(code.len(), 6);
            assert!(code.chars().all(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn recovery_codes_are_readable_and_normalised() {
        let code = recovery_code();
        assert_eq!(code.len(), 11);
        assert_eq!(&code[5..6], "-");
        assert_eq!(
            normalize_recovery(&code.to_uppercase()),
            code.replace('-', "")
        );
    }
}
