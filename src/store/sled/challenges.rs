//! Pending second-factor checks: sign-in challenges and step-up codes. A challenge changes
//! only by compare-and-swap, so two guesses racing each other are both counted and a code
//! succeeds at most once.

use crate::store::{ChallengeStore, FactorFailuresRecord, Revision, Versioned};

use super::keys::{
    CHALLENGES, ExpiryKind, FACTOR_FAILURES, STEP_UPS_BY_USER, challenge_by_user_key, step_up_key,
};
use super::mail_queue::queue_in;
use super::records::{ChallengeRecord, MailQueueRecord, decode, encode};
use super::{Store, StoreError, tx_result, uuid_from};
use sled::Transactional;
use uuid::Uuid;

/// sled's revision of stored bytes: the first 8 bytes of their SHA-256.
fn revision_of(raw: &[u8]) -> Revision {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    Revision::new(u64::from_be_bytes(first))
}

#[async_trait::async_trait]
impl ChallengeStore for Store {
    async fn challenge(&self, id: Uuid) -> Result<Option<Versioned<ChallengeRecord>>, StoreError> {
        match self.challenges.get(id.as_bytes())? {
            Some(raw) => Ok(Some(Versioned {
                record: decode(CHALLENGES, &raw)?,
                revision: revision_of(&raw),
            })),
            None => Ok(None),
        }
    }

    async fn put_challenge(
        &self,
        challenge: &ChallengeRecord,
        max_pending: usize,
        mail: &[MailQueueRecord],
    ) -> Result<usize, StoreError> {
        self.durably(|| {
            self.index_expiry(
                ExpiryKind::Challenge,
                challenge.id.as_bytes(),
                challenge.expires_at,
            )?;
            let index = challenge_by_user_key(&challenge.user_id, &challenge.id);
            let record = encode(challenge);
            self.with_account(challenge.user_id, |t, found| {
                let live = Store::live_challenges(t, found)?;
                let over = (live.len() + 1).saturating_sub(max_pending.max(1));
                for (key, _) in live.iter().take(over) {
                    t.challenges.remove(&key[16..])?;
                    t.challenges_by_user.remove(key)?;
                }
                t.challenges
                    .insert(challenge.id.as_bytes(), record.as_slice())?;
                t.challenges_by_user.insert(index.as_slice(), &[])?;
                t.queue(mail)?;
                Ok(over)
            })
        })
        .await
    }

