//! Accounts: users, their e-mail and username indexes, and pending e-mail verifications.

use crate::store::{
    AccountChange, Changed, CreateOutcome, Ends, UserChange, UserStore, VerifyOutcome,
};

use super::account_tx::username_key;
use super::keys::{
    EMAIL_CODES, ExpiryKind, META_KEY_FINGERPRINT, META_SECRETS_SEALED, USERS, USERS_BY_EMAIL,
};
use super::mail_queue::queue_in;
use super::records::{EmailCodeRecord, MailQueueRecord, UserRecord, decode, encode};
use super::{Store, StoreError, tx_result, uuid_from};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError as Tx;
use uuid::Uuid;

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

#[async_trait::async_trait]
impl UserStore for Store {
    async fn user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        self.read_user(id)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.users_by_email.get(email.as_bytes())? {
            Some(id) => self.user(uuid_from(USERS_BY_EMAIL, &id)?).await,
            None => Ok(None),
        }
    }

    async fn username_taken(&self, username: &str) -> Result<bool, StoreError> {
        Ok(self
            .users_by_username
            .contains_key(username_key(username))?)
    }

    async fn create_user(
        &self,
        user: &UserRecord,
        code_hash: &[u8; 32],
        code: &EmailCodeRecord,
        on_created: &[MailQueueRecord],
    ) -> Result<CreateOutcome, StoreError> {
        self.durably(|| {
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
        })
        .await
    }

    async fn insert_user(&self, user: &UserRecord) -> Result<CreateOutcome, StoreError> {
        self.durably(|| self.insert_user_now(user)).await
    }

    async fn all_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.users
            .iter()
            .values()
            .map(|bytes| decode(USERS, &bytes?))
            .collect()
    }

    async fn change_user_with(
        &self,
        id: Uuid,
        how: AccountChange<'_>,
        change: &UserChange<'_>,
    ) -> Result<Changed<(), ()>, StoreError> {
        self.durably(|| {
            if let Some(session) = how.rewrite_session {
                self.index_expiry(
                    ExpiryKind::Session,
                    session.id.as_bytes(),
                    session.refresh_expires_at,
                )?;
            }
            if let Some((hash, code)) = how.email_code {
                self.index_expiry(ExpiryKind::EmailCode, hash, code.expires_at)?;
            }
            let rewrite = how.rewrite_session.map(|s| (s.id, encode(s)));
            let email_code = how.email_code.map(|(hash, code)| (*hash, encode(code)));
            self.with_account(id, |t, found| {
                if let Some(code) = how.reset_code
                    && t.reset_codes.get(code)?.is_none()
                {
                    return Ok(Changed::Missing);
                }
                let Some(before) = t.user(id)? else {
                    return Ok(Changed::Missing);
                };
                let mut after = before.clone();
                let value = match change(&mut after) {
                    Ok(value) => value,
                    Err(refused) => return Ok(Changed::Refused(refused)),
                };
                if how.ends != Ends::Nothing {
                    after.stamp = before.stamp.wrapping_add(1);
                }
                if let Some(clash) = t.write_user(&before, &after)? {
                    return Ok(clash);
                }
                let ended = t.end(id, found, how.ends)?;
                if let Some((session_id, bytes)) = &rewrite
                    && t.sessions
                        .insert(session_id.as_bytes(), bytes.as_slice())?
                        .is_none()
                {
                    // It ended meanwhile (a logout): it stays ended.
                    t.sessions.remove(session_id.as_bytes())?;
                }
                if let Some((hash, code)) = &email_code {
                    t.email_codes.insert(hash, code.as_slice())?;
                }
                t.queue(how.mail)?;
                Ok(Changed::Done {
                    user: Box::new(after),
                    value,
                    ended,
                })
            })
        })
        .await
    }

    async fn delete_user(&self, id: Uuid) -> Result<Option<(UserRecord, Vec<Uuid>)>, StoreError> {
        self.durably(|| {
            self.with_account(id, |t, found| {
                let Some(user) = t.user(id)? else {
                    return Ok(None);
                };
                t.users.remove(id.as_bytes())?;
                if t.by_email.get(user.email.as_bytes())?.as_deref()
                    == Some(id.as_bytes().as_slice())
                {
                    t.by_email.remove(user.email.as_bytes())?;
                }
                let name = username_key(&user.username);
                if t.by_username.get(&name)?.as_deref() == Some(id.as_bytes().as_slice()) {
                    t.by_username.remove(name)?;
                }
                let ended = t.end(id, found, Ends::Everything { keep: None })?;
                Ok(Some((user, ended)))
            })
        })
        .await
    }

    async fn secrets_sealed(&self) -> Result<bool, StoreError> {
        Ok(self.meta.contains_key(META_SECRETS_SEALED)?)
    }

    async fn mark_secrets_sealed(&self) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            self.meta.insert(META_SECRETS_SEALED, &[1])?;
            Ok(())
        })
        .await
    }

    async fn claim_key_fingerprint(&self, fingerprint: &str) -> Result<Option<String>, StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            let claimed = self.meta.compare_and_swap(
                META_KEY_FINGERPRINT,
                None as Option<&[u8]>,
                Some(fingerprint.as_bytes()),
            )?;
            Ok(match claimed {
                Ok(()) => None,
                Err(found) => found
                    .current
                    .map(|theirs| String::from_utf8_lossy(&theirs).into_owned())
                    .filter(|theirs| theirs != fingerprint),
            })
        })
        .await
    }

    async fn verify_email(
        &self,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<VerifyOutcome, StoreError> {
        self.durably(|| {
            let Some(code) = self.email_codes.get(code_hash)? else {
                return Ok(VerifyOutcome::Unknown);
            };
            let code: EmailCodeRecord = decode(EMAIL_CODES, &code)?;
            self.with_account(code.user_id, |t, found| {
                // Read again inside: another use of the same code may have won.
                let Some(code) = t.email_codes.get(code_hash)? else {
                    return Ok(VerifyOutcome::Unknown);
                };
                let code: EmailCodeRecord = decode(EMAIL_CODES, &code).map_err(Tx::Abort)?;
                t.email_codes.remove(code_hash)?;
                if code.expires_at <= now {
                    return Ok(VerifyOutcome::Expired);
                }
                let Some(before) = t.user(code.user_id)? else {
                    return Ok(VerifyOutcome::Unknown);
                };
                let mut after = before.clone();
                if before.email == code.email {
                    after.email_verified = true;
                    t.users.insert(after.id.as_bytes(), encode(&after))?;
                    return Ok(VerifyOutcome::Verified { user_id: after.id });
                }
                // A code for an address the account no longer has, or no longer waits for,
                // verifies nothing.
                let Some(pending) = before
                    .pending_email
                    .as_ref()
                    .filter(|p| p.email == code.email)
                else {
                    return Ok(VerifyOutcome::Unknown);
                };
                let keep = pending.session_id;
                after.email = pending.email.clone();
                after.email_verified = true;
                after.pending_email = None;
                after.stamp = before.stamp.wrapping_add(1);
                if t.write_user::<(), ()>(&before, &after)?.is_some() {
                    return Ok(VerifyOutcome::Taken);
                }
                let ended = t.end(after.id, found, Ends::Everything { keep })?;
                Ok(VerifyOutcome::Changed {
                    user_id: after.id,
                    old_email: before.email.clone(),
                    new_email: after.email.clone(),
                    ended,
                })
            })
        })
        .await
    }
}

