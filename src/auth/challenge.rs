//! A second-factor challenge's life, as a pure state machine over its record: pending while
//! it has tries left, dead once its wrong tries reach the limit (until it expires), and gone
//! once a code matched or its time ran out. The use cases in `two_factor` and
//! `password_change` store what these functions decide, by compare-and-swap.

use crate::store::records::ChallengeRecord;

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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::store::records::{ChallengePurpose, SecondFactor};

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
