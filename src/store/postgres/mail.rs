//! The shared mail queue. A claim is one statement, `FOR UPDATE SKIP LOCKED`, that moves
//! each claimed message's next attempt on by the lease: no two instances claim a message
//! at once, and one that dies holding a claim leaves it to be claimed again when the lease
//! ends.

use crate::domain::records::{MailQueueRecord, QueuedMail};
use crate::store::{MailQueueStore, StoreError};

use super::{Store, big, db_error, transaction};

#[async_trait::async_trait]
impl MailQueueStore for Store {
    async fn enqueue(&self, mail: &[MailQueueRecord]) -> Result<(), StoreError> {
        transaction!(self, |tx| {
            Store::queue_in(&tx, mail).await?;
        })
    }

    async fn claim_mail(
        &self,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let client = self.client().await?;
        let claim = client
            .prepare_cached(
                "WITH due AS (
                     SELECT id FROM mail_queue WHERE next_attempt_at <= $1
                     ORDER BY id LIMIT $3
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE mail_queue m SET next_attempt_at = $2
                 FROM due WHERE m.id = due.id
                 RETURNING m.id, m.attempts, m.next_attempt_at, m.created_at, m.sealed",
            )
            .await
            .map_err(db_error)?;
        let rows = client
            .query(&claim, &[&now, &now.saturating_add(lease), &big(limit)])
            .await
            .map_err(db_error)?;
        let mut claimed: Vec<QueuedMail> = rows.iter().map(queued).collect();
        claimed.sort_by_key(|m| m.id);
        Ok(claimed)
    }

    async fn reschedule_mail(&self, mail: &QueuedMail) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mail_queue SET attempts = $2, next_attempt_at = $3 WHERE id = $1",
                &[
                    &mail.id.cast_signed(),
                    &i64::from(mail.record.attempts),
                    &mail.record.next_attempt_at,
                ],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn remove_mail(&self, id: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM mail_queue WHERE id = $1", &[&id.cast_signed()])
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn queued_mail(&self) -> Result<Vec<QueuedMail>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, attempts, next_attempt_at, created_at, sealed FROM mail_queue
                 ORDER BY id",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(queued).collect())
    }

    async fn mail_queue_len(&self) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM mail_queue", &[])
            .await
            .map_err(db_error)?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}

/// A row of `id, attempts, next_attempt_at, created_at, sealed`.
fn queued(row: &tokio_postgres::Row) -> QueuedMail {
    QueuedMail {
        id: row.get::<_, i64>(0).cast_unsigned(),
        record: MailQueueRecord {
            attempts: u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX),
            next_attempt_at: row.get(2),
            created_at: row.get(3),
            sealed: row.get(4),
        },
    }
}
