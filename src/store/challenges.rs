//! Pending second-factor checks: sign-in challenges and step-up codes. A challenge changes
//! only by compare-and-swap, so two guesses racing each other are both counted and a code
//! succeeds at most once.

use super::*;
use crate::domain::records::*;
use uuid::Uuid;

/// A record together with the revision it was read at, for a later compare-and-swap.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub record: T,
    pub revision: Revision,
}

/// Which state of a record was read: opaque to the use cases, which only hand it back.
/// Each backend says what it is (sled: a digest of the stored bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision(u64);

impl Revision {
    pub fn new(value: u64) -> Revision {
        Revision(value)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// `factor_failures`: an account's wrong second-factor codes in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FactorFailuresRecord {
    /// When the window of the count began (Unix seconds): the first failure in it.
    pub window_start: i64,
    pub failures: u32,
}

#[async_trait::async_trait]
pub trait ChallengeStore: Send + Sync {
    async fn challenge(&self, id: Uuid) -> Result<Option<Versioned<ChallengeRecord>>, StoreError>;
    /// Stores a new challenge and queues `mail`, under the account's lock. Past `max_pending`
    /// live challenges of the user, the oldest end; returns how many ended.
    async fn put_challenge(
        &self,
        challenge: &ChallengeRecord,
        max_pending: usize,
        mail: &[MailQueueRecord],
    ) -> Result<usize, StoreError>;
    /// Replaces (or with `None` removes) the challenge if it is still as it was read, and
    /// then queues `mail`. False (and nothing done) if it changed in between.
    async fn swap_challenge(
        &self,
        current: &Versioned<ChallengeRecord>,
        next: Option<&ChallengeRecord>,
        mail: &[MailQueueRecord],
    ) -> Result<bool, StoreError>;
    /// Stores a step-up challenge as the one live code of its user and reason.
    async fn put_step_up(
        &self,
        challenge: &ChallengeRecord,
        reason: &str,
        mail: &[MailQueueRecord],
    ) -> Result<(), StoreError>;
    async fn step_up(
        &self,
        user_id: Uuid,
        reason: &str,
    ) -> Result<Option<Versioned<ChallengeRecord>>, StoreError>;
    /// The account's wrong second-factor codes, if any were counted.
    async fn factor_failures(
        &self,
        user_id: Uuid,
    ) -> Result<Option<FactorFailuresRecord>, StoreError>;
    /// Counts one wrong code at `now`, in a window of `window` seconds (a new one once the
    /// last has passed), atomically against concurrent counts. Returns the count after.
    async fn record_factor_failure(
        &self,
        user_id: Uuid,
        now: i64,
        window: i64,
    ) -> Result<FactorFailuresRecord, StoreError>;
}
