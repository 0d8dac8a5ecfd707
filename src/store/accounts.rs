//! Accounts: users, their e-mail and username indexes, and pending e-mail verifications.

use super::*;
use crate::domain::records::*;
use uuid::Uuid;

/// What `create_user` did.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The address already has an account; nothing was written.
    EmailTaken {
        existing: Uuid,
    },
    /// The username is in use; nothing was written.
    UsernameTaken,
}

/// What `verify_email` found.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The account's address is verified.
    Verified {
        user_id: Uuid,
    },
    /// The account's pending new address is verified and is now its address; its other
    /// device sessions, challenges and codes have ended.
    Changed {
        user_id: Uuid,
        old_email: String,
        new_email: String,
        ended: Vec<Uuid>,
    },
    /// The pending new address was taken by another account meanwhile: nothing changed.
    Taken,
    Expired,
    Unknown,
}

/// Accounts and e-mail verification codes.
#[async_trait::async_trait]
pub trait UserStore: Send + Sync {
    async fn user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn username_taken(&self, username: &str) -> Result<bool, StoreError>;
    /// Creates the account and its first verification code and queues `on_created`; when the
    /// address or username is taken, changes nothing.
    async fn create_user(
        &self,
        user: &UserRecord,
        code_hash: &[u8; 32],
        code: &EmailCodeRecord,
        on_created: &[MailQueueRecord],
    ) -> Result<CreateOutcome, StoreError>;
    /// Adds an account as it is, with its address and username indexes and no verification
    /// code: for accounts made by an operator or imported. Changes nothing on a clash.
    async fn insert_user(&self, user: &UserRecord) -> Result<CreateOutcome, StoreError>;
    /// Reads the account, changes it with `change` and writes it, with what `how` says, in
    /// one transaction under the account's lock: concurrent changes never undo each other.
    /// The indexes move when the address or username changed. `change` may run more than once
    /// (on a conflict), each time on the account as it then is; an `Err` writes nothing.
    ///
    /// This is the form a `dyn Storage` can take: callers use the typed `change_user` of
    /// `dyn Storage`, which carries the closure's value and refusal.
    async fn change_user_with(
        &self,
        id: Uuid,
        how: AccountChange<'_>,
        change: &UserChange<'_>,
    ) -> Result<Changed<(), ()>, StoreError>;
    /// Whether the TOTP secrets stored in clear by older versions have been sealed.
    async fn secrets_sealed(&self) -> Result<bool, StoreError>;
    /// Records that they have. Lost in a crash, the sealing runs once more: it finds nothing.
    async fn mark_secrets_sealed(&self) -> Result<(), StoreError>;
    /// Records `fingerprint` as the key's the storage is used with, if none is recorded
    /// yet; returns the recorded one when it is another.
    async fn claim_key_fingerprint(&self, fingerprint: &str) -> Result<Option<String>, StoreError>;
    /// Every account, in id order.
    async fn all_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Removes the account, its indexes, its device sessions, challenges and codes, in one
    /// transaction. Returns the account as it was and its ended sessions.
    async fn delete_user(&self, id: Uuid) -> Result<Option<(UserRecord, Vec<Uuid>)>, StoreError>;
    /// Uses the code up and marks its address verified: the account's address, or the
    /// pending new address, which then becomes the account's (see [`VerifyOutcome`]).
    async fn verify_email(
        &self,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<VerifyOutcome, StoreError>;
}
