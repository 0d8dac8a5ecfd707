//! The second factor's use cases: the second step of a sign-in here, step-up codes in
//! `step_up`, and turning two-factor sign-in on and off in `two_factor_settings`. A
//! challenge's life is in `challenge`, the checks of a code in `factors`; no token exists
//! before a challenge succeeded.

use uuid::Uuid;

pub(crate) use super::factors::Matched;
pub use super::factors::{RECOVERY_CODES, six_digits};
pub use super::step_up::{CodeSent, StepUpReason};
pub use super::two_factor_settings::Enabled;

use super::audit::{Event, Subject};
use super::limits::Limit;
use super::sessions::SignedIn;
use super::{Auth, Origin};
use crate::domain::Email;
use crate::domain::records::{ChallengePurpose, ChallengeRecord, SecondFactor, UserRecord};
use crate::error::{Error, Result};
use crate::store::Versioned;

/// What completes a pending sign-in.
enum Factor<'a> {
    /// A mailed, TOTP or recovery code.
    Code(&'a str),
    /// A passkey's answer.
    Passkey(&'a webauthn_rs::prelude::PublicKeyCredential),
}

/// A sign-in waiting for its second factor.
#[derive(Debug)]
pub struct PendingSignIn {
    pub challenge_id: Uuid,
    pub user: UserRecord,
    pub method: SecondFactor,
    pub expires_at: i64,
    /// With a passkey on the account: the request options (the `publicKey` JSON) that let one
    /// of them complete the sign-in instead of the code.
    pub passkey_options: Option<String>,
}

/// The result of `login`.
#[derive(Debug)]
pub enum LoginOutcome {
    SignedIn(Box<SignedIn>),
    SecondFactor(Box<PendingSignIn>),
}

impl Auth {
    /// Starts the second step of a sign-in whose password was right.
    pub(crate) async fn challenge_sign_in(
        &self,
        user: UserRecord,
        device_id: String,
        device_name: Option<String>,
        origin: &Origin,
    ) -> Result<PendingSignIn> {
        let method = user
            .two_factor
            .as_ref()
            .map_or(SecondFactor::Email, |tf| tf.method);
        let purpose = ChallengePurpose::SignIn {
            device_id,
            device_name,
            ip_address: origin.ip.map(|ip| ip.to_string()),
            user_agent: origin.user_agent.clone(),
        };
        let (challenge, code) = self.new_challenge(&user, purpose, method);
        let mail = self.code_mail(
            &user.email,
            code.as_deref(),
            "sign in",
            challenge.expires_at,
        )?;
        let ended = self
            .store
            .put_challenge(
                &challenge,
                self.config.two_factor.max_pending_challenges,
                &mail,
            )
            .await?;
        if ended > 0 {
            tracing::debug!(user = %user.id, ended, "the oldest pending sign-ins gave way to a new one");
        }
        self.mail_queued();
        let passkey_options = self
            .start_passkey_factor(&user, challenge.id, challenge.expires_at)
            .await?;
        Ok(PendingSignIn {
            challenge_id: challenge.id,
            user,
            method,
            expires_at: challenge.expires_at,
            passkey_options,
        })
    }

    /// A live sign-in challenge of the account with this address.
    async fn sign_in_challenge(
        &self,
        challenge_id: &str,
        email: &Email,
    ) -> Result<(Versioned<ChallengeRecord>, UserRecord)> {
        let id = Uuid::parse_str(challenge_id.trim()).map_err(|_| Error::InvalidCode)?;
        let current = self.store.challenge(id).await?.ok_or(Error::InvalidCode)?;
        if !matches!(current.record.purpose, ChallengePurpose::SignIn { .. }) {
            return Err(Error::InvalidCode);
        }
        let user = self
            .store
            .user(current.record.user_id)
            .await?
            .filter(|u| u.email == email.as_str())
            .ok_or(Error::InvalidCode)?;
        Ok((current, user))
    }

    /// Finishes a sign-in with the second factor: the mailed code, the app's code, or a
    /// recovery code.
    pub async fn confirm_2fa(
        &self,
        code: &str,
        challenge_id: &str,
        email: &Email,
    ) -> Result<SignedIn> {
        self.confirm_sign_in(challenge_id, email, Factor::Code(code))
            .await
    }

    /// Finishes a sign-in with one of the account's passkeys in place of the code: the
    /// browser's answer to the `passkeyOptions` of `login`'s 202.
    pub async fn confirm_2fa_with_passkey(
        &self,
        credential: &str,
        challenge_id: &str,
        email: &Email,
    ) -> Result<SignedIn> {
        let credential: webauthn_rs::prelude::PublicKeyCredential =
            super::passkeys::parse_credential(credential)?;
        self.confirm_sign_in(challenge_id, email, Factor::Passkey(&credential))
            .await
    }

    async fn confirm_sign_in(
        &self,
        challenge_id: &str,
        email: &Email,
        factor: Factor<'_>,
    ) -> Result<SignedIn> {
        let (current, user) = self.sign_in_challenge(challenge_id, email).await?;
        // Disabled while the challenge waited: no code signs it in.
        if user.state == crate::domain::records::AccountState::Disabled {
            return Err(Error::AccountDisabled);
        }
        let ip = match &current.record.purpose {
            ChallengePurpose::SignIn { ip_address, .. } => {
                ip_address.as_deref().and_then(|ip| ip.parse().ok())
            }
            _ => None,
        };
        let who = Subject {
            user_id: Some(user.id),
            email: Some(email.as_str()),
            ip,
            device: None,
        };
        let attempt = match factor {
            Factor::Code(code) => self.attempt(&current, &user, code).await,
            Factor::Passkey(credential) => {
                self.attempt_passkey(&current, &user, credential, who.clone())
                    .await
            }
        };
        let matched = match attempt {
            Ok(matched) => matched,
            Err(e) => {
                self.audit(Event::TwoFactorRefused, who, e.code()).await;
                return Err(e);
            }
        };
        self.audit(Event::TwoFactorAccepted, who.clone(), "ok")
            .await;
        let stamp = current.record.stamp;
        let ChallengePurpose::SignIn {
            device_id,
            device_name,
            ip_address,
            user_agent,
        } = current.record.purpose
        else {
            return Err(Error::InvalidCode);
        };
        let origin = Origin {
            ip: ip_address.and_then(|ip| ip.parse().ok()),
            user_agent,
        };
        let address = email.as_str();
        let signed_in = self
            .open_session(user.id, device_id, device_name, &origin, |u| {
                // Changed since the challenge was made (a new password, a new address, 2FA
                // off and on): the challenge signs nobody in.
                if u.stamp != stamp || u.email != address {
                    return Err(Error::InvalidCode);
                }
                Self::spend(u, &matched)
            })
            .await;
        match &signed_in {
            Ok(_) => self.audit(Event::SignedIn, who, "ok").await,
            Err(e) => self.audit(Event::SignInFailed, who, e.code()).await,
        }
        signed_in
    }

    /// Mails a fresh code for a pending sign-in, replacing the old one, within the cooldown
    /// and the per-challenge cap. A TOTP challenge mails nothing.
    pub async fn resend_2fa(
        &self,
        challenge_id: &str,
        email: &Email,
        origin: &Origin,
    ) -> Result<CodeSent> {
        self.limit_ip(Limit::CodeSendsPerIp, origin.ip).await?;
        let (current, user) = self.sign_in_challenge(challenge_id, email).await?;
        self.resend_challenge(&current, &user, "sign in").await
    }
}
