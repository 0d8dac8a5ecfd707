//! A second-factor challenge's life, as a pure state machine over its record: pending while
//! it has tries left, dead once its wrong tries reach the limit (until it expires), and gone
//! once a code matched or its time ran out. The use cases in `two_factor` and
//! `password_change` store what these functions decide, by compare-and-swap.

use minijinja::context;
use uuid::Uuid;

use super::audit::{Event, Subject};
use super::factors::{MAILED_CODE, Matched, six_digits};
use super::two_factor::CodeSent;
use super::{Auth, iso, seconds};
use crate::domain::records::{
    ChallengePurpose, ChallengeRecord, MailQueueRecord, SecondFactor, UserRecord,
};
use crate::error::{Error, Result};
use crate::mail::Template;
use crate::store::Versioned;

/// Where a challenge stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeState {
    /// A code may be tried.
    Pending,
    /// Its wrong tries reached the limit: no code works until it expires, in `retry_after`
    /// seconds; a new sign-in starts a new challenge.
    Dead { retry_after: i64 },
    /// Past its time: no code works, and it may be removed.
    Expired,
}

impl ChallengeState {
    /// Ok while a code may be tried; otherwise the refusal a client gets: `CODE_EXPIRED`, or
    /// `TOO_MANY_ATTEMPTS` with the seconds until the dead challenge expires.
    pub fn usable(self) -> Result<()> {
        match self {
            ChallengeState::Pending => Ok(()),
            ChallengeState::Dead { retry_after } => Err(Error::too_many_attempts(retry_after)),
            ChallengeState::Expired => Err(Error::CodeExpired),
        }
    }
}

impl ChallengeRecord {
    /// Where the challenge stands at `now`, given the wrong tries allowed.
    pub fn state(&self, now: i64, max_attempts: u32) -> ChallengeState {
        if self.expires_at <= now {
            ChallengeState::Expired
        } else if self.attempts >= max_attempts {
            ChallengeState::Dead {
                retry_after: self.expires_at - now,
            }
        } else {
            ChallengeState::Pending
        }
    }

    /// Whether another code may be mailed at `now`: not within `cooldown` seconds of the
    /// last, nor past `max_resends`. `Err` holds the seconds to wait.
    pub fn may_resend(&self, now: i64, cooldown: i64, max_resends: u32) -> Result<(), i64> {
        let wait = self.last_sent_at + cooldown - now;
        if wait > 0 {
            return Err(wait);
        }
        if self.resends >= max_resends {
            return Err(self.expires_at - now);
        }
        Ok(())
    }

    /// What a guess leaves of the challenge: nothing when it matched (a code works once),
    /// otherwise the challenge with one more wrong try.
    pub fn after_guess(&self, matched: bool) -> Option<ChallengeRecord> {
        (!matched).then(|| ChallengeRecord {
            attempts: self.attempts + 1,
            ..self.clone()
        })
    }

    /// The challenge with a new mailed code, sent at `now` and good for `ttl` seconds.
    pub fn resent(&self, code_hash: [u8; 32], now: i64, ttl: i64) -> ChallengeRecord {
        ChallengeRecord {
            code_hash: Some(code_hash),
            resends: self.resends + 1,
            last_sent_at: now,
            expires_at: now + ttl,
            ..self.clone()
        }
    }
}

impl Auth {
    /// A new challenge with a fresh mailed code (EMAIL) or none (TOTP).
    pub(crate) fn new_challenge(
        &self,
        user: &UserRecord,
        purpose: ChallengePurpose,
        method: SecondFactor,
    ) -> (ChallengeRecord, Option<String>) {
        let now = self.now();
        let code = (method == SecondFactor::Email).then(six_digits);
        let record = ChallengeRecord {
            id: Uuid::new_v4(),
            user_id: user.id,
            purpose,
            method,
            code_hash: code
                .as_ref()
                .map(|c| self.secrets.keyed_hash(MAILED_CODE, c)),
            attempts: 0,
            resends: 0,
            last_sent_at: now,
            expires_at: now + seconds(self.config.two_factor.code_ttl),
            stamp: user.stamp,
        };
        (record, code)
    }

