//! Passkeys (WebAuthn credentials), through webauthn-rs: adding one to the signed-in account
//! (a ceremony of two calls), listing them and removing one.
//!
//! A ceremony's state is kept in the account (`pending_passkey`), not by the client: it is
//! used once, by whichever call finishes it first on whichever instance, and it expires
//! after `webauthn.ceremony_ttl`. The contract's error codes are kept: a credential that does
//! not verify (another origin or RP ID, another challenge, a bad signature) is `INVALID_CODE`,
//! an expired ceremony `CODE_EXPIRED`, and JSON that is not a credential `BAD_USER_INPUT`.

use minijinja::context;
use uuid::Uuid;
use webauthn_rs::prelude::RegisterPublicKeyCredential;
use webauthn_rs_proto::ResidentKeyRequirement;

use super::audit::{Event, Subject};
use super::factors::Matched;
use super::{Auth, Caller, StepUpReason, iso, seconds};
use crate::domain::records::{MailQueueRecord, PasskeyRecord, PendingPasskeyRecord, UserRecord};
use crate::error::{Error, Result};
use crate::mail::Template;
use crate::store::{AccountChange, Changed, Ends};

/// The most passkeys one account keeps.
pub const MAX_PASSKEYS: usize = 16;
/// The longest name of a passkey, in characters.
const MAX_NAME_CHARS: usize = 64;

/// The first half of a ceremony: what the browser is given.
#[derive(Debug, Clone)]
pub struct PasskeyChallenge {
    /// What the second call names.
    pub challenge_id: Uuid,
    /// The JSON of the `publicKey` options, in the WebAuthn JSON form (binary fields as
    /// base64url).
    pub options: String,
}

