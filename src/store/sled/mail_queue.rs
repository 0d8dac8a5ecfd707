//! The persistent mail queue. Messages enter it in the same transaction as the change that
//! caused them (see the `mail` parameters of the other stores); the worker in `jobs` sends
//! them and takes them out.

#[allow(unused_imports)]
use crate::store::{
    AccountChange, AuditRecord, AuditStore, BackupSummary, ChallengeStore, Changed, CreateOutcome,
    Ends, FactorFailuresRecord, LegacyRefresh, MailQueueStore, PasswordStore, Revision,
    RotateOutcome, SessionStore, SigningKeyStore, Storage, StorageStats, SweepReport, UserChange,
    UserStore, VerifyOutcome, Versioned,
};

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

    async fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<QueuedMail>, StoreError> {
        let mut due = Vec::new();
        for entry in self.mail_queue.iter() {
            let (key, value) = entry?;
            let record: MailQueueRecord = decode(MAIL_QUEUE, &value)?;
            if record.next_attempt_at <= now {
                let id = <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| super::corrupt(MAIL_QUEUE, "a key is not 8 bytes"))?;
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