    /// The mail carrying a code, if there is one (TOTP challenges have none).
    pub(crate) fn code_mail(
        &self,
        to: &str,
        code: Option<&str>,
        purpose: &str,
        expires_at: i64,
    ) -> Result<Vec<MailQueueRecord>> {
        let Some(code) = code else {
            return Ok(Vec::new());
        };
        let mail = self.queue_mail(
            to,
            Template::TwoFactorCode,
            context! { code => code, purpose => purpose, expires_at => iso(expires_at) },
        )?;
        Ok(mail.into_iter().collect())
    }

    /// Checks `code` against a challenge: counts a wrong try, kills the challenge at the
    /// limit, and removes it on success, all by compare-and-swap so it succeeds once.
    pub(crate) async fn attempt(
        &self,
        current: &Versioned<ChallengeRecord>,
        user: &UserRecord,
        code: &str,
    ) -> Result<Matched> {
        let c = &current.record;
        let now = self.now();
        let state = c.state(now, self.config.two_factor.max_attempts);
        if state == ChallengeState::Expired {
            self.store.swap_challenge(current, None, &[]).await?;
        }
        state.usable()?;
        self.factor_budget(user, now).await?;
        let matched = if c.method == SecondFactor::Email && self.mailed_code_matches(c, code) {
            Some(Matched::Mailed)
        } else if let Some(step) = self.totp_step(user, code)? {
            Some(Matched::Totp(step))
        } else {
            self.recovery_match(user, code).map(Matched::Recovery)
        };
        let next = c.after_guess(matched.is_some());
        if !self
            .store
            .swap_challenge(current, next.as_ref(), &[])
            .await?
        {
            // Another try changed the challenge in between. This one neither counts nor
            // succeeds, so racing guesses gain nothing.
            return Err(Error::InvalidCode);
        }
        if matched.is_none() {
            self.factor_failed(user, now).await?;
        }
        matched.ok_or(Error::InvalidCode)
    }

