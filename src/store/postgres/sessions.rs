//! Device sessions, their refresh tokens, and the keys that sign access tokens. A rotation
//! is one conditional `UPDATE`: of two instances given the same refresh token at once, the
//! second waits for the first's row lock, no longer matches, and sees a reuse.

use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::domain::records::{SessionRecord, SigningKeyRecord, UserRecord};
use crate::store::{Changed, RotateOutcome, SessionStore, SigningKeyStore, StoreError, UserChange};

use super::accounts::lock_user;
use super::{Fail, Store, db_error, json, record, transaction};

/// Writes `session` over the stored one, if it is still there.
pub(super) async fn rewrite(tx: &Transaction<'_>, session: &SessionRecord) -> Result<(), Fail> {
    let update = tx
        .prepare_cached("UPDATE sessions SET refresh_expires_at = $2, data = $3 WHERE id = $1")
        .await?;
    tx.execute(
        &update,
        &[&session.id, &session.refresh_expires_at, &json(session)],
    )
    .await?;
    Ok(())
}

async fn end_sessions_in(tx: &Transaction<'_>, ids: &[Uuid]) -> Result<Vec<Uuid>, Fail> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let delete = tx
        .prepare_cached("DELETE FROM sessions WHERE id = ANY($1) RETURNING id")
        .await?;
    Ok(tx
        .query(&delete, &[&ids])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

#[async_trait::async_trait]
impl SessionStore for Store {
    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let client = self.reader().await?;
        let select = client
            .prepare_cached("SELECT data FROM sessions WHERE id = $1")
            .await
            .map_err(db_error)?;
        let row = client.query_opt(&select, &[&id]).await.map_err(db_error)?;
        row.map(|row| record(&row, 0, "sessions")).transpose()
    }

    async fn session_owner(&self, id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let client = self.reader().await?;
        let select = client
            .prepare_cached("SELECT user_id FROM sessions WHERE id = $1")
            .await
            .map_err(db_error)?;
        let row = client.query_opt(&select, &[&id]).await.map_err(db_error)?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn session_user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        let client = self.reader().await?;
        let select = client
            .prepare_cached(
                "SELECT users.data FROM sessions JOIN users ON users.id = sessions.user_id
                 WHERE sessions.id = $1",
            )
            .await
            .map_err(db_error)?;
        let row = client.query_opt(&select, &[&id]).await.map_err(db_error)?;
        row.map(|row| record(&row, 0, "users")).transpose()
    }

    async fn sessions_of(&self, user_id: Uuid) -> Result<Vec<SessionRecord>, StoreError> {
        let client = self.reader().await?;
        let select = client
            .prepare_cached("SELECT data FROM sessions WHERE user_id = $1 ORDER BY device_id")
            .await
            .map_err(db_error)?;
        let rows = client.query(&select, &[&user_id]).await.map_err(db_error)?;
        rows.iter().map(|row| record(row, 0, "sessions")).collect()
    }

    async fn start_session_with(
        &self,
        session: &SessionRecord,
        max_sessions: usize,
        sign_in: &UserChange<'_>,
    ) -> Result<Changed<(), ()>, StoreError> {
        transaction!(self, |tx| {
            let Some(mut user) = lock_user(&tx, session.user_id).await? else {
                return Ok(Changed::Missing);
            };
            if sign_in(&mut user).is_err() {
                return Ok(Changed::Refused(()));
            }
            let update = tx
                .prepare_cached("UPDATE users SET data = $2 WHERE id = $1")
                .await?;
            tx.execute(&update, &[&user.id, &json(&user)]).await?;
            // The device's session before this one, then the oldest past the cap.
            let theirs = tx
                .prepare_cached(
                    "SELECT id, device_id = $2 FROM sessions WHERE user_id = $1
                     ORDER BY created_at, id",
                )
                .await?;
            let rows = tx.query(&theirs, &[&user.id, &session.device_id]).await?;
            let mut ending: Vec<Uuid> = Vec::new();
            let mut others: Vec<Uuid> = Vec::new();
            for row in &rows {
                if row.get::<_, bool>(1) {
                    ending.push(row.get(0));
                } else {
                    others.push(row.get(0));
                }
            }
            let over = (others.len() + 1).saturating_sub(max_sessions.max(1));
            ending.extend(others.iter().take(over));
            let ended = end_sessions_in(&tx, &ending).await?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO sessions
                     (id, user_id, device_id, created_at, refresh_expires_at, data)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            tx.execute(
                &insert,
                &[
                    &session.id,
                    &session.user_id,
                    &session.device_id,
                    &session.created_at,
                    &session.refresh_expires_at,
                    &json(session),
                ],
            )
            .await?;
            Changed::Done {
                user: Box::new(user),
                value: (),
                ended,
            }
        })
    }

    async fn rotate_refresh(
        &self,
        session_id: Uuid,
        generation: u64,
        presented: &[u8; 32],
        new: &[u8; 32],
        new_expires_at: i64,
        session_max_age: i64,
        now: i64,
    ) -> Result<RotateOutcome, StoreError> {
        // No token of a generation past i64 was ever handed out.
        let Ok(generation) = i64::try_from(generation) else {
            return Ok(RotateOutcome::Unknown);
        };
        let client = self.client().await?;
        // The common case is one statement: the row's own lock decides between two
        // instances given the same token, since the second re-reads the row once the first
        // commits and no longer matches. However often it is refreshed, a session ends
        // `session_max_age` after sign-in (added without overflowing a bigint). The account
        // is read in the same statement; a disabled one rotates nothing.
        let rotate = client
            .prepare_cached(
                "UPDATE sessions SET
                   refresh_expires_at =
                     LEAST($4::bigint, created_at + LEAST($5::bigint, 9223372036854775807 - created_at)),
                   data = sessions.data || jsonb_build_object(
                     'refresh_hash', $3::jsonb,
                     'refresh_generation', $2::bigint + 1,
                     'refresh_expires_at',
                     LEAST($4::bigint, created_at + LEAST($5::bigint, 9223372036854775807 - created_at)),
                     'last_seen_at', GREATEST((sessions.data->>'last_seen_at')::bigint, $6::bigint))
                 FROM users
                 WHERE sessions.id = $1 AND users.id = sessions.user_id
                   AND users.data->>'state' IS DISTINCT FROM 'disabled'
                   AND sessions.refresh_expires_at > $6::bigint
                   AND COALESCE((sessions.data->>'refresh_generation')::bigint, 0) = $2::bigint
                   AND sessions.data->'refresh_hash' = $7::jsonb
                 RETURNING sessions.data, users.data",
            )
            .await
            .map_err(db_error)?;
        let rotated = client
            .query_opt(
                &rotate,
                &[
                    &session_id,
                    &generation,
                    &json(new),
                    &new_expires_at,
                    &session_max_age.max(0),
                    &now,
                    &json(presented),
                ],
            )
            .await
            .map_err(db_error)?;
        if let Some(row) = rotated {
            return Ok(RotateOutcome::Rotated {
                session: record(&row, 0, "sessions")?,
                user: Box::new(record(&row, 1, "users")?),
            });
        }
        // Not rotated. An older generation coming back is a reuse: whoever holds the pair
        // may be a thief, and the session ends (unless its account is disabled, whose
        // tokens are refused as they are).
        let reused = client
            .prepare_cached(
                "DELETE FROM sessions USING users
                 WHERE sessions.id = $1 AND users.id = sessions.user_id
                   AND users.data->>'state' IS DISTINCT FROM 'disabled'
                   AND sessions.refresh_expires_at > $3::bigint
                   AND COALESCE((sessions.data->>'refresh_generation')::bigint, 0) > $2::bigint
                 RETURNING sessions.user_id",
            )
            .await
            .map_err(db_error)?;
        if let Some(row) = client
            .query_opt(&reused, &[&session_id, &generation, &now])
            .await
            .map_err(db_error)?
        {
            return Ok(RotateOutcome::Reused {
                session_id,
                user_id: row.get(0),
            });
        }
        let why = client
            .prepare_cached(
                "SELECT sessions.refresh_expires_at, users.data->>'state' = 'disabled'
                 FROM sessions JOIN users ON users.id = sessions.user_id
                 WHERE sessions.id = $1",
            )
            .await
            .map_err(db_error)?;
        let row = client
            .query_opt(&why, &[&session_id])
            .await
            .map_err(db_error)?;
        Ok(match row {
            Some(row) if row.get::<_, Option<bool>>(1) == Some(true) => RotateOutcome::Disabled,
            Some(row) if row.get::<_, i64>(0) <= now => RotateOutcome::Expired,
            _ => RotateOutcome::Unknown,
        })
    }

    async fn end_sessions(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute("DELETE FROM sessions WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SigningKeyStore for Store {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT data FROM signing_keys ORDER BY kid", &[])
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| record(row, 0, "signing_keys"))
            .collect()
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO signing_keys (kid, data) VALUES ($1, $2)
                 ON CONFLICT (kid) DO UPDATE SET data = EXCLUDED.data",
                &[&key.kid, &json(key)],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn remove_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM signing_keys WHERE kid = $1", &[&kid])
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
