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
    /// Claims at most `limit` messages whose next attempt is due at `now`, oldest first:
    /// each one's next attempt moves to `now + lease`, so no other claim (this process's or
    /// another instance's) returns it before the lease ends. A claimer that dies holding it
    /// leaves it to be claimed again then. The returned records carry the leased time.
    async fn claim_mail(
        &self,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Vec<QueuedMail>, StoreError>;
    /// Writes a claimed message back with its new attempt count and time, if it is still
    /// queued (one taken out meanwhile stays out).
    async fn reschedule_mail(&self, mail: &QueuedMail) -> Result<(), StoreError>;
    /// Takes a message out of the queue: sent, or given up on.
    async fn remove_mail(&self, id: u64) -> Result<(), StoreError>;
    /// How many messages are queued.
    async fn mail_queue_len(&self) -> Result<usize, StoreError>;
    /// Every queued message, in id order, claimed or not: what a migration copies.
    async fn queued_mail(&self) -> Result<Vec<QueuedMail>, StoreError>;
}
