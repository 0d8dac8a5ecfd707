//! Forgotten-password codes, and applying a new password with everything it ends.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError as Tx;
use uuid::Uuid;

use super::keys::{ExpiryKind, RESET_CODES, SESSIONS, session_by_user_key, step_up_key};
use super::mail_queue::queue_in;
use super::records::{QueuedMail, ResetCodeRecord, SessionRecord, UserRecord, decode, encode};
use super::sessions::count_sessions;
use super::{Store, StoreError, tx_result, uuid_from};

pub trait PasswordStore {
    /// Stores a reset code as the user's only one, replacing an earlier code.
    fn put_reset_code(
        &self,
        hash: &[u8; 32],
        record: &ResetCodeRecord,
        mail: &[QueuedMail],
    ) -> Result<(), StoreError>;
    fn reset_code(&self, hash: &[u8; 32]) -> Result<Option<ResetCodeRecord>, StoreError>;
    /// Writes `user` (with its new password hash) and, in the same transaction, ends every
    /// device session of the user but `keep` (which is written as given, with a refresh token
    /// of `keep_refresh_expires_at`), every pending challenge and step-up code, and the reset
    /// code. With `reset_code`, does nothing (and returns `None`) unless that code is still
    /// there, so a reset code works once. Returns the ended sessions' ids.
    fn apply_password(
        &self,
        user: &UserRecord,
        keep: Option<&SessionRecord>,
        reset_code: Option<&[u8; 32]>,
        mail: &[QueuedMail],
    ) -> Result<Option<Vec<Uuid>>, StoreError>;
}

impl PasswordStore for Store {
    fn put_reset_code(
        &self,
        hash: &[u8; 32],
        record: &ResetCodeRecord,
        mail: &[QueuedMail],
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.index_expiry(ExpiryKind::ResetCode, hash, record.expires_at)?;
        let bytes = encode(record);
        tx_result(
            (&self.reset_codes, &self.reset_by_user, &self.mail_queue).transaction(
                |(codes, by_user, queue)| {
                    if let Some(old) = by_user.get(record.user_id.as_bytes())? {
                        codes.remove(old)?;
                    }
                    codes.insert(hash, bytes.as_slice())?;
                    by_user.insert(record.user_id.as_bytes(), hash)?;
                    queue_in(queue, mail)?;
                    Ok(())
                },
            ),
        )
    }

    fn reset_code(&self, hash: &[u8; 32]) -> Result<Option<ResetCodeRecord>, StoreError> {
        self.reset_codes
            .get(hash)?
            .map(|bytes| decode(RESET_CODES, &bytes))
            .transpose()
    }

    fn apply_password(
        &self,
        user: &UserRecord,
        keep: Option<&SessionRecord>,
        reset_code: Option<&[u8; 32]>,
        mail: &[QueuedMail],
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let _writing = self.writing();
        // sled cannot scan inside a transaction: gather what to end first.
        let mut sessions = Vec::new();
        for entry in self.sessions_by_user.scan_prefix(user.id.as_bytes()) {
            let (_, id) = entry?;
            let id = uuid_from(SESSIONS, &id)?;
            if keep.is_none_or(|k| k.id != id) {
                sessions.push(id);
            }
        }
        let challenge_keys: Vec<sled::IVec> = self
            .challenges_by_user
            .scan_prefix(user.id.as_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        let step_up_keys: Vec<sled::IVec> = self
            .step_ups_by_user
            .scan_prefix(step_up_key(&user.id, ""))
            .keys()
            .collect::<Result<_, _>>()?;
        if let Some(k) = keep {
            self.index_expiry(ExpiryKind::Session, k.id.as_bytes(), k.refresh_expires_at)?;
        }
        let user_bytes = encode(user);
        let kept = keep.map(|k| (k, encode(k)));
        // Ten trees: more than sled's tuple form takes, so the slice form.
        let trees = [
            self.users.clone(),
            self.sessions.clone(),
            self.sessions_by_user.clone(),
            self.challenges.clone(),
            self.challenges_by_user.clone(),
            self.step_ups_by_user.clone(),
            self.reset_codes.clone(),
            self.reset_by_user.clone(),
            self.mail_queue.clone(),
            self.meta.clone(),
        ];
        tx_result(trees.as_slice().transaction(|t| {
            let [
                users,
                sessions_tree,
                by_user,
                challenges,
                challenges_by_user,
                step_ups,
                reset_codes,
                reset_by_user,
                queue,
                meta,
            ] = t.as_slice()
            else {
                return Err(Tx::Abort(StoreError::Record {
                    tree: "*".into(),
                    what: "wrong number of trees".into(),
                }));
            };
            if let Some(code) = reset_code
                && reset_codes.get(code)?.is_none()
            {
                return Ok(false);
            }
            users.insert(user.id.as_bytes(), user_bytes.as_slice())?;
            let mut added = 0;
            for id in &sessions {
                if let Some(old) = sessions_tree.remove(id.as_bytes())? {
                    let old: SessionRecord = decode(SESSIONS, &old).map_err(Tx::Abort)?;
                    by_user.remove(session_by_user_key(&old.user_id, &old.device_id))?;
                    added -= 1;
                }
            }
            if let Some((k, session)) = &kept
                && sessions_tree
                    .insert(k.id.as_bytes(), session.as_slice())?
                    .is_none()
            {
                added += 1;
            }
            count_sessions(meta, added)?;
            for key in &challenge_keys {
                challenges.remove(&key[16..])?;
                challenges_by_user.remove(key)?;
            }
            for key in &step_up_keys {
                step_ups.remove(key)?;
            }
            if let Some(code) = reset_by_user.remove(user.id.as_bytes())? {
                reset_codes.remove(code)?;
            }
            queue_in(queue, mail)?;
            Ok(true)
        }))
        .map(|applied| applied.then_some(sessions))
    }
}
