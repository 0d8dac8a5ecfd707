//! Accounts: users, their unique address and username, and pending e-mail verifications.
//! A change to an account holds its row locked (`FOR UPDATE`) from its read to its commit;
//! every writer of the account's sessions, challenges and codes takes the same lock first.

use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::domain::records::{EmailCodeRecord, MailQueueRecord, UserRecord};
use crate::store::{
    AccountChange, Changed, CreateOutcome, Ends, StoreError, UserChange, UserStore, VerifyOutcome,
};

use super::{Fail, Store, db_error, json, record, transaction, violated};

/// Usernames are unique whatever their case.
fn username_key(username: &str) -> String {
    username.to_lowercase()
}

/// Reads the account and locks it until the transaction ends.
pub(super) async fn lock_user(tx: &Transaction<'_>, id: Uuid) -> Result<Option<UserRecord>, Fail> {
    let select = tx
        .prepare_cached("SELECT data FROM users WHERE id = $1 FOR UPDATE")
        .await?;
    match tx.query_opt(&select, &[&id]).await? {
        Some(row) => Ok(Some(record(&row, 0, "users")?)),
        None => Ok(None),
    }
}

/// Writes the account as it now is. On a clash of its address or username, says which
/// (the transaction then must not commit).
pub(super) async fn write_user<T, E>(
    tx: &Transaction<'_>,
    user: &UserRecord,
) -> Result<Option<Changed<T, E>>, Fail> {
    let update = tx
        .prepare_cached("UPDATE users SET email = $2, username_key = $3, data = $4 WHERE id = $1")
        .await?;
    let outcome = tx
        .execute(
            &update,
            &[
                &user.id,
                &user.email,
                &username_key(&user.username),
                &json(user),
            ],
        )
        .await;
    match outcome.map_err(Fail::from) {
        Ok(_) => Ok(None),
        Err(fail) => match violated(&fail) {
            Some("users_email_key") => Ok(Some(Changed::EmailTaken)),
            Some("users_username_key") => Ok(Some(Changed::UsernameTaken)),
            _ => Err(fail),
        },
    }
}

/// Ends what `ends` says of the account's sessions, challenges and codes; returns the
/// ended sessions. The account is locked by the caller.
pub(super) async fn end(
    tx: &Transaction<'_>,
    user_id: Uuid,
    ends: Ends,
) -> Result<Vec<Uuid>, Fail> {
    if ends == Ends::Nothing {
        return Ok(Vec::new());
    }
    let sessions = tx
        .prepare_cached(
            "DELETE FROM sessions WHERE user_id = $1 AND ($2::uuid IS NULL OR id <> $2)
             RETURNING id",
        )
        .await?;
    let mut ended: Vec<Uuid> = tx
        .query(&sessions, &[&user_id, &ends.keep()])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    ended.sort_unstable();
    if let Ends::Everything { .. } = ends {
        let challenges = tx
            .prepare_cached("DELETE FROM challenges WHERE user_id = $1")
            .await?;
        tx.execute(&challenges, &[&user_id]).await?;
        let reset = tx
            .prepare_cached("DELETE FROM reset_codes WHERE user_id = $1")
            .await?;
        tx.execute(&reset, &[&user_id]).await?;
    }
    Ok(ended)
}

