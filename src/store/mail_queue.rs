//! The persistent mail queue. Messages enter it in the same transaction as the change that
//! caused them (see the `mail` parameters of the other stores); the worker in `jobs` sends
//! them and takes them out.

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::keys::MAIL_QUEUE;
use super::records::{MailQueueRecord, QueuedMail, decode, encode};
use super::{Store, StoreError, tx_result};

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
pub trait MailQueueStore: Send + Sync {
    /// Queues messages that no state change goes with. Each is given a fresh, increasing
    /// id, as it is by every operation that queues mail.
    async fn enqueue(&self, mail: &[MailQueueRecord]) -> Result<(), StoreError>;
    /// Messages whose next attempt is due at `now`, oldest first.
    async fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<QueuedMail>, StoreError>;
    async fn reschedule_mail(&self, mail: &QueuedMail) -> Result<(), StoreError>;
    async fn remove_mail(&self, id: u64) -> Result<(), StoreError>;
    /// How many messages are queued.
    async fn mail_queue_len(&self) -> Result<usize, StoreError>;
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

    async fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<QueuedMail>, StoreError> {
        let mut due = Vec::new();
        for entry in self.mail_queue.iter() {
            let (key, value) = entry?;
            let record: MailQueueRecord = decode(MAIL_QUEUE, &value)?;
            if record.next_attempt_at <= now {
                let id = <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Record {
                        tree: MAIL_QUEUE.into(),
                        what: "a key is not 8 bytes".into(),
                    })?;
                due.push(QueuedMail { id, record });
                if due.len() >= limit {
                    break;
                }
            }
        }
        Ok(due)
    }

    async fn reschedule_mail(&self, mail: &QueuedMail) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            self.mail_queue
                .insert(mail.id.to_be_bytes(), encode(&mail.record))?;
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
}
