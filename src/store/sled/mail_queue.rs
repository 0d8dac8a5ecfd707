//! The persistent mail queue. Messages enter it in the same transaction as the change that
//! caused them (see the `mail` parameters of the other stores); the worker in `jobs` sends
//! them and takes them out.

use crate::store::MailQueueStore;

use super::keys::MAIL_QUEUE;
use super::records::{MailQueueRecord, QueuedMail, decode, encode};
use super::{Store, StoreError, tx_result};
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

/// Inserts `mail` inside a running transaction.
pub(super) fn queue_in(
    tree: &TransactionalTree,
    mail: &[MailQueueRecord],
) -> Result<(), UnabortableTransactionError> {
    for m in mail {
        let id = tree
            .generate_id()
            .map_err(UnabortableTransactionError::Storage)?;
        tree.insert(&id.to_be_bytes(), encode(m))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MailQueueStore for Store {
    async fn enqueue(&self, mail: &[MailQueueRecord]) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            tx_result(self.mail_queue.transaction(|queue| {
                queue_in(queue, mail)?;
                Ok(())
            }))
        })
        .await
    }

    async fn claim_mail(
        &self,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let claim = || {
            let _writing = self.writing();
            let mut claimed = Vec::new();
            for entry in self.mail_queue.iter() {
                if claimed.len() >= limit {
                    break;
                }
                let (key, value) = entry?;
                let mut record: MailQueueRecord = decode(MAIL_QUEUE, &value)?;
                if record.next_attempt_at > now {
                    continue;
                }
                let id = <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| super::corrupt(MAIL_QUEUE, "a key is not 8 bytes"))?;
                record.next_attempt_at = now.saturating_add(lease);
                // Lost to another claim (or taken out) meanwhile: not this caller's.
                let swapped =
                    self.mail_queue
                        .compare_and_swap(&key, Some(&value), Some(encode(&record)))?;
                if swapped.is_ok() {
                    claimed.push(QueuedMail { id, record });
                }
            }
            Ok(claimed)
        };
        // A claim that found nothing due wrote nothing: the worker's every idle pass ends so.
        self.durably_if(claim, |claimed| !claimed.is_empty()).await
    }

    async fn reschedule_mail(&self, mail: &QueuedMail) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            let record = encode(&mail.record);
            self.mail_queue
                .fetch_and_update(mail.id.to_be_bytes(), |old| old.map(|_| record.clone()))?;
            Ok(())
        })
        .await
    }

    async fn remove_mail(&self, id: u64) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            self.mail_queue.remove(id.to_be_bytes())?;
            Ok(())
        })
        .await
    }

    async fn mail_queue_len(&self) -> Result<usize, StoreError> {
        Ok(self.mail_queue.len())
    }

    async fn queued_mail(&self) -> Result<Vec<QueuedMail>, StoreError> {
        self.mail_queue
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let id = <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| super::corrupt(MAIL_QUEUE, "a key is not 8 bytes"))?;
                Ok(QueuedMail {
                    id,
                    record: decode(MAIL_QUEUE, &value)?,
                })
            })
            .collect()
    }
}
