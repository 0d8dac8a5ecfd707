//! Device sessions, their refresh tokens, and the keys that sign access tokens.

use crate::store::{
    Changed, LegacyRefresh, RotateOutcome, SessionStore, SigningKeyStore, UserChange,
};

use super::keys::{
    ExpiryKind, META, META_SESSION_COUNT, REFRESH_TOKENS, SESSIONS, SESSIONS_BY_USER, SIGNING_KEYS,
    USERS, session_by_user_key,
};
use super::records::{
    AccountState, RefreshRecord, SessionRecord, SigningKeyRecord, UserRecord, decode, encode,
};
use super::{Store, StoreError, tx_result, uuid_from};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use serde::Deserialize;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError as Tx, TransactionalTree};
use uuid::Uuid;

#[async_trait::async_trait]
impl SessionStore for Store {
    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        self.read_session(id)
    }

    async fn session_owner(&self, id: Uuid) -> Result<Option<Uuid>, StoreError> {
        self.owner_of(id)
    }

    async fn session_user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        match self.owner_of(id)? {
            Some(owner) => self.read_user(owner),
            None => Ok(None),
        }
    }

    async fn sessions_of(&self, user_id: Uuid) -> Result<Vec<SessionRecord>, StoreError> {
        let mut found = Vec::new();
        for entry in self.sessions_by_user.scan_prefix(user_id.as_bytes()) {
            let (_, id) = entry?;
            if let Some(session) = self.read_session(uuid_from(SESSIONS_BY_USER, &id)?)? {
                found.push(session);
            }
        }
        Ok(found)
    }

    async fn start_session_with(
        &self,
        session: &SessionRecord,
        max_sessions: usize,
        sign_in: &UserChange<'_>,
    ) -> Result<Changed<(), ()>, StoreError> {
        self.durably(|| self.start_session_now(session, max_sessions, sign_in))
            .await
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
        self.durably(|| {
            let _writing = self.writing();
            let key = session_id.as_bytes();
            loop {
                let Some(current) = self.sessions.get(key)? else {
                    return Ok(RotateOutcome::Unknown);
                };
                let mut session: SessionRecord = decode(SESSIONS, &current)?;
                let Some(user) = self.read_user(session.user_id)? else {
                    return Ok(RotateOutcome::Unknown);
                };
                if user.state == AccountState::Disabled {
                    return Ok(RotateOutcome::Disabled);
                }
                if session.refresh_expires_at <= now {
                    return Ok(RotateOutcome::Expired);
                }
                if generation < session.refresh_generation {
                    // An old token came back: whoever holds the pair may be a thief.
                    self.end_sessions_now(&[session.id])?;
                    return Ok(RotateOutcome::Reused {
                        session_id: session.id,
                        user_id: session.user_id,
                    });
                }
                if generation > session.refresh_generation
                    || verify_slices_are_equal(presented, &session.refresh_hash).is_err()
                {
                    return Ok(RotateOutcome::Unknown);
                }
                session.refresh_hash = *new;
                session.refresh_generation = generation + 1;
                // However often it is refreshed, a session ends `session_max_age` after sign-in.
                session.refresh_expires_at =
                    new_expires_at.min(session.created_at.saturating_add(session_max_age));
                session.last_seen_at = session.last_seen_at.max(now);
                // The session keeps its older expiry entry: the sweeper moves it when it is due.
                let swapped =
                    self.sessions
                        .compare_and_swap(key, Some(current), Some(encode(&session)))?;
                if swapped.is_ok() {
                    return Ok(RotateOutcome::Rotated {
                        session,
                        user: Box::new(user),
                    });
                }
                // Changed meanwhile (another rotation, a logout): decide again on what is there.
            }
        })
        .await
    }

    async fn legacy_refresh(&self, old: &[u8; 32], now: i64) -> Result<LegacyRefresh, StoreError> {
        self.durably(|| {
            let Some(record) = self.refresh_tokens.get(old)? else {
                return Ok(LegacyRefresh::Refused(RotateOutcome::Unknown));
            };
            let record: RefreshRecord = decode(REFRESH_TOKENS, &record)?;
            if record.expires_at <= now {
                return Ok(LegacyRefresh::Refused(RotateOutcome::Expired));
            }
            let Some(session) = self.read_session(record.session_id)? else {
                return Ok(LegacyRefresh::Refused(RotateOutcome::Unknown));
            };
            if &session.refresh_hash == old {
                return Ok(LegacyRefresh::Current {
                    session_id: session.id,
                    generation: session.refresh_generation,
                });
            }
            // A token of format 1 that was rotated already.
            self.end_sessions_now(&[session.id])?;
            Ok(LegacyRefresh::Refused(RotateOutcome::Reused {
                session_id: session.id,
                user_id: session.user_id,
            }))
        })
        .await
    }

    async fn end_sessions(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        self.durably(|| self.end_sessions_now(ids)).await
    }
}

