//! Abuse limits: events counted per key in a window (sign-ins per network, notices per
//! address), and the wait an account serves after failed sign-ins. A backend that several
//! instances share keeps them shared, so that N instances do not multiply an attacker's
//! budget; the second-factor failures are [`ChallengeStore::record_factor_failure`].

use crate::limits::{Limit, Refused};

use super::*;

#[async_trait::async_trait]
pub trait LimitStore: Send + Sync {
    /// Counts one event of `limit` for `key` at `now`: `Err(Refused)` past the limit's
    /// budget in its window (the event is then not counted).
    async fn hit_limit(
        &self,
        limit: Limit,
        key: &str,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError>;
    /// `Err(Refused)` while the account of `email` waits after failed sign-ins.
    async fn check_lockout(&self, email: &str, now: i64)
    -> Result<Result<(), Refused>, StoreError>;
    /// Counts a failed sign-in (or password check) of the account of `email`.
    async fn record_sign_in_failure(&self, email: &str, now: i64) -> Result<(), StoreError>;
    /// A sign-in of `email` succeeded: its failures are forgotten.
    async fn record_sign_in_success(&self, email: &str) -> Result<(), StoreError>;
    /// Forgets windows and waits that have ended; returns how many.
    async fn prune_limits(&self, now: i64) -> Result<usize, StoreError>;
}
