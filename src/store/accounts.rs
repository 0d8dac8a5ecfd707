//! Accounts: users, their e-mail and username indexes, and pending e-mail verifications.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError as Tx;
use uuid::Uuid;

use super::keys::{EMAIL_CODES, ExpiryKind, USERS, USERS_BY_EMAIL};
use super::mail_queue::queue_in;
use super::records::{EmailCodeRecord, QueuedMail, UserRecord, decode, encode};
use super::{Store, StoreError, tx_result, uuid_from};

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

/// What `update_user` did.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated,
    EmailTaken,
    UsernameTaken,
}

/// What `verify_email` found.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    Verified { user_id: Uuid },
    Expired,
    Unknown,
}

/// Accounts and e-mail verification codes.
pub trait UserStore {
    fn user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError>;
    fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    fn username_taken(&self, username: &str) -> Result<bool, StoreError>;
    /// Creates the account and its first verification code and queues `on_created`; when the
    /// address or username is taken, changes nothing.
    fn create_user(
        &self,
        user: &UserRecord,
        code_hash: &[u8; 32],
        code: &EmailCodeRecord,
        on_created: &[QueuedMail],
    ) -> Result<CreateOutcome, StoreError>;
    /// Adds an account as it is, with its address and username indexes and no verification
    /// code: for accounts made by an operator or imported. Changes nothing on a clash.
    fn insert_user(&self, user: &UserRecord) -> Result<CreateOutcome, StoreError>;
    /// Replaces the account, moving its indexes when the address or username changed, and
    /// stores a new verification code if one is given. Changes nothing on a clash.
    fn update_user(
        &self,
        before: &UserRecord,
        after: &UserRecord,
        new_code: Option<(&[u8; 32], &EmailCodeRecord)>,
        mail: &[QueuedMail],
    ) -> Result<UpdateOutcome, StoreError>;
    /// Writes the account as it is (its indexes unchanged).
    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    /// Every account, in id order.
    fn all_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Removes the account and its address and username indexes. Its device sessions are
    /// ended first by the caller; codes left behind no longer find an account and expire.
    fn delete_user(&self, user: &UserRecord) -> Result<bool, StoreError>;
    /// Marks the address of the code verified and uses the code up.
    fn verify_email(&self, code_hash: &[u8; 32], now: i64) -> Result<VerifyOutcome, StoreError>;
}

/// Inside a transaction: writes the account and its address and username indexes, unless
/// the address or the username is taken (then nothing).
fn add_account(
    users: &sled::transaction::TransactionalTree,
    by_email: &sled::transaction::TransactionalTree,
    by_username: &sled::transaction::TransactionalTree,
    user: &UserRecord,
    record: &[u8],
) -> sled::transaction::ConflictableTransactionResult<CreateOutcome, StoreError> {
    if let Some(existing) = by_email.get(user.email.as_bytes())? {
        let existing = uuid_from(USERS_BY_EMAIL, &existing).map_err(Tx::Abort)?;
        return Ok(CreateOutcome::EmailTaken { existing });
    }
    let name = username_key(&user.username);
    if by_username.get(&name)?.is_some() {
        return Ok(CreateOutcome::UsernameTaken);
    }
    users.insert(user.id.as_bytes(), record)?;
    by_email.insert(user.email.as_bytes(), user.id.as_bytes())?;
    by_username.insert(name, user.id.as_bytes())?;
    Ok(CreateOutcome::Created)
}

fn username_key(username: &str) -> Vec<u8> {
    username.to_lowercase().into_bytes()
}