impl Store {
    /// Starts a session, not yet durably.
    fn start_session_now(
        &self,
        session: &SessionRecord,
        max_sessions: usize,
        sign_in: &UserChange<'_>,
    ) -> Result<Changed<(), ()>, StoreError> {
        self.index_expiry(
            ExpiryKind::Session,
            session.id.as_bytes(),
            session.refresh_expires_at,
        )?;
        let session_bytes = encode(session);
        let index_key = session_by_user_key(&session.user_id, &session.device_id);
        self.with_account(session.user_id, |t, found| {
            let Some(before) = t.user(session.user_id)? else {
                return Ok(Changed::Missing);
            };
            let mut user = before.clone();
            if let Err(refused) = sign_in(&mut user) {
                return Ok(Changed::Refused(refused));
            }
            t.users.insert(user.id.as_bytes(), encode(&user))?;
            // The device's session before this one, then the oldest past the cap.
            let mut ending = Vec::new();
            let replaced = t.sessions_by_user.get(&index_key)?;
            let mut others = Vec::new();
            for id in &found.sessions {
                match t.session(*id)? {
                    Some(s) if replaced.as_deref() == Some(id.as_bytes().as_slice()) => {
                        ending.push(s.id);
                    }
                    Some(s) => others.push((s.created_at, s.id)),
                    None => {}
                }
            }
            others.sort_unstable();
            let over = (others.len() + 1).saturating_sub(max_sessions.max(1));
            ending.extend(others.iter().take(over).map(|(_, id)| *id));
            let ended = t.end_sessions(&ending)?;
            t.sessions
                .insert(session.id.as_bytes(), session_bytes.as_slice())?;
            t.sessions_by_user
                .insert(index_key.as_slice(), session.id.as_bytes())?;
            count_sessions(t.meta, 1)?;
            Ok(Changed::Done {
                user: Box::new(user),
                value: (),
                ended,
            })
        })
    }

    /// The user whose session `id` is, read without decoding the rest of the record.
    fn owner_of(&self, id: Uuid) -> Result<Option<Uuid>, StoreError> {
        /// The one field of a [`SessionRecord`] that `owner_of` reads.
        #[derive(Deserialize)]
        struct Owner {
            user_id: Uuid,
        }
        self.sessions
            .get(id.as_bytes())?
            .map(|bytes| decode::<Owner>(SESSIONS, &bytes).map(|o| o.user_id))
            .transpose()
    }

    fn read_session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions
            .get(id.as_bytes())?
            .map(|bytes| decode(SESSIONS, &bytes))
            .transpose()
    }

    /// Ends these sessions, not yet durably.
    pub(super) fn end_sessions_now(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let _writing = self.writing();
        tx_result(
            (&self.sessions, &self.sessions_by_user, &self.meta).transaction(
                |(sessions, by_user, meta)| {
                    let mut ended = 0;
                    for id in ids {
                        if let Some(old) = sessions.remove(id.as_bytes())? {
                            ended += 1;
                            let old: SessionRecord = decode(SESSIONS, &old).map_err(Tx::Abort)?;
                            let key = session_by_user_key(&old.user_id, &old.device_id);
                            // The index may already point at a newer session of the same device.
                            if by_user.get(&key)?.as_deref() == Some(id.as_bytes().as_slice()) {
                                by_user.remove(key)?;
                            }
                        }
                    }
                    count_sessions(meta, -ended)?;
                    Ok(())
                },
            ),
        )
    }
}

/// Adds `change` to the count of device sessions in `meta`, in the transaction that adds or
/// removes them, so the count never disagrees with the tree, crash or not.
pub(super) fn count_sessions(meta: &TransactionalTree, change: i64) -> Result<(), Tx<StoreError>> {
    if change == 0 {
        return Ok(());
    }
    let now = match meta.get(META_SESSION_COUNT)? {
        None => 0,
        Some(bytes) => read_count(&bytes).map_err(Tx::Abort)?,
    };
    meta.insert(
        META_SESSION_COUNT,
        &now.saturating_add_signed(change).to_be_bytes(),
    )?;
    Ok(())
}

/// The value of `meta`'s `session_count`.
fn read_count(bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| super::corrupt(META, "the session count is not 8 bytes"))
}

impl Store {
    /// Starts `session` as a sign-in would, with no cap and no check: for tests and
    /// benchmarks. An error if its user does not exist.
    /// Not durable by itself: seeding flushes once at its end ([`Store::flush_blocking`]).
    #[doc(hidden)]
    pub fn start_session_unchecked(&self, session: &SessionRecord) -> Result<(), StoreError> {
        match self.start_session_now(session, usize::MAX, &|_| Ok(()))? {
            Changed::Done { .. } => Ok(()),
            _ => Err(super::corrupt(USERS, "the session's user does not exist")),
        }
    }

    /// Writes a refresh token the way storage format 1 did (its expiry entry, then the
    /// record), for tests of the migration from that format.
    #[doc(hidden)]
    pub fn put_format_1_refresh_token(
        &self,
        hash: &[u8; 32],
        record: &RefreshRecord,
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.index_expiry(ExpiryKind::RefreshToken, hash, record.expires_at)?;
        self.refresh_tokens.insert(hash, encode(record))?;
        Ok(())
    }

