//! Device sessions, their refresh tokens, and the keys that sign access tokens.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError as Tx;
use uuid::Uuid;

use super::keys::{
    ExpiryKind, REFRESH_TOKENS, SESSIONS, SESSIONS_BY_USER, SIGNING_KEYS, session_by_user_key,
};
use super::records::{RefreshRecord, SessionRecord, SigningKeyRecord, UserRecord, decode, encode};
use super::{Store, StoreError, tx_result, uuid_from};

/// What presenting a refresh token did.
#[derive(Debug)]
pub enum RotateOutcome {
    /// The token was current: it is now rotated, and the session holds the new one.
    Rotated(SessionRecord),
    /// The token had already been rotated: its session has been ended.
    Reused {
        session_id: Uuid,
        user_id: Uuid,
    },
    Expired,
    Unknown,
}

/// Signed-in devices and their refresh tokens.
pub trait SessionStore {
    fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError>;
    fn sessions_of(&self, user_id: Uuid) -> Result<Vec<SessionRecord>, StoreError>;
    /// Writes the user (its sign-in times, maybe a new hash) and a new session with its
    /// refresh token, replacing the session the same device had. Returns the replaced one.
    fn start_session(
        &self,
        user: &UserRecord,
        session: &SessionRecord,
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Rotates the refresh token with keyed hash `old`, or ends its session on reuse.
    fn rotate_refresh(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        new_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome, StoreError>;
    /// Ends these sessions. Their refresh tokens die with them.
    fn end_sessions(&self, ids: &[Uuid]) -> Result<(), StoreError>;
}

/// The keys that sign access tokens.
pub trait SigningKeyStore {
    fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// Adds or replaces a key record, durably.
    fn add_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError>;
    fn remove_signing_key(&self, kid: &str) -> Result<(), StoreError>;
}

impl SessionStore for Store {
    fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions
            .get(id.as_bytes())?
            .map(|bytes| decode(SESSIONS, &bytes))
            .transpose()
    }

    fn sessions_of(&self, user_id: Uuid) -> Result<Vec<SessionRecord>, StoreError> {
        let mut found = Vec::new();
        for entry in self.sessions_by_user.scan_prefix(user_id.as_bytes()) {
            let (_, id) = entry?;
            if let Some(session) = self.session(uuid_from(SESSIONS_BY_USER, &id)?)? {
                found.push(session);
            }
        }
        Ok(found)
    }

    fn start_session(
        &self,
        user: &UserRecord,
        session: &SessionRecord,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let _writing = self.writing();
        self.index_expiry(
            ExpiryKind::Session,
            session.id.as_bytes(),
            session.refresh_expires_at,
        )?;
        self.index_expiry(
            ExpiryKind::RefreshToken,
            &session.refresh_hash,
            session.refresh_expires_at,
        )?;
        let user_bytes = encode(user);
        let session_bytes = encode(session);
        let refresh = encode(&RefreshRecord {
            session_id: session.id,
            expires_at: session.refresh_expires_at,
        });
        let index_key = session_by_user_key(&user.id, &session.device_id);
        tx_result(
            (
                &self.users,
                &self.sessions,
                &self.sessions_by_user,
                &self.refresh_tokens,
            )
                .transaction(|(users, sessions, by_user, refresh_tokens)| {
                    let mut replaced = None;
                    if let Some(old_id) = by_user.get(&index_key)?
                        && let Some(old) = sessions.remove(old_id)?
                    {
                        let old: SessionRecord = decode(SESSIONS, &old).map_err(Tx::Abort)?;
                        replaced = Some(old);
                    }
                    users.insert(user.id.as_bytes(), user_bytes.as_slice())?;
                    sessions.insert(session.id.as_bytes(), session_bytes.as_slice())?;
                    by_user.insert(index_key.as_slice(), session.id.as_bytes())?;
                    refresh_tokens.insert(&session.refresh_hash, refresh.as_slice())?;
                    Ok(replaced)
                }),
        )
    }

    fn rotate_refresh(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        new_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome, StoreError> {
        let _writing = self.writing();
        if self.refresh_tokens.contains_key(old)? {
            // The session keeps its older expiry entry: the sweeper moves it when it is due.
            self.index_expiry(ExpiryKind::RefreshToken, new, new_expires_at)?;
        }
        tx_result(
            (&self.sessions, &self.sessions_by_user, &self.refresh_tokens).transaction(
                |(sessions, by_user, refresh_tokens)| {
                    let Some(record) = refresh_tokens.get(old)? else {
                        return Ok(RotateOutcome::Unknown);
                    };
                    let record: RefreshRecord =
                        decode(REFRESH_TOKENS, &record).map_err(Tx::Abort)?;
                    if record.expires_at <= now {
                        return Ok(RotateOutcome::Expired);
                    }
                    let Some(session) = sessions.get(record.session_id.as_bytes())? else {
                        return Ok(RotateOutcome::Unknown);
                    };
                    let mut session: SessionRecord =
                        decode(SESSIONS, &session).map_err(Tx::Abort)?;
                    if &session.refresh_hash != old {
                        // An old token came back: whoever holds the pair may be a thief.
                        sessions.remove(session.id.as_bytes())?;
                        by_user
                            .remove(session_by_user_key(&session.user_id, &session.device_id))?;
                        return Ok(RotateOutcome::Reused {
                            session_id: session.id,
                            user_id: session.user_id,
                        });
                    }
                    session.refresh_hash = *new;
                    session.refresh_expires_at = new_expires_at;
                    session.last_seen_at = session.last_seen_at.max(now);
                    sessions.insert(session.id.as_bytes(), encode(&session))?;
                    refresh_tokens.insert(
                        new,
                        encode(&RefreshRecord {
                            session_id: session.id,
                            expires_at: new_expires_at,
                        }),
                    )?;
                    Ok(RotateOutcome::Rotated(session))
                },
            ),
        )
    }

    fn end_sessions(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let _writing = self.writing();
        tx_result(
            (&self.sessions, &self.sessions_by_user).transaction(|(sessions, by_user)| {
                for id in ids {
                    if let Some(old) = sessions.remove(id.as_bytes())? {
                        let old: SessionRecord = decode(SESSIONS, &old).map_err(Tx::Abort)?;
                        let key = session_by_user_key(&old.user_id, &old.device_id);
                        // The index may already point at a newer session of the same device.
                        if by_user.get(&key)?.as_deref() == Some(id.as_bytes().as_slice()) {
                            by_user.remove(key)?;
                        }
                    }
                }
                Ok(())
            }),
        )
    }
}

impl Store {
    /// How many device sessions exist (walks the tree).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

impl SigningKeyStore for Store {
    fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.signing_keys
            .iter()
            .map(|entry| {
                let (_, bytes) = entry?;
                decode(SIGNING_KEYS, &bytes)
            })
            .collect()
    }

    fn add_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.signing_keys.insert(key.kid.as_bytes(), encode(key))?;
        self.db.flush()?;
        Ok(())
    }

    fn remove_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.signing_keys.remove(kid.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}
