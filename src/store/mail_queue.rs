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
    mail: &[QueuedMail],
) -> Result<(), UnabortableTransactionError> {
    for m in mail {
        tree.insert(&m.id.to_be_bytes(), encode(&m.record))?;
    }
    Ok(())
}

pub trait MailQueueStore {
    /// A fresh, increasing message id.
    fn next_mail_id(&self) -> Result<u64, StoreError>;
    /// Queues messages that no state change goes with.
    fn enqueue(&self, mail: &[QueuedMail]) -> Result<(), StoreError>;
    /// Messages whose next attempt is due at `now`, oldest first.
    fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<QueuedMail>, StoreError>;
    fn reschedule_mail(&self, mail: &QueuedMail) -> Result<(), StoreError>;
    fn remove_mail(&self, id: u64) -> Result<(), StoreError>;
    fn mail_queue_len(&self) -> usize;
}

impl MailQueueStore for Store {
    fn next_mail_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    fn enqueue(&self, mail: &[QueuedMail]) -> Result<(), StoreError> {
        let _writing = self.writing();
        tx_result(self.mail_queue.transaction(|queue| {
            queue_in(queue, mail)?;
            Ok(())
        }))
    }

    fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<QueuedMail>, StoreError> {
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

    fn reschedule_mail(&self, mail: &QueuedMail) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.mail_queue
            .insert(mail.id.to_be_bytes(), encode(&mail.record))?;
        Ok(())
    }

    fn remove_mail(&self, id: u64) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.mail_queue.remove(id.to_be_bytes())?;
        Ok(())
    }

    fn mail_queue_len(&self) -> usize {
        self.mail_queue.len()
    }
}