impl Store {
    pub(super) fn read_user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .get(id.as_bytes())?
            .map(|bytes| decode(USERS, &bytes))
            .transpose()
    }

    /// [`UserStore::insert_user`], not yet durable: for seeding many accounts at once, which
    /// flushes once at its end ([`Store::flush_blocking`]).
    #[doc(hidden)]
    pub fn insert_user_now(&self, user: &UserRecord) -> Result<CreateOutcome, StoreError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_inserted_account_is_found_by_address_and_refuses_a_clash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let ada = UserRecord::new("ada@example.com", "ada", "$argon2id$stub".into(), 1);
        assert_eq!(
            store.insert_user(&ada).await.unwrap(),
            CreateOutcome::Created
        );
        assert_eq!(
            store
                .user_by_email("ada@example.com")
                .await
                .unwrap()
                .unwrap()
                .id,
            ada.id
        );
        assert!(store.username_taken("ADA").await.unwrap());
        let same_address = UserRecord::new("ada@example.com", "other", "x".into(), 2);
        assert_eq!(
            store.insert_user(&same_address).await.unwrap(),
            CreateOutcome::EmailTaken { existing: ada.id }
        );
        let same_name = UserRecord::new("bo@example.com", "Ada", "x".into(), 2);
        assert_eq!(
            store.insert_user(&same_name).await.unwrap(),
            CreateOutcome::UsernameTaken
        );
        assert!(
            store.user(same_name.id).await.unwrap().is_none(),
            "nothing written"
        );
    }
}
