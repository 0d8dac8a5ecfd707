//! Changing a known password (with the second factor when it is on) and resetting a
//! forgotten one. Applying either ends the other device sessions, every pending challenge and
//! step-up code, in one transaction, and mails a notice.

use std::sync::Arc;

use minijinja::context;
use uuid::Uuid;

use super::audit::{Event, Subject};
use super::limits::Limit;
use super::secrets::random_token;
use super::sessions::SignedIn;
use super::two_factor::Matched;
use super::two_factor::PendingSignIn;
use super::{Auth, Caller, Origin, iso, passwords, seconds};
use crate::domain::Email;
use crate::domain::records::{ChallengePurpose, MailQueueRecord, ResetCodeRecord, UserRecord};
use crate::error::{Error, Result};
use crate::mail::Template;
use crate::store::{AccountChange, Changed, Ends};

/// Purpose tag of reset codes in the keyed hash.
const RESET_CODE: &str = "password-reset";
/// The step-up slot a pending password change occupies.
const PASSWORD_CHANGE: &str = "PASSWORD_CHANGE";

/// The result of `changePassword`.
#[derive(Debug)]
pub enum ChangeOutcome {
    /// Applied; fresh tokens for the caller's device.
    Changed(Box<SignedIn>),
    /// Waiting for the second factor (`confirmChangePassword2Fa`).
    SecondFactor(Box<PendingSignIn>),
}

impl Auth {
    /// Checks the old password and the policy for the new one, hashes it now, and applies it
    /// at once, or keeps it with a second-factor challenge when 2FA is on.
    pub async fn change_password(
        &self,
        caller: &Caller,
        old_password: String,
        new_password: String,
    ) -> Result<ChangeOutcome> {
        let user = self.profile(caller).await?;
        // A wrong old password counts like a failed sign-in.
        self.check_password(&user, Some(old_password)).await?;
        self.check_new_password(&new_password, &user)?;
        let new_hash = self.passwords.hash(new_password).await?;
        let Some(two_factor) = &user.two_factor else {
            let signed_in = self
                .apply_new_password(&user, new_hash, None, Some(caller.session_id), "changed")
                .await?;
            return signed_in
                .map(|s| ChangeOutcome::Changed(Box::new(s)))
                .ok_or(Error::InvalidToken);
        };
        let method = two_factor.method;
        let purpose = ChallengePurpose::PasswordChange {
            new_hash,
            session_id: caller.session_id,
        };
        let (challenge, code) = self.new_challenge(&user, purpose, method);
        let mail = self.code_mail(
            &user.email,
            code.as_deref(),
            "change your password",
            challenge.expires_at,
        )?;
        // A new change replaces one still waiting.
        self.store
            .put_step_up(&challenge, PASSWORD_CHANGE, &mail)
            .await?;
        self.mail_queued();
        Ok(ChangeOutcome::SecondFactor(Box::new(PendingSignIn {
            challenge_id: challenge.id,
            user,
            method,
            expires_at: challenge.expires_at,
            // A password change is confirmed with a code only.
            passkey_options: None,
        })))
    }

    /// Applies the waiting password change with its second-factor code.
    pub async fn confirm_change_password(&self, caller: &Caller, code: &str) -> Result<SignedIn> {
        let user = self.profile(caller).await?;
        let current = self
            .store
            .step_up(user.id, PASSWORD_CHANGE)
            .await?
            .ok_or(Error::InvalidCode)?;
        let ChallengePurpose::PasswordChange {
            new_hash,
            session_id,
        } = current.record.purpose.clone()
        else {
            return Err(Error::InvalidCode);
        };
        if session_id != caller.session_id {
            // Asked for on another device: confirm it there.
            return Err(Error::InvalidCode);
        }
        if current.record.stamp != user.stamp {
            return Err(Error::InvalidCode);
        }
        let matched = self.attempt(&current, &user, code).await?;
        self.apply_new_password(
            &user,
            new_hash,
            Some(matched),
            Some(caller.session_id),
            "changed",
        )
        .await?
        .ok_or(Error::InvalidToken)
    }

    /// Mails the waiting password change's code again.
    pub async fn resend_change_password(
        &self,
        caller: &Caller,
        origin: &Origin,
    ) -> Result<super::CodeSent> {
        self.limit_ip(Limit::CodeSendsPerIp, origin.ip).await?;
        let user = self.profile(caller).await?;
        let current = self
            .store
            .step_up(user.id, PASSWORD_CHANGE)
            .await?
            .ok_or(Error::InvalidCode)?;
        self.resend_challenge(&current, &user, "change your password")
            .await
    }

