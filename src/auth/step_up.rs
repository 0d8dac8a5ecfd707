//! Step-up codes: one mailed code (or a TOTP or recovery code) for one sensitive operation
//! of a signed-in user.

use uuid::Uuid;

use super::audit::{Event, Subject};
use super::factors::Matched;
use super::limits::Limit;
use super::{Auth, Caller, Origin, seconds};
use crate::domain::records::{ChallengePurpose, SecondFactor, UserRecord};
use crate::error::{Error, Result};

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
