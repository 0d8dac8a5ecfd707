//! Turning two-factor sign-in on and off: `enable2Fa` (a mailed code, or a TOTP secret
//! waiting for the app's first code) and `disable2Fa`, each one change of the account.

use totp_rs::Secret;

use super::audit::{Event, Subject};
use super::factors::TOTP_SECRET;
use super::secrets::random_bytes;
use super::{Auth, Caller, StepUpReason};
use crate::domain::records::{PendingTotpRecord, SecondFactor, TwoFactorRecord, UserRecord};
use crate::error::{Error, Result};
use crate::store::{AccountChange, Changed, Ends};

/// The result of `enable2Fa`.
#[derive(Debug)]
pub enum Enabled {
    /// On; recovery codes only when it was turned on by this call.
    On { recovery_codes: Option<Vec<String>> },
    /// A TOTP secret to put in the app, waiting for its first code.
    TotpPending { uri: String, qr_png_base64: String },
}

impl Auth {
    /// Turns two-factor sign-in on; both methods need a verified address. TOTP first hands
    /// out a secret, and is on once a code from the app comes back. Already on: changes
    /// nothing.
    pub async fn enable_2fa(
        &self,
        caller: &Caller,
        password: Option<String>,
        method: SecondFactor,
        code: Option<String>,
    ) -> Result<Enabled> {
        let user = self.profile(caller).await?;
        self.check_password(&user, password).await?;
        if user.two_factor.is_some() {
            return Ok(Enabled::On {
                recovery_codes: None,
            });
        }
        // No second factor is tied to an address nobody has shown to be theirs.
        if !user.email_verified {
            return Err(Error::EmailNotVerified);
        }
        let now = self.now();
        let (totp_secret, last_step) = match method {
            SecondFactor::Email => (None, None),
            SecondFactor::Totp => {
                let code = code.as_deref().map(str::trim).filter(|c| !c.is_empty());
                match (code, &user.pending_totp) {
                    (Some(code), Some(pending)) => {
                        self.factor_budget(&user, now).await?;
                        let totp = self.totp(&pending.secret, &user.email)?;
                        let now_u = u64::try_from(now).unwrap_or(0);
                        let Some(step) = totp.check(code, now_u) else {
                            self.factor_failed(&user, now).await?;
                            return Err(Error::InvalidCode);
                        };
                        (Some(pending.secret.clone()), Some(step))
                    }
                    (Some(_), None) => {
                        return Err(Error::bad_input(
                            "code",
                            "start the TOTP set-up first: call enable2Fa without a code",
                        ));
                    }
                    (None, _) => return self.start_totp(&user, now).await,
                }
            }
        };
        let (codes, hashes) = self.new_recovery_codes();
        let two_factor = TwoFactorRecord {
            method,
            totp_secret,
            // The code that completed the set-up may not sign anyone in again.
            totp_last_step: last_step,
            recovery_codes: hashes,
            enabled_at: now,
        };
        let changed = self
            .store
            .change_user(
                user.id,
                AccountChange::ending(Ends::Sessions {
                    keep: Some(caller.session_id),
                }),
                |u| {
                    if u.two_factor.is_some() {
                        // Turned on meanwhile, by another request: that one's codes stand.
                        return Err(None);
                    }
                    // The set-up that this code completes must be the one still pending.
                    if two_factor.totp_secret.is_some()
                        && u.pending_totp.as_ref().map(|p| &p.secret)
                            != two_factor.totp_secret.as_ref()
                    {
                        return Err(Some(Error::InvalidCode));
                    }
                    if !u.email_verified {
                        return Err(Some(Error::EmailNotVerified));
                    }
                    u.two_factor = Some(two_factor.clone());
                    u.pending_totp = None;
                    Ok(())
                },
            )
            .await?;
        match changed {
            Changed::Refused(None) => {
                return Ok(Enabled::On {
                    recovery_codes: None,
                });
            }
            other => {
                self.changed(refused_into(other))?;
            }
        }
        self.audit(Event::TwoFactorEnabled, Subject::user(user.id), "ok")
            .await;
        Ok(Enabled::On {
            recovery_codes: Some(codes),
        })
    }

    /// Hands out a new TOTP secret, pending until a code from the app comes back.
    async fn start_totp(&self, user: &UserRecord, now: i64) -> Result<Enabled> {
        let secret = Secret::from(&random_bytes::<20>()[..]).to_base32();
        let totp = self.totp(&secret, &user.email)?;
        let uri = totp
            .to_url()
            .map_err(|e| Error::internal(anyhow::anyhow!("TOTP URI: {e:?}")))?;
        let qr_png_base64 = totp
            .to_qr_base64()
            .map_err(|e| Error::internal(anyhow::anyhow!("TOTP QR: {e:?}")))?;
        let pending = PendingTotpRecord {
            secret: self.secrets.seal_text(TOTP_SECRET, &secret),
            created_at: now,
        };
        let changed = self
            .store
            .change_user(user.id, AccountChange::ending(Ends::Nothing), |u| {
                u.pending_totp = Some(pending.clone());
                Ok(())
            })
            .await?;
        self.changed(changed)?;
        Ok(Enabled::TotpPending { uri, qr_png_base64 })
    }

    /// Turns two-factor sign-in off with the password and a DISABLE_TWO_FACTOR step-up code
    /// (or a current TOTP code, or a recovery code). Already off: changes nothing.
    pub async fn disable_2fa(
        &self,
        caller: &Caller,
        password: Option<String>,
        code: Option<String>,
    ) -> Result<()> {
        let user = self.profile(caller).await?;
        if user.two_factor.is_none() {
            return Ok(());
        }
        self.check_password(&user, password).await?;
        let matched = self
            .use_step_up(&user, StepUpReason::DisableTwoFactor, code.as_deref())
            .await?;
        let changed = self
            .store
            .change_user(
                user.id,
                AccountChange::ending(Ends::Sessions {
                    keep: Some(caller.session_id),
                }),
                |u| {
                    Self::spend(u, &matched)?;
                    u.two_factor = None;
                    u.pending_totp = None;
                    Ok(())
                },
            )
            .await?;
        self.changed(changed)?;
        self.audit(Event::TwoFactorDisabled, Subject::user(user.id), "ok")
            .await;
        Ok(())
    }
}

/// A change refused with `Some(error)` as one refused with that error.
pub(super) fn refused_into<T>(changed: Changed<T, Option<Error>>) -> Changed<T, Error> {
    match changed {
        Changed::Done { user, value, ended } => Changed::Done { user, value, ended },
        Changed::Refused(e) => Changed::Refused(e.unwrap_or(Error::InvalidCode)),
        Changed::Missing => Changed::Missing,
        Changed::EmailTaken => Changed::EmailTaken,
        Changed::UsernameTaken => Changed::UsernameTaken,
    }
}
