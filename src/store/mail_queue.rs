//! The persistent mail queue. Messages enter it in the same operation as the change that
//! caused them (see the `mail` parameters of the other stores); the worker in `jobs` sends
//! them and takes them out.

use super::*;
use crate::domain::records::*;

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
