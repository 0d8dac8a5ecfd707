//! The second factor's use cases: the second step of a sign-in, step-up codes, and turning
//! two-factor sign-in on and off. A challenge's life is in `challenge`, the checks of a code
//! in `factors`; no token exists before a challenge succeeded.

use uuid::Uuid;

pub(crate) use super::factors::Matched;
pub use super::factors::{RECOVERY_CODES, six_digits};
pub use super::two_factor_settings::Enabled;

use super::audit::{Event, Subject};
use super::limits::Limit;
use super::sessions::SignedIn;
use super::{Auth, Caller, Origin, seconds};
use crate::domain::Email;
use crate::domain::records::{ChallengePurpose, ChallengeRecord, SecondFactor, UserRecord};
use crate::error::{Error, Result};
use crate::store::Versioned;

/// What a step-up code authorises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUpReason {
    Generic,
    UpdateProfile,
    ChangeEmail,
    DisableTwoFactor,
}

impl StepUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StepUpReason::Generic => "GENERIC",
            StepUpReason::UpdateProfile => "UPDATE_PROFILE",
            StepUpReason::ChangeEmail => "CHANGE_EMAIL",
            StepUpReason::DisableTwoFactor => "DISABLE_TWO_FACTOR",
        }
    }

    /// What the mail says the code is for.
    fn purpose(self) -> &'static str {
        match self {
            StepUpReason::Generic => "confirm a sensitive operation",
            StepUpReason::UpdateProfile => "change your profile",
            StepUpReason::ChangeEmail => "change your e-mail address",
            StepUpReason::DisableTwoFactor => "turn off two-factor sign-in",
        }
    }
}

/// A sign-in waiting for its second factor.
#[derive(Debug)]
pub struct PendingSignIn {
    pub challenge_id: Uuid,
    pub user: UserRecord,
    pub method: SecondFactor,
    pub expires_at: i64,
}

/// The result of `login`.
#[derive(Debug)]
pub enum LoginOutcome {
    SignedIn(Box<SignedIn>),
    SecondFactor(Box<PendingSignIn>),
}

/// A code was (or, for TOTP, was not) sent.
#[derive(Debug)]
pub struct CodeSent {
    pub challenge_id: Uuid,
    pub expires_at: i64,
    /// Seconds before another code may be requested.
    pub retry_after: i64,
    /// False for a TOTP challenge: the code comes from the app, nothing was mailed.
    pub mailed: bool,
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
        Ok(PendingSignIn {
            challenge_id: challenge.id,
            user,
            method,
            expires_at: challenge.expires_at,
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
        let matched = match self.attempt(&current, &user, code).await {
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

    /// Mails a step-up code for one operation of `reason`.
    pub async fn send_2fa(
        &self,
        caller: &Caller,
        reason: StepUpReason,
        origin: &Origin,
    ) -> Result<CodeSent> {
        self.limit_ip(Limit::CodeSendsPerIp, origin.ip).await?;
        let user = self.profile(caller).await?;
        let now = self.now();
        if let Some(previous) = self.store.step_up(user.id, reason.as_str()).await? {
            let wait = previous.record.last_sent_at
                + seconds(self.config.two_factor.resend_cooldown)
                - now;
            if wait > 0 && previous.record.expires_at > now {
                return Err(Error::rate_limited(wait));
            }
        }
        let purpose = ChallengePurpose::StepUp {
            reason: reason.as_str().to_string(),
        };
        let (challenge, code) = self.new_challenge(&user, purpose, SecondFactor::Email);
        let mail = self.code_mail(
            &user.email,
            code.as_deref(),
            reason.purpose(),
            challenge.expires_at,
        )?;
        self.store
            .put_step_up(&challenge, reason.as_str(), &mail)
            .await?;
        self.mail_queued();
        self.audit(
            Event::TwoFactorCodeSent,
            Subject::user(user.id),
            reason.as_str(),
        )
        .await;
        Ok(CodeSent {
            challenge_id: challenge.id,
            expires_at: challenge.expires_at,
            retry_after: seconds(self.config.two_factor.resend_cooldown),
            mailed: true,
        })
    }

    /// Checks a proof for one operation of `reason`: that reason's step-up code (used up
    /// here), a current TOTP code, or a recovery code. Returns what matched; the caller
    /// spends it ([`Auth::spend`]) in the transaction that makes the change.
    pub(crate) async fn use_step_up(
        &self,
        user: &UserRecord,
        reason: StepUpReason,
        code: Option<&str>,
    ) -> Result<Matched> {
        let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
            return Err(Error::Forbidden);
        };
        let now = self.now();
        self.factor_budget(user, now).await?;
        if let Some(step) = self.totp_step(user, code)? {
            return Ok(Matched::Totp(step));
        }
        if let Some(hash) = self.recovery_match(user, code) {
            return Ok(Matched::Recovery(hash));
        }
        match self.store.step_up(user.id, reason.as_str()).await? {
            // The mailed code's own check counts a failure there.
            Some(current) => self.attempt(&current, user, code).await,
            None => {
                self.factor_failed(user, now).await?;
                Err(Error::InvalidCode)
            }
        }
    }
}
