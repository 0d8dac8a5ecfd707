//! Pending second-factor checks. A challenge's `revision` column moves on with every write,
//! and a change is `UPDATE … WHERE revision = $read`: of two guesses racing, both are
//! counted and a code succeeds at most once, on any instance.

use uuid::Uuid;

use crate::domain::records::{ChallengeRecord, MailQueueRecord};
use crate::store::{ChallengeStore, FactorFailuresRecord, Revision, StoreError, Versioned};

use super::accounts::lock_user;
use super::{Store, db_error, json, record, transaction};

fn versioned(row: &tokio_postgres::Row) -> Result<Versioned<ChallengeRecord>, StoreError> {
    Ok(Versioned {
        record: record(row, 0, "challenges")?,
        revision: Revision::new(row.get::<_, i64>(1).cast_unsigned()),
    })
}

/// Stores a new challenge (a step-up code of `reason`, or a sign-in's with none).
async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    challenge: &ChallengeRecord,
    reason: Option<&str>,
) -> Result<(), super::Fail> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO challenges
             (id, user_id, step_up_reason, last_sent_at, expires_at, revision, data)
             VALUES ($1, $2, $3, $4, $5, 0, $6)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &challenge.id,
            &challenge.user_id,
            &reason,
            &challenge.last_sent_at,
            &challenge.expires_at,
            &json(challenge),
        ],
    )
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl ChallengeStore for Store {
    async fn challenge(&self, id: Uuid) -> Result<Option<Versioned<ChallengeRecord>>, StoreError> {
        let client = self.client().await?;
        let select = client
            .prepare_cached("SELECT data, revision FROM challenges WHERE id = $1")
            .await
            .map_err(db_error)?;
        let row = client.query_opt(&select, &[&id]).await.map_err(db_error)?;
        row.map(|row| versioned(&row)).transpose()
    }

    async fn put_challenge(
        &self,
        challenge: &ChallengeRecord,
        max_pending: usize,
        mail: &[MailQueueRecord],
    ) -> Result<usize, StoreError> {
        transaction!(self, |tx| {
            // Under the account's lock, so that a change ending its challenges sees this one.
            lock_user(&tx, challenge.user_id).await?;
            let live = tx
                .prepare_cached(
                    "SELECT id FROM challenges WHERE user_id = $1
                     ORDER BY last_sent_at, expires_at, id",
                )
                .await?;
            let live: Vec<Uuid> = tx
                .query(&live, &[&challenge.user_id])
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let over = (live.len() + 1).saturating_sub(max_pending.max(1));
            if over > 0 {
                let oldest: Vec<Uuid> = live.into_iter().take(over).collect();
                tx.execute("DELETE FROM challenges WHERE id = ANY($1)", &[&oldest])
                    .await?;
            }
            insert(&tx, challenge, None).await?;
            Store::queue_in(&tx, mail).await?;
            over
        })
    }

    async fn swap_challenge(
        &self,
        current: &Versioned<ChallengeRecord>,
        next: Option<&ChallengeRecord>,
        mail: &[MailQueueRecord],
    ) -> Result<bool, StoreError> {
        let id = current.record.id;
        let revision = current.revision.get().cast_signed();
        transaction!(self, |tx| {
            let swapped = match next {
                Some(next) => {
                    let update = tx
                        .prepare_cached(
                            "UPDATE challenges
                             SET data = $3, last_sent_at = $4, expires_at = $5,
                                 revision = revision + 1
                             WHERE id = $1 AND revision = $2",
                        )
                        .await?;
                    tx.execute(
                        &update,
                        &[
                            &id,
                            &revision,
                            &json(next),
                            &next.last_sent_at,
                            &next.expires_at,
                        ],
                    )
                    .await?
                }
                None => {
                    let delete = tx
                        .prepare_cached("DELETE FROM challenges WHERE id = $1 AND revision = $2")
                        .await?;
                    tx.execute(&delete, &[&id, &revision]).await?
                }
            };
            if swapped == 0 {
                // Changed in between: nothing done, no mail.
                return Ok(false);
            }
            Store::queue_in(&tx, mail).await?;
            true
        })
    }

    async fn put_step_up(
        &self,
        challenge: &ChallengeRecord,
        reason: &str,
        mail: &[MailQueueRecord],
    ) -> Result<(), StoreError> {
        transaction!(self, |tx| {
            lock_user(&tx, challenge.user_id).await?;
            tx.execute(
                "DELETE FROM challenges WHERE user_id = $1 AND step_up_reason = $2",
                &[&challenge.user_id, &reason],
            )
            .await?;
            insert(&tx, challenge, Some(reason)).await?;
            Store::queue_in(&tx, mail).await?;
        })
    }

    async fn step_up(
        &self,
        user_id: Uuid,
        reason: &str,
    ) -> Result<Option<Versioned<ChallengeRecord>>, StoreError> {
        let client = self.client().await?;
        let select = client
            .prepare_cached(
                "SELECT data, revision FROM challenges WHERE user_id = $1 AND step_up_reason = $2",
            )
            .await
            .map_err(db_error)?;
        let row = client
            .query_opt(&select, &[&user_id, &reason])
            .await
            .map_err(db_error)?;
        row.map(|row| versioned(&row)).transpose()
    }

    async fn factor_failures(
        &self,
        user_id: Uuid,
    ) -> Result<Option<FactorFailuresRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT window_start, failures FROM factor_failures WHERE user_id = $1",
                &[&user_id],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|row| FactorFailuresRecord {
            window_start: row.get(0),
            failures: u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX),
        }))
    }

    async fn record_factor_failure(
        &self,
        user_id: Uuid,
        now: i64,
        window: i64,
    ) -> Result<FactorFailuresRecord, StoreError> {
        let client = self.client().await?;
        // One statement: concurrent counts queue on the row and each adds one.
        let count = client
            .prepare_cached(
                "INSERT INTO factor_failures AS f (user_id, window_start, failures)
                 VALUES ($1, $2, 1)
                 ON CONFLICT (user_id) DO UPDATE SET
                   window_start = CASE WHEN f.window_start + $3 > $2
                                  THEN f.window_start ELSE $2 END,
                   failures = CASE WHEN f.window_start + $3 > $2
                              THEN least(f.failures + 1, $4) ELSE 1 END
                 RETURNING window_start, failures",
            )
            .await
            .map_err(db_error)?;
        let row = client
            .query_one(&count, &[&user_id, &now, &window, &i64::from(u32::MAX)])
            .await
            .map_err(db_error)?;
        Ok(FactorFailuresRecord {
            window_start: row.get(0),
            failures: u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX),
        })
    }
}