impl UserStore for Store {
    fn user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .get(id.as_bytes())?
            .map(|bytes| decode(USERS, &bytes))
            .transpose()
    }

    fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.users_by_email.get(email.as_bytes())? {
            Some(id) => self.user(uuid_from(USERS_BY_EMAIL, &id)?),
            None => Ok(None),
        }
    }

    fn username_taken(&self, username: &str) -> Result<bool, StoreError> {
        Ok(self
            .users_by_username
            .contains_key(username_key(username))?)
    }

    fn create_user(
        &self,
        user: &UserRecord,
        code_hash: &[u8; 32],
        code: &EmailCodeRecord,
        on_created: &[QueuedMail],
    ) -> Result<CreateOutcome, StoreError> {
        let _writing = self.writing();
        self.index_expiry(ExpiryKind::EmailCode, code_hash, code.expires_at)?;
        let record = encode(user);
        let code = encode(code);
        tx_result(
            (
                &self.users,
                &self.users_by_email,
                &self.users_by_username,
                &self.email_codes,
                &self.mail_queue,
            )
                .transaction(|(users, by_email, by_username, codes, queue)| {
                    let outcome = add_account(users, by_email, by_username, user, &record)?;
                    if outcome == CreateOutcome::Created {
                        codes.insert(code_hash, code.as_slice())?;
                        queue_in(queue, on_created)?;
                    }
                    Ok(outcome)
                }),
        )
    }

    fn insert_user(&self, user: &UserRecord) -> Result<CreateOutcome, StoreError> {
        let _writing = self.writing();
        let record = encode(user);
        tx_result(
            (&self.users, &self.users_by_email, &self.users_by_username).transaction(
                |(users, by_email, by_username)| {
                    add_account(users, by_email, by_username, user, &record)
                },
            ),
        )
    }

    fn update_user(
        &self,
        before: &UserRecord,
        after: &UserRecord,
        new_code: Option<(&[u8; 32], &EmailCodeRecord)>,
        mail: &[QueuedMail],
    ) -> Result<UpdateOutcome, StoreError> {
        let _writing = self.writing();
        if let Some((hash, code)) = new_code {
            self.index_expiry(ExpiryKind::EmailCode, hash, code.expires_at)?;
        }
        let record = encode(after);
        let code = new_code.map(|(hash, code)| (*hash, encode(code)));
        tx_result(
            (
                &self.users,
                &self.users_by_email,
                &self.users_by_username,
                &self.email_codes,
                &self.mail_queue,
            )
                .transaction(|(users, by_email, by_username, codes, queue)| {
                    let id = after.id.as_bytes();
                    if before.email != after.email {
                        if by_email.get(after.email.as_bytes())?.is_some() {
                            return Ok(UpdateOutcome::EmailTaken);
                        }
                        by_email.remove(before.email.as_bytes())?;
                        by_email.insert(after.email.as_bytes(), id)?;
                    }
                    let (old_name, new_name) = (
                        username_key(&before.username),
                        username_key(&after.username),
                    );
                    if old_name != new_name {
                        if by_username.get(&new_name)?.is_some() {
                            return Ok(UpdateOutcome::UsernameTaken);
                        }
                        by_username.remove(old_name)?;
                        by_username.insert(new_name, id)?;
                    }
                    users.insert(id, record.as_slice())?;
                    if let Some((hash, code)) = &code {
                        codes.insert(hash, code.as_slice())?;
                    }
                    queue_in(queue, mail)?;
                    Ok(UpdateOutcome::Updated)
                }),
        )
    }

    fn all_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.users
            .iter()
            .values()
            .map(|bytes| decode(USERS, &bytes?))
            .collect()
    }

    fn delete_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        let _writing = self.writing();
        tx_result(
            (&self.users, &self.users_by_email, &self.users_by_username).transaction(
                |(users, by_email, by_username)| {
                    if users.remove(user.id.as_bytes())?.is_none() {
                        return Ok(false);
                    }
                    if by_email.get(user.email.as_bytes())?.as_deref()
                        == Some(user.id.as_bytes().as_slice())
                    {
                        by_email.remove(user.email.as_bytes())?;
                    }
                    let name = username_key(&user.username);
                    if by_username.get(&name)?.as_deref() == Some(user.id.as_bytes().as_slice()) {
                        by_username.remove(name)?;
                    }
                    Ok(true)
                },
            ),
        )
    }

    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.users.insert(user.id.as_bytes(), encode(user))?;
        Ok(())
    }

    fn verify_email(&self, code_hash: &[u8; 32], now: i64) -> Result<VerifyOutcome, StoreError> {
        let _writing = self.writing();
        tx_result(
            (&self.users, &self.email_codes).transaction(|(users, codes)| {
                let Some(code) = codes.get(code_hash)? else {
                    return Ok(VerifyOutcome::Unknown);
                };
                let code: EmailCodeRecord = decode(EMAIL_CODES, &code).map_err(Tx::Abort)?;
                if code.expires_at <= now {
                    codes.remove(code_hash)?;
                    return Ok(VerifyOutcome::Expired);
                }
                let Some(user) = users.get(code.user_id.as_bytes())? else {
                    codes.remove(code_hash)?;
                    return Ok(VerifyOutcome::Unknown);
                };
                let mut user: UserRecord = decode(USERS, &user).map_err(Tx::Abort)?;
                // A code sent to an address the account no longer has verifies nothing.
                if user.email != code.email {
                    codes.remove(code_hash)?;
                    return Ok(VerifyOutcome::Unknown);
                }
                user.email_verified = true;
                users.insert(user.id.as_bytes(), encode(&user))?;
                codes.remove(code_hash)?;
                Ok(VerifyOutcome::Verified { user_id: user.id })
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inserted_account_is_found_by_address_and_refuses_a_clash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let ada = UserRecord::new("ada@example.com", "ada", "$argon2id$stub".into(), 1);
        assert_eq!(store.insert_user(&ada).unwrap(), CreateOutcome::Created);
        assert_eq!(
            store.user_by_email("ada@example.com").unwrap().unwrap().id,
            ada.id
        );
        assert!(store.username_taken("ADA").unwrap());
        let same_address = UserRecord::new("ada@example.com", "other", "x".into(), 2);
        assert_eq!(
            store.insert_user(&same_address).unwrap(),
            CreateOutcome::EmailTaken { existing: ada.id }
        );
        let same_name = UserRecord::new("bo@example.com", "Ada", "x".into(), 2);
        assert_eq!(
            store.insert_user(&same_name).unwrap(),
            CreateOutcome::UsernameTaken
        );
        assert!(
            store.user(same_name.id).unwrap().is_none(),
            "nothing written"
        );
    }
}