    async fn swap_challenge(
        &self,
        current: &Versioned<ChallengeRecord>,
        next: Option<&ChallengeRecord>,
        mail: &[MailQueueRecord],
    ) -> Result<bool, StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            if let Some(next) = next.filter(|n| n.expires_at != current.record.expires_at) {
                self.index_expiry(ExpiryKind::Challenge, next.id.as_bytes(), next.expires_at)?;
            }
            let key = current.record.id.as_bytes();
            let next = next.map(encode);
            tx_result(
                (&self.challenges, &self.mail_queue).transaction(|(challenges, queue)| {
                    let stored = challenges.get(key)?;
                    if stored.as_deref().map(revision_of) != Some(current.revision) {
                        return Ok(false);
                    }
                    match &next {
                        Some(next) => challenges.insert(key, next.as_slice())?,
                        None => challenges.remove(key)?,
                    };
                    queue_in(queue, mail)?;
                    Ok(true)
                }),
            )
        })
        .await
    }

    async fn put_step_up(
        &self,
        challenge: &ChallengeRecord,
        reason: &str,
        mail: &[MailQueueRecord],
    ) -> Result<(), StoreError> {
        self.durably(|| {
            self.index_expiry(
                ExpiryKind::Challenge,
                challenge.id.as_bytes(),
                challenge.expires_at,
            )?;
            let key = step_up_key(&challenge.user_id, reason);
            let index = challenge_by_user_key(&challenge.user_id, &challenge.id);
            let record = encode(challenge);
            // Under the account's lock, so that a change ending its codes sees this one.
            self.with_account(challenge.user_id, |t, _| {
                if let Some(old) = t.step_ups.get(&key)? {
                    t.challenges.remove(old)?;
                }
                t.step_ups.insert(key.as_slice(), challenge.id.as_bytes())?;
                t.challenges
                    .insert(challenge.id.as_bytes(), record.as_slice())?;
                t.challenges_by_user.insert(index.as_slice(), &[])?;
                t.queue(mail)?;
                Ok(())
            })
        })
        .await
    }

    async fn step_up(
        &self,
        user_id: Uuid,
        reason: &str,
    ) -> Result<Option<Versioned<ChallengeRecord>>, StoreError> {
        match self.step_ups_by_user.get(step_up_key(&user_id, reason))? {
            Some(id) => self.challenge(uuid_from(STEP_UPS_BY_USER, &id)?).await,
            None => Ok(None),
        }
    }

    async fn factor_failures(
        &self,
        user_id: Uuid,
    ) -> Result<Option<FactorFailuresRecord>, StoreError> {
        match self.factor_failures.get(user_id.as_bytes())? {
            Some(raw) => Ok(Some(decode(FACTOR_FAILURES, &raw)?)),
            None => Ok(None),
        }
    }

    async fn record_factor_failure(
        &self,
        user_id: Uuid,
        now: i64,
        window: i64,
    ) -> Result<FactorFailuresRecord, StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            let key = user_id.as_bytes();
            loop {
                let current = self.factor_failures.get(key)?;
                let before: Option<FactorFailuresRecord> = match &current {
                    Some(raw) => Some(decode(FACTOR_FAILURES, raw)?),
                    None => None,
                };
                let after = match before {
                    Some(f) if f.window_start + window > now => FactorFailuresRecord {
                        failures: f.failures.saturating_add(1),
                        ..f
                    },
                    _ => FactorFailuresRecord {
                        window_start: now,
                        failures: 1,
                    },
                };
                let swapped =
                    self.factor_failures
                        .compare_and_swap(key, current, Some(encode(&after)))?;
                if swapped.is_ok() {
                    return Ok(after);
                }
                // Another failure was counted meanwhile: count this one on top of it.
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_cap_a_new_challenge_ends_the_oldest() {
        use crate::domain::records::{ChallengePurpose, SecondFactor};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let user = Uuid::new_v4();
        let made: Vec<ChallengeRecord> = (0..5)
            .map(|n| ChallengeRecord {
                id: Uuid::new_v4(),
                user_id: user,
                purpose: ChallengePurpose::StepUp {
                    reason: "GENERIC".into(),
                },
                method: SecondFactor::Email,
                code_hash: None,
                attempts: 0,
                resends: 0,
                last_sent_at: n,
                expires_at: 1_000,
                stamp: 0,
            })
            .collect();
        let mut ended = Vec::new();
        for c in &made {
            ended.push(store.put_challenge(c, 3, &[]).await.unwrap());
        }
        assert_eq!(ended, [0, 0, 0, 1, 1]);
        for (n, c) in made.iter().enumerate() {
            let live = store.challenge(c.id).await.unwrap().is_some();
            assert_eq!(live, n >= 2, "challenge {n}: the two oldest gave way");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_factor_failures_are_all_counted_and_a_window_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let user = Uuid::new_v4();
        let store = std::sync::Arc::new(store);
        let counters: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..50 {
                        store
                            .record_factor_failure(user, 1_000, 3600)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for counter in counters {
            counter.await.unwrap();
        }
        let counted = store.factor_failures(user).await.unwrap().unwrap();
        assert_eq!(
            counted,
            FactorFailuresRecord {
                window_start: 1_000,
                failures: 400
            }
        );
        let next = store
            .record_factor_failure(user, 4_600, 3600)
            .await
            .unwrap();
        assert_eq!(next.failures, 1, "the window ended");
        assert_eq!(next.window_start, 4_600);
        assert!(
            store
                .factor_failures(Uuid::new_v4())
                .await
                .unwrap()
                .is_none()
        );
    }
}