/// Adds the account unless its address or username is taken.
async fn add_account(tx: &Transaction<'_>, user: &UserRecord) -> Result<CreateOutcome, Fail> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO users (id, email, username_key, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let inserted = tx
        .execute(
            &insert,
            &[
                &user.id,
                &user.email,
                &username_key(&user.username),
                &json(user),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(CreateOutcome::Created);
    }
    // A concurrent insert of the same address waited for the other's commit, and sees it.
    let existing = tx
        .prepare_cached("SELECT id FROM users WHERE email = $1")
        .await?;
    match tx.query_opt(&existing, &[&user.email]).await? {
        Some(row) => Ok(CreateOutcome::EmailTaken {
            existing: row.get(0),
        }),
        None => Ok(CreateOutcome::UsernameTaken),
    }
}

async fn put_email_code(
    tx: &Transaction<'_>,
    hash: &[u8; 32],
    code: &EmailCodeRecord,
) -> Result<(), Fail> {
    let put = tx
        .prepare_cached(
            "INSERT INTO email_codes (hash, user_id, expires_at, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO UPDATE
             SET user_id = EXCLUDED.user_id, expires_at = EXCLUDED.expires_at, data = EXCLUDED.data",
        )
        .await?;
    tx.execute(
        &put,
        &[
            &hash.as_slice(),
            &code.user_id,
            &code.expires_at,
            &json(code),
        ],
    )
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl UserStore for Store {
    async fn user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        let client = self.reader().await?;
        let select = client
            .prepare_cached("SELECT data FROM users WHERE id = $1")
            .await
            .map_err(db_error)?;
        let row = client.query_opt(&select, &[&id]).await.map_err(db_error)?;
        row.map(|row| record(&row, 0, "users")).transpose()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let client = self.reader().await?;
        let select = client
            .prepare_cached("SELECT data FROM users WHERE email = $1")
            .await
            .map_err(db_error)?;
        let row = client
            .query_opt(&select, &[&email])
            .await
            .map_err(db_error)?;
        row.map(|row| record(&row, 0, "users")).transpose()
    }

    async fn username_taken(&self, username: &str) -> Result<bool, StoreError> {
        let client = self.reader().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM users WHERE username_key = $1",
                &[&username_key(username)],
            )
            .await
            .map_err(db_error)?;
        Ok(row.is_some())
    }

    async fn create_user(
        &self,
        user: &UserRecord,
        code_hash: &[u8; 32],
        code: &EmailCodeRecord,
        on_created: &[MailQueueRecord],
    ) -> Result<CreateOutcome, StoreError> {
        transaction!(self, |tx| {
            let outcome = add_account(&tx, user).await?;
            if outcome != CreateOutcome::Created {
                return Ok(outcome);
            }
            put_email_code(&tx, code_hash, code).await?;
            Store::queue_in(&tx, on_created).await?;
            outcome
        })
    }

    async fn insert_user(&self, user: &UserRecord) -> Result<CreateOutcome, StoreError> {
        transaction!(self, |tx| { add_account(&tx, user).await? })
    }

    async fn change_user_with(
        &self,
        id: Uuid,
        how: AccountChange<'_>,
        change: &UserChange<'_>,
    ) -> Result<Changed<(), ()>, StoreError> {
        transaction!(self, |tx| {
            let Some(before) = lock_user(&tx, id).await? else {
                return Ok(Changed::Missing);
            };
            if let Some(code) = how.reset_code {
                let select = tx
                    .prepare_cached("SELECT 1 FROM reset_codes WHERE hash = $1 FOR UPDATE")
                    .await?;
                if tx.query_opt(&select, &[&code.as_slice()]).await?.is_none() {
                    return Ok(Changed::Missing);
                }
            }
            let mut after = before.clone();
            if change(&mut after).is_err() {
                return Ok(Changed::Refused(()));
            }
            if how.ends != Ends::Nothing {
                after.stamp = before.stamp.wrapping_add(1);
            }
            if let Some(clash) = write_user(&tx, &after).await? {
                return Ok(clash);
            }
            let ended = end(&tx, id, how.ends).await?;
            if let Some(session) = how.rewrite_session {
                // It ended meanwhile (a logout): it stays ended.
                super::sessions::rewrite(&tx, session).await?;
            }
            if let Some((hash, code)) = how.email_code {
                put_email_code(&tx, hash, code).await?;
            }
            Store::queue_in(&tx, how.mail).await?;
            Changed::Done {
                user: Box::new(after),
                value: (),
                ended,
            }
        })
    }

    async fn secrets_sealed(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT 1 FROM meta WHERE key = 'secrets_sealed'", &[])
            .await
            .map_err(db_error)?;
        Ok(row.is_some())
    }

    async fn mark_secrets_sealed(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('secrets_sealed', '1')
                 ON CONFLICT (key) DO NOTHING",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn claim_key_fingerprint(&self, fingerprint: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('key_fingerprint', $1)
                 ON CONFLICT (key) DO NOTHING",
                &[&fingerprint],
            )
            .await
            .map_err(db_error)?;
        let row = client
            .query_one("SELECT value FROM meta WHERE key = 'key_fingerprint'", &[])
            .await
            .map_err(db_error)?;
        let theirs: String = row.get(0);
        Ok((theirs != fingerprint).then_some(theirs))
    }

    async fn all_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT data FROM users ORDER BY id", &[])
            .await
            .map_err(db_error)?;
        rows.iter().map(|row| record(row, 0, "users")).collect()
    }

    async fn delete_user(&self, id: Uuid) -> Result<Option<(UserRecord, Vec<Uuid>)>, StoreError> {
        transaction!(self, |tx| {
            let Some(user) = lock_user(&tx, id).await? else {
                return Ok(None);
            };
            let ended = end(&tx, id, Ends::Everything { keep: None }).await?;
            tx.execute("DELETE FROM email_codes WHERE user_id = $1", &[&id])
                .await?;
            tx.execute("DELETE FROM users WHERE id = $1", &[&id])
                .await?;
            Some((user, ended))
        })
    }

    async fn verify_email(
        &self,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<VerifyOutcome, StoreError> {
        transaction!(self, |tx| {
            let hash = code_hash.as_slice();
            // The account is locked before its code, as every change to it locks them.
            let owner = tx
                .query_opt("SELECT user_id FROM email_codes WHERE hash = $1", &[&hash])
                .await?;
            let Some(owner) = owner else {
                return Ok(VerifyOutcome::Unknown);
            };
            let before = lock_user(&tx, owner.get(0)).await?;
            'decide: {
                // Read again under the lock: another use of the same code may have won.
                let row = tx
                    .query_opt(
                        "DELETE FROM email_codes WHERE hash = $1 RETURNING data",
                        &[&hash],
                    )
                    .await?;
                let Some(row) = row else {
                    break 'decide VerifyOutcome::Unknown;
                };
                let code: EmailCodeRecord = record(&row, 0, "email_codes")?;
                if code.expires_at <= now {
                    break 'decide VerifyOutcome::Expired;
                }
                let Some(before) = before.filter(|u| u.id == code.user_id) else {
                    break 'decide VerifyOutcome::Unknown;
                };
                let mut after = before.clone();
                if before.email == code.email {
                    after.email_verified = true;
                    write_user::<(), ()>(&tx, &after).await?;
                    break 'decide VerifyOutcome::Verified { user_id: after.id };
                }
                // A code for an address the account no longer has, or no longer waits for,
                // verifies nothing.
                let Some(pending) = before
                    .pending_email
                    .as_ref()
                    .filter(|p| p.email == code.email)
                else {
                    break 'decide VerifyOutcome::Unknown;
                };
                let keep = pending.session_id;
                after.email = pending.email.clone();
                after.email_verified = true;
                after.pending_email = None;
                after.stamp = before.stamp.wrapping_add(1);
                let taken = tx
                    .query_opt(
                        "SELECT 1 FROM users WHERE email = $1 AND id <> $2",
                        &[&after.email, &after.id],
                    )
                    .await?;
                if taken.is_some() {
                    // The code is used up all the same.
                    break 'decide VerifyOutcome::Taken;
                }
                if write_user::<(), ()>(&tx, &after).await?.is_some() {
                    return Ok(VerifyOutcome::Taken);
                }
                let ended = end(&tx, after.id, Ends::Everything { keep }).await?;
                VerifyOutcome::Changed {
                    user_id: after.id,
                    old_email: before.email.clone(),
                    new_email: after.email.clone(),
                    ended,
                }
            }
        })
    }
}