impl Auth {
    /// Starts adding a passkey to the caller's account. It takes the password, and with
    /// two-factor sign-in on also a step-up code (or a TOTP or recovery code), as turning
    /// two-factor sign-in off does: a stolen access token alone adds no way in.
    pub async fn start_passkey_registration(
        &self,
        caller: &Caller,
        password: Option<String>,
        code: Option<String>,
    ) -> Result<PasskeyChallenge> {
        let user = self.profile(caller).await?;
        // Before the password and the code, so that a full account spends neither.
        if user.passkeys.len() >= MAX_PASSKEYS {
            return Err(Error::bad_input(
                "password",
                format!("an account keeps at most {MAX_PASSKEYS} passkeys: remove one first"),
            ));
        }
        self.check_password(&user, password).await?;
        let matched = self.passkey_step_up(&user, code).await?;
        let known = user
            .passkeys
            .iter()
            .map(|p| p.credential.cred_id().clone())
            .collect();
        let (mut options, state) = self
            .webauthn
            .start_passkey_registration(user.id, &user.email, &user.username, Some(known))
            .map_err(|e| Error::internal(anyhow::anyhow!("passkey registration: {e}")))?;
        // A passkey that the authenticator keeps (a discoverable credential) signs in without
        // an address being typed first; authenticators that cannot keep one still register.
        if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
            selection.resident_key = Some(ResidentKeyRequirement::Preferred);
        }
        let challenge_id = Uuid::new_v4();
        let pending = PendingPasskeyRecord {
            challenge_id,
            expires_at: self
                .now()
                .saturating_add(seconds(self.config.webauthn.ceremony_ttl)),
            state,
        };
        let changed = self
            .store
            .change_user(user.id, AccountChange::ending(Ends::Nothing), |u| {
                if let Some(matched) = &matched {
                    Self::spend(u, matched)?;
                }
                // One ceremony at a time: a new start replaces an unfinished one.
                u.pending_passkey = Some(pending.clone());
                Ok(())
            })
            .await?;
        self.changed(changed)?;
        let options = serde_json::to_string(&options.public_key).map_err(Error::internal)?;
        Ok(PasskeyChallenge {
            challenge_id,
            options,
        })
    }

    /// Finishes adding a passkey: the browser's answer to the options of `challenge_id`.
    /// Ends no session; mails a notice and writes an audit record.
    pub async fn finish_passkey_registration(
        &self,
        caller: &Caller,
        challenge_id: &str,
        credential: &str,
        name: Option<String>,
    ) -> Result<PasskeyRecord> {
        let challenge_id = parse_challenge_id(challenge_id)?;
        let credential: RegisterPublicKeyCredential = parse_credential(credential)?;
        let name = passkey_name(name)?;
        let user = self.profile(caller).await?;
        let now = self.now();
        let pending = user
            .pending_passkey
            .clone()
            .filter(|p| p.challenge_id == challenge_id)
            .ok_or(Error::InvalidCode)?;
        // Used once, whatever comes of it: a failed or late answer ends the ceremony too.
        let outcome = if pending.expires_at <= now {
            Err(Error::CodeExpired)
        } else {
            self.webauthn
                .finish_passkey_registration(&credential, &pending.state)
                .map_err(|e| {
                    tracing::info!(user = %user.id, error = %e, "a passkey registration was refused");
                    Error::InvalidCode
                })
        };
        let passkey = match outcome {
            Ok(passkey) => passkey,
            Err(refused) => {
                self.end_registration(user.id, challenge_id).await?;
                self.audit(Event::PasskeyAdded, Subject::user(user.id), refused.code())
                    .await;
                return Err(refused);
            }
        };
        let record = PasskeyRecord {
            name,
            created_at: now,
            last_used_at: None,
            credential: passkey,
        };
        let notice = self.passkey_notice(&user, "added", &record.name, now)?;
        let change = AccountChange {
            mail: notice.as_slice(),
            ..AccountChange::ending(Ends::Nothing)
        };
        let changed = self
            .store
            .change_user(user.id, change, |u| {
                if u.pending_passkey.as_ref().map(|p| p.challenge_id) != Some(challenge_id) {
                    // Finished (or replaced) meanwhile by another call.
                    return Err(Error::InvalidCode);
                }
                u.pending_passkey = None;
                let id = record.credential.cred_id();
                if u.passkeys.iter().any(|p| p.credential.cred_id() == id) {
                    return Err(Error::bad_input(
                        "credential",
                        "this passkey is already registered",
                    ));
                }
                if u.passkeys.len() >= MAX_PASSKEYS {
                    return Err(Error::bad_input(
                        "credential",
                        format!("an account keeps at most {MAX_PASSKEYS} passkeys"),
                    ));
                }
                u.passkeys.push(record.clone());
                Ok(())
            })
            .await?;
        if !matches!(changed, Changed::Done { .. }) {
            self.not_queued(&notice);
        }
        self.changed(changed)?;
        self.mail_queued();
        self.audit(Event::PasskeyAdded, Subject::user(user.id), "ok")
            .await;
        Ok(record)
    }

    /// The caller's passkeys, oldest first.
    pub async fn passkeys(&self, caller: &Caller) -> Result<Vec<PasskeyRecord>> {
        Ok(self.profile(caller).await?.passkeys)
    }

    /// Removes the caller's passkey `id` (its credential ID), with the same proof as adding
    /// one. False when the account has no such passkey. Ends no session; mails a notice.
    pub async fn remove_passkey(
        &self,
        caller: &Caller,
        id: &str,
        password: Option<String>,
        code: Option<String>,
    ) -> Result<bool> {
        let user = self.profile(caller).await?;
        self.check_password(&user, password).await?;
        let Some(name) = user
            .passkeys
            .iter()
            .find(|p| p.id() == id)
            .map(|p| p.name.clone())
        else {
            return Ok(false);
        };
        let matched = self.passkey_step_up(&user, code).await?;
        let now = self.now();
        let notice = self.passkey_notice(&user, "removed", &name, now)?;
        let change = AccountChange {
            mail: notice.as_slice(),
            ..AccountChange::ending(Ends::Nothing)
        };
        let changed = self
            .store
            .change_user(user.id, change, |u| {
                if let Some(matched) = &matched {
                    Self::spend(u, matched).map_err(Some)?;
                }
                let before = u.passkeys.len();
                u.passkeys.retain(|p| p.id() != id);
                if u.passkeys.len() == before {
                    // Removed meanwhile by another call: nothing to write or mail.
                    return Err(None);
                }
                Ok(())
            })
            .await?;
        if !matches!(changed, Changed::Done { .. }) {
            self.not_queued(&notice);
            if matches!(changed, Changed::Refused(None)) {
                return Ok(false);
            }
        }
        self.changed(super::two_factor_settings::refused_into(changed))?;
        self.mail_queued();
        self.audit(Event::PasskeyRemoved, Subject::user(user.id), "ok")
            .await;
        Ok(true)
    }

    /// With two-factor sign-in on, the step-up code (or a TOTP or recovery code) that a change
    /// of passkeys takes besides the password.
    async fn passkey_step_up(
        &self,
        user: &UserRecord,
        code: Option<String>,
    ) -> Result<Option<Matched>> {
        if user.two_factor.is_none() {
            return Ok(None);
        }
        self.use_step_up(user, StepUpReason::Generic, code.as_deref())
            .await
            .map(Some)
    }

    /// Ends the registration `challenge_id` if it is still the pending one.
    async fn end_registration(&self, user_id: Uuid, challenge_id: Uuid) -> Result<()> {
        // Refused when it ended already (finished, replaced, or the account gone): nothing
        // is left to end then.
        self.store
            .change_user(user_id, AccountChange::ending(Ends::Nothing), |u| {
                if u.pending_passkey.as_ref().map(|p| p.challenge_id) != Some(challenge_id) {
                    return Err(());
                }
                u.pending_passkey = None;
                Ok(())
            })
            .await?;
        Ok(())
    }

    fn passkey_notice(
        &self,
        user: &UserRecord,
        how: &str,
        name: &str,
        now: i64,
    ) -> Result<Option<MailQueueRecord>> {
        self.queue_mail(
            &user.email,
            Template::PasskeyChanged,
            context! {
                how => how,
                name => name,
                when => iso(now),
                reset_link => self.page("forgot-password").to_string(),
            },
        )
    }
}