    /// Writes the new password (spending `matched`, the second factor that allowed it) and
    /// ends what it must, in one transaction; keeps `keep` (the caller's device) with fresh
    /// tokens.
    async fn apply_new_password(
        &self,
        user: &UserRecord,
        new_hash: String,
        matched: Option<Matched>,
        keep: Option<Uuid>,
        how: &str,
    ) -> Result<Option<SignedIn>> {
        let now = self.now();
        let kept = match keep {
            Some(id) => {
                let mut session = self.store.session(id).await?.ok_or(Error::InvalidToken)?;
                // A new generation: the token the device held before is now a reused one.
                session.refresh_generation += 1;
                let (refresh_token, refresh_hash) = super::sessions::issue_refresh_token(
                    &self.secrets,
                    session.id,
                    session.refresh_generation,
                );
                session.refresh_hash = refresh_hash;
                session.refresh_expires_at = self.refresh_expiry(session.created_at, now);
                session.last_seen_at = now;
                Some((session, refresh_token))
            }
            None => None,
        };
        let notice = self.password_notice(user, how, now)?;
        let how_it_ends = AccountChange {
            rewrite_session: kept.as_ref().map(|(s, _)| s),
            mail: notice.as_slice(),
            ..AccountChange::ending(Ends::Everything { keep })
        };
        let changed = self
            .store
            .change_user(user.id, how_it_ends, |u| {
                if let Some(matched) = &matched {
                    Self::spend(u, matched)?;
                }
                u.password_hash = new_hash.clone();
                Ok(())
            })
            .await?;
        let (user, ()) = self.changed(changed)?;
        self.mail_queued();
        self.audit(Event::PasswordChanged, Subject::user(user.id), "ok")
            .await;
        kept.map(|(session, refresh)| self.hand_out(user, session, refresh, now))
            .transpose()
    }

    /// The policy for a new password of `user`.
    fn check_new_password(&self, password: &str, user: &UserRecord) -> Result<()> {
        passwords::check_policy(
            password,
            self.config.passwords.min_length,
            &user.email,
            &user.username,
        )
    }

    fn password_notice(
        &self,
        user: &UserRecord,
        how: &str,
        now: i64,
    ) -> Result<Option<MailQueueRecord>> {
        self.queue_mail(
            &user.email,
            Template::PasswordChanged,
            context! {
                how => how,
                when => iso(now),
                reset_link => self.page("forgot-password").to_string(),
            },
        )
    }

    /// Starts a reset for the account of `email`, if there is one, within the per-address
    /// and per-IP limits. The answer never depends on the account: the lookup, the code and
    /// the mail happen after the caller has its answer.
    pub async fn forgot_password(self: &Arc<Self>, email: &Email, origin: &Origin) -> Result<()> {
        self.limit_ip(Limit::ForgotPasswordPerIp, origin.ip).await?;
        self.limit_address(Limit::ForgotPasswordPerAddress, email.as_str())
            .await?;
        let auth = Arc::clone(self);
        let email = email.clone();
        self.tasks.spawn(async move {
            if let Err(e) = auth.send_reset_code(&email).await {
                tracing::error!(error = %e, "forgotten-password request failed");
            }
        });
        Ok(())
    }

    async fn send_reset_code(&self, email: &Email) -> Result<()> {
        let Some(user) = self.store.user_by_email(email.as_str()).await? else {
            return Ok(());
        };
        let ttl = self.config.passwords.reset_ttl;
        self.mail_reset_code(&user, Template::PasswordReset, ttl)
            .await
    }

    /// Stores a fresh reset code for `user` (replacing the one before) and mails it with
    /// `template` (`PasswordReset`, or `Invite` for an account an operator made).
    pub(crate) async fn mail_reset_code(
        &self,
        user: &crate::domain::records::UserRecord,
        template: Template,
        ttl: std::time::Duration,
    ) -> Result<()> {
        let code = random_token::<16>();
        let record = ResetCodeRecord {
            user_id: user.id,
            email: user.email.clone(),
            expires_at: self.now() + seconds(ttl),
        };
        let mail = self.queue_mail(
            &user.email,
            template,
            context! {
                link => self.link("reset-password", &code),
                code => code.clone(),
                expires_at => iso(record.expires_at),
            },
        )?;
        self.store
            .put_reset_code(
                &self.secrets.keyed_hash(RESET_CODE, &code),
                &record,
                mail.as_slice(),
            )
            .await?;
        self.mail_queued();
        Ok(())
    }

    /// Sets a new password with a mailed reset code. Every device session ends, pending
    /// challenges die, 2FA stays as it was, and the address counts as verified.
    pub async fn confirm_password_reset(&self, code: &str, new_password: String) -> Result<()> {
        let hash = self.secrets.keyed_hash(RESET_CODE, code.trim());
        let record = self
            .store
            .reset_code(&hash)
            .await?
            .ok_or(Error::InvalidCode)?;
        if record.expires_at <= self.now() {
            return Err(Error::CodeExpired);
        }
        let user = self
            .store
            .user(record.user_id)
            .await?
            .filter(|u| u.email == record.email)
            .ok_or(Error::InvalidCode)?;
        self.check_new_password(&new_password, &user)?;
        let new_hash = self.passwords.hash(new_password).await?;
        let now = self.now();
        let notice = self.password_notice(&user, "reset", now)?;
        let how = AccountChange {
            reset_code: Some(&hash),
            mail: notice.as_slice(),
            ..AccountChange::ending(Ends::Everything { keep: None })
        };
        let changed = self
            .store
            .change_user(user.id, how, |u| {
                // The address the code was mailed to must still be the account's.
                if u.email != record.email {
                    return Err(Error::InvalidCode);
                }
                u.password_hash = new_hash.clone();
                // The reset mail reached this address: that proves it.
                u.email_verified = true;
                Ok(())
            })
            .await?;
        if let Changed::Missing = changed {
            // Used meanwhile by another request, or the account is gone.
            return Err(Error::InvalidCode);
        }
        self.changed(changed)?;
        self.mail_queued();
        self.audit(Event::PasswordReset, Subject::user(user.id), "ok")
            .await;
        Ok(())
    }
}