    /// How many device sessions exist: one key read (see [`count_sessions`]).
    pub fn session_count(&self) -> Result<u64, StoreError> {
        match self.meta.get(META_SESSION_COUNT)? {
            Some(bytes) => read_count(&bytes),
            // Every store is given its count when it opens.
            None => Err(super::corrupt(META, "no session count")),
        }
    }
}

#[async_trait::async_trait]
impl SigningKeyStore for Store {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.signing_keys
            .iter()
            .map(|entry| {
                let (_, bytes) = entry?;
                decode(SIGNING_KEYS, &bytes)
            })
            .collect()
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            self.signing_keys.insert(key.kid.as_bytes(), encode(key))?;
            Ok(())
        })
        .await
    }

    async fn remove_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            self.signing_keys.remove(kid.as_bytes())?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::UserRecord;
    use crate::store::{AccountChange, Ends, UserStore};

    /// A new session of `user` on `device`.
    fn session_on(user: &UserRecord, device: &str) -> SessionRecord {
        SessionRecord {
            id: Uuid::new_v4(),
            user_id: user.id,
            device_id: device.into(),
            name: Some(format!("Ada's {device}")),
            ip_address: None,
            user_agent: None,
            created_at: 1,
            last_seen_at: 1,
            refresh_hash: [7; 32],
            refresh_expires_at: 100,
            refresh_generation: 3,
        }
    }

    #[tokio::test]
    async fn the_session_count_follows_starts_replacements_ends_and_a_password_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.session_count().unwrap(), 0);
        let ada = UserRecord::new("ada@example.com", "ada", "$argon2id$stub".into(), 1);
        store.insert_user(&ada).await.unwrap();
        let (laptop, phone) = (session_on(&ada, "laptop"), session_on(&ada, "phone"));
        store.start_session_unchecked(&laptop).unwrap();
        store.start_session_unchecked(&phone).unwrap();
        assert_eq!(store.session_count().unwrap(), 2);
        // The same device signing in again replaces its session.
        let laptop_again = session_on(&ada, "laptop");
        let started = (&store as &dyn crate::store::Storage)
            .start_session(&laptop_again, 10, |_| Ok::<_, ()>(()))
            .await
            .unwrap();
        assert!(
            matches!(&started, Changed::Done { ended, .. } if ended == &[laptop.id]),
            "{started:?}"
        );
        assert_eq!(store.session_count().unwrap(), 2);
        // A session already gone, or named twice, is not counted again.
        store
            .end_sessions(&[laptop.id, phone.id, phone.id, Uuid::new_v4()])
            .await
            .unwrap();
        assert_eq!(store.session_count().unwrap(), 1);
        // A password change keeps the caller's session and ends the others.
        store
            .start_session_unchecked(&session_on(&ada, "tablet"))
            .unwrap();
        store
            .start_session_unchecked(&session_on(&ada, "tv"))
            .unwrap();
        assert_eq!(store.session_count().unwrap(), 3);
        let how = AccountChange::ending(Ends::Everything {
            keep: Some(laptop_again.id),
        });
        let changed = (&store as &dyn crate::store::Storage)
            .change_user(ada.id, how, |u| {
                u.password_hash = "$argon2id$new".into();
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        let Changed::Done { user, ended, .. } = changed else {
            panic!("{changed:?}");
        };
        assert_eq!(ended.len(), 2);
        assert_eq!(
            user.stamp,
            ada.stamp + 1,
            "a change that ends sessions moves the stamp"
        );
        assert_eq!(store.session_count().unwrap(), 1);
        assert_eq!(store.sessions.len(), 1);
        drop(store);
        assert_eq!(Store::open(&path).unwrap().session_count().unwrap(), 1);
    }

    #[tokio::test]
    async fn past_the_cap_a_sign_in_ends_the_oldest_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let ada = UserRecord::new("ada@example.com", "ada", "$argon2id$stub".into(), 1);
        store.insert_user(&ada).await.unwrap();
        let mut made = Vec::new();
        for n in 0..5 {
            let session = SessionRecord {
                created_at: n,
                ..session_on(&ada, &format!("device-{n}"))
            };
            (&store as &dyn crate::store::Storage)
                .start_session(&session, 3, |_| Ok::<_, ()>(()))
                .await
                .unwrap();
            made.push(session.id);
        }
        let left: Vec<Uuid> = store
            .sessions_of(ada.id)
            .await
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(left.len(), 3);
        for id in &made[2..] {
            assert!(left.contains(id), "the three newest stay");
        }
        assert_eq!(store.session_count().unwrap(), 3);
    }

    #[tokio::test]
    async fn the_owner_of_a_session_is_read_while_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let user = UserRecord::new("ada@example.com", "ada", "$argon2id$stub".into(), 1);
        store.insert_user(&user).await.unwrap();
        let session = session_on(&user, "laptop");
        store.start_session_unchecked(&session).unwrap();
        assert_eq!(
            store.session_owner(session.id).await.unwrap(),
            Some(user.id)
        );
        assert_eq!(store.session_owner(Uuid::new_v4()).await.unwrap(), None);
        store.end_sessions(&[session.id]).await.unwrap();
        assert_eq!(store.session_owner(session.id).await.unwrap(), None);
    }
}