/// The `challengeId` of a ceremony's first half, as the client sends it back.
pub(crate) fn parse_challenge_id(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text.trim()).map_err(|_| Error::bad_input("challengeId", "not a challenge ID"))
}

/// A browser's `credential` argument: the JSON of its `PublicKeyCredential` (`toJSON()`), as
/// a registration's or an assertion's answer.
pub(crate) fn parse_credential<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|_| Error::bad_input("credential", "not the JSON of a PublicKeyCredential"))
}

/// A passkey's name as given: trimmed, at most [`MAX_NAME_CHARS`] characters, no control
/// characters; "Passkey" when none is given.
fn passkey_name(name: Option<String>) -> Result<String> {
    let name = name.as_deref().map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Ok("Passkey".to_string());
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(Error::bad_input(
            "name",
            format!("at most {MAX_NAME_CHARS} characters, none of them control characters"),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passkey_name_is_trimmed_bounded_and_printable() {
        assert_eq!(passkey_name(None).unwrap(), "Passkey");
        assert_eq!(passkey_name(Some("  ".into())).unwrap(), "Passkey");
        assert_eq!(passkey_name(Some(" laptop ".into())).unwrap(), "laptop");
        assert!(passkey_name(Some("x".repeat(65))).is_err());
        assert!(passkey_name(Some("a\u{7}b".into())).is_err());
        assert_eq!(
            passkey_name(Some("é".repeat(64))).unwrap().chars().count(),
            64
        );
    }
}