    /// `TOO_MANY_ATTEMPTS` while the account's second-factor budget is spent: every code on
    /// every path, even a right one, until its window ends.
    pub(crate) async fn factor_budget(&self, user: &UserRecord, now: i64) -> Result<()> {
        let window = seconds(self.config.two_factor.failure_window);
        let max = self.config.two_factor.max_failures_per_account;
        match self.store.factor_failures(user.id).await? {
            Some(f) if f.window_start + window > now && f.failures >= max => {
                Err(Error::too_many_attempts(f.window_start + window - now))
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong code against the account (stored: a restart does not forget it). The
    /// failure that spends the budget mails the owner. The caller flushes.
    pub(crate) async fn factor_failed(&self, user: &UserRecord, now: i64) -> Result<()> {
        let window = seconds(self.config.two_factor.failure_window);
        let max = self.config.two_factor.max_failures_per_account;
        let f = self
            .store
            .record_factor_failure(user.id, now, window)
            .await?;
        if f.failures == max {
            let notice = self.queue_mail(
                &user.email,
                Template::SecondFactorLocked,
                context! {
                    failures => f.failures,
                    until => iso(f.window_start + window),
                    reset_link => self.page("forgot-password").to_string(),
                },
            )?;
            self.store.enqueue(notice.as_slice()).await?;
            self.mail_queued();
            self.audit(
                Event::TwoFactorRefused,
                Subject::user(user.id),
                "budget_spent",
            )
            .await;
        }
        Ok(())
    }

    /// Mails a fresh code for a live challenge, replacing the old one, within the cooldown
    /// and the per-challenge cap. A TOTP challenge mails nothing.
    pub(crate) async fn resend_challenge(
        &self,
        current: &Versioned<ChallengeRecord>,
        user: &UserRecord,
        purpose: &str,
    ) -> Result<CodeSent> {
        let c = &current.record;
        let now = self.now();
        c.state(now, self.config.two_factor.max_attempts).usable()?;
        if c.method == SecondFactor::Totp {
            return Ok(CodeSent {
                challenge_id: c.id,
                expires_at: c.expires_at,
                retry_after: 0,
                mailed: false,
            });
        }
        let tf = &self.config.two_factor;
        c.may_resend(now, seconds(tf.resend_cooldown), tf.max_resends)
            .map_err(Error::rate_limited)?;
        let code = six_digits();
        let next = c.resent(
            self.secrets.keyed_hash(MAILED_CODE, &code),
            now,
            seconds(tf.code_ttl),
        );
        let mail = self.code_mail(&user.email, Some(&code), purpose, next.expires_at)?;
        if !self
            .store
            .swap_challenge(current, Some(&next), &mail)
            .await?
        {
            return Err(Error::rate_limited(1));
        }
        self.mail_queued();
        Ok(CodeSent {
            challenge_id: c.id,
            expires_at: next.expires_at,
            retry_after: seconds(self.config.two_factor.resend_cooldown),
            mailed: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::records::{ChallengePurpose, SecondFactor};

    /// Made at 1,000, good until 1,600, no wrong try and no resend yet.
    fn challenge() -> ChallengeRecord {
        ChallengeRecord {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            purpose: ChallengePurpose::StepUp {
                reason: "GENERIC".into(),
            },
            method: SecondFactor::Email,
            code_hash: Some([1; 32]),
            attempts: 0,
            resends: 0,
            last_sent_at: 1_000,
            expires_at: 1_600,
            stamp: 0,
        }
    }

    #[test]
    fn a_challenge_is_pending_until_its_time_runs_out() {
        let c = challenge();
        assert_eq!(c.state(1_000, 5), ChallengeState::Pending);
        assert_eq!(c.state(1_599, 5), ChallengeState::Pending);
        assert_eq!(c.state(1_600, 5), ChallengeState::Expired);
        assert_eq!(c.state(9_999, 5), ChallengeState::Expired);
    }

    #[test]
    fn wrong_guesses_count_until_the_challenge_is_dead_and_a_right_one_uses_it_up() {
        let mut c = challenge();
        for tried in 1..=5 {
            c = c
                .after_guess(false)
                .expect("a wrong guess keeps the challenge");
            assert_eq!(c.attempts, tried);
        }
        assert_eq!(c.state(1_100, 5), ChallengeState::Dead { retry_after: 500 });
        assert_eq!(
            c.state(1_600, 5),
            ChallengeState::Expired,
            "dead until it expires"
        );
        assert!(challenge().after_guess(true).is_none(), "a code works once");
    }

    #[test]
    fn only_a_pending_challenge_is_usable_and_the_others_say_why() {
        assert!(ChallengeState::Pending.usable().is_ok());
        let dead = ChallengeState::Dead { retry_after: 500 }
            .usable()
            .unwrap_err();
        assert_eq!(dead.code(), Error::too_many_attempts(500).code());
        let expired = ChallengeState::Expired.usable().unwrap_err();
        assert_eq!(expired.code(), Error::CodeExpired.code());
    }

    #[test]
    fn a_resend_waits_for_the_cooldown_and_stops_at_the_cap() {
        let c = challenge();
        assert_eq!(c.may_resend(1_010, 60, 3), Err(50));
        assert_eq!(c.may_resend(1_060, 60, 3), Ok(()));
        let again = c.resent([2; 32], 1_060, 600);
        assert_eq!(again.resends, 1);
        assert_eq!(again.code_hash, Some([2; 32]));
        assert_eq!(again.expires_at, 1_660, "a new code has its own time");
        assert_eq!(again.attempts, c.attempts, "wrong tries are not forgiven");
        let capped = ChallengeRecord {
            resends: 3,
            ..again
        };
        assert_eq!(
            capped.may_resend(1_200, 60, 3),
            Err(460),
            "until it expires"
        );
    }
}
