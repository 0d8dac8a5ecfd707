//! One change to one account, whole: it holds the account's lock from the scan of what it
//! ends to the end of its transaction, reads the account inside that transaction, and writes
//! the account, its indexes, its sessions, challenges and codes together. sled cannot scan
//! inside a transaction, so the lock is what keeps a session or challenge added between the
//! scan and the commit from escaping: every writer of those takes it too.

use crate::store::{Changed, Ends};

use super::keys::{CHALLENGES, SESSIONS, USERS, session_by_user_key, step_up_key};
use super::mail_queue::queue_in;
use super::records::{ChallengeRecord, MailQueueRecord, SessionRecord, UserRecord, decode, encode};
use super::sessions::count_sessions;
use super::{Store, StoreError, tx_result, uuid_from};
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError as Tx, ConflictableTransactionResult, TransactionalTree,
};
use uuid::Uuid;

/// What the lock holder found of an account before its transaction.
#[derive(Default)]
pub(super) struct Found {
    /// Its device sessions' ids.
    pub sessions: Vec<Uuid>,
    /// Its `challenges_by_user` keys.
    pub challenges: Vec<sled::IVec>,
    /// Its `step_ups_by_user` keys.
    pub step_ups: Vec<sled::IVec>,
}

/// Every tree an account change may touch, inside its transaction.
pub(super) struct Trees<'a> {
    pub users: &'a TransactionalTree,
    pub by_email: &'a TransactionalTree,
    pub by_username: &'a TransactionalTree,
    pub sessions: &'a TransactionalTree,
    pub sessions_by_user: &'a TransactionalTree,
    pub challenges: &'a TransactionalTree,
    pub challenges_by_user: &'a TransactionalTree,
    pub step_ups: &'a TransactionalTree,
    pub reset_codes: &'a TransactionalTree,
    pub reset_by_user: &'a TransactionalTree,
    pub email_codes: &'a TransactionalTree,
    pub queue: &'a TransactionalTree,
    pub meta: &'a TransactionalTree,
}

type Step<T> = ConflictableTransactionResult<T, StoreError>;

pub(super) fn username_key(username: &str) -> Vec<u8> {
    username.to_lowercase().into_bytes()
}

impl Trees<'_> {
    pub fn user(&self, id: Uuid) -> Step<Option<UserRecord>> {
        match self.users.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(USERS, &bytes).map_err(Tx::Abort)?)),
            None => Ok(None),
        }
    }

    pub fn session(&self, id: Uuid) -> Step<Option<SessionRecord>> {
        match self.sessions.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(SESSIONS, &bytes).map_err(Tx::Abort)?)),
            None => Ok(None),
        }
    }

    /// Writes `after` over `before` (as read in this transaction), moving the address and
    /// username indexes when they changed. On a clash writes nothing and says which.
    pub fn write_user<T, E>(
        &self,
        before: &UserRecord,
        after: &UserRecord,
    ) -> Step<Option<Changed<T, E>>> {
        let id = after.id.as_bytes();
        if before.email != after.email {
            if self.by_email.get(after.email.as_bytes())?.is_some() {
                return Ok(Some(Changed::EmailTaken));
            }
            self.by_email.remove(before.email.as_bytes())?;
            self.by_email.insert(after.email.as_bytes(), id)?;
        }
        let (old_name, new_name) = (
            username_key(&before.username),
            username_key(&after.username),
        );
        if old_name != new_name {
            if self.by_username.get(&new_name)?.is_some() {
                return Ok(Some(Changed::UsernameTaken));
            }
            self.by_username.remove(old_name)?;
            self.by_username.insert(new_name, id)?;
        }
        self.users.insert(id, encode(after))?;
        Ok(None)
    }

    /// Ends these sessions; returns those that were there.
    pub fn end_sessions(&self, ids: &[Uuid]) -> Step<Vec<Uuid>> {
        let mut ended = Vec::new();
        for id in ids {
            if let Some(old) = self.sessions.remove(id.as_bytes())? {
                let old: SessionRecord = decode(SESSIONS, &old).map_err(Tx::Abort)?;
                let key = session_by_user_key(&old.user_id, &old.device_id);
                if self.sessions_by_user.get(&key)?.as_deref() == Some(id.as_bytes().as_slice()) {
                    self.sessions_by_user.remove(key)?;
                }
                ended.push(*id);
            }
        }
        count_sessions(self.meta, -i64::try_from(ended.len()).unwrap_or(i64::MAX))?;
        Ok(ended)
    }

    /// Ends what `ends` says of what was found; returns the ended sessions.
    pub fn end(&self, user_id: Uuid, found: &Found, ends: Ends) -> Step<Vec<Uuid>> {
        if ends == Ends::Nothing {
            return Ok(Vec::new());
        }
        let keep = ends.keep();
        let others: Vec<Uuid> = found
            .sessions
            .iter()
            .copied()
            .filter(|id| Some(*id) != keep)
            .collect();
        let ended = self.end_sessions(&others)?;
        if let Ends::Everything { .. } = ends {
            for key in &found.challenges {
                self.challenges.remove(&key[16..])?;
                self.challenges_by_user.remove(key)?;
            }
            for key in &found.step_ups {
                self.step_ups.remove(key)?;
            }
            if let Some(code) = self.reset_by_user.remove(user_id.as_bytes())? {
                self.reset_codes.remove(code)?;
            }
        }
        Ok(ended)
    }

    pub fn queue(&self, mail: &[MailQueueRecord]) -> Step<()> {
        Ok(queue_in(self.queue, mail)?)
    }
}

impl Store {
    /// Holds the account's lock, finds its sessions, challenges and step-up codes, and runs
    /// `step` in one transaction over every tree an account change may touch.
    pub(super) fn with_account<R>(
        &self,
        user_id: Uuid,
        step: impl Fn(&Trees<'_>, &Found) -> Step<R>,
    ) -> Result<R, StoreError> {
        let _account = self.account(&user_id);
        let _writing = self.writing();
        let found = self.found(user_id)?;
        let trees = [
            self.users.clone(),
            self.users_by_email.clone(),
            self.users_by_username.clone(),
            self.sessions.clone(),
            self.sessions_by_user.clone(),
            self.challenges.clone(),
            self.challenges_by_user.clone(),
            self.step_ups_by_user.clone(),
            self.reset_codes.clone(),
            self.reset_by_user.clone(),
            self.email_codes.clone(),
            self.mail_queue.clone(),
            self.meta.clone(),
        ];
        tx_result(trees.as_slice().transaction(|t| {
            let [
                users,
                by_email,
                by_username,
                sessions,
                sessions_by_user,
                challenges,
                challenges_by_user,
                step_ups,
                reset_codes,
                reset_by_user,
                email_codes,
                queue,
                meta,
            ] = t.as_slice()
            else {
                return Err(Tx::Abort(super::corrupt("*", "wrong number of trees")));
            };
            let trees = Trees {
                users,
                by_email,
                by_username,
                sessions,
                sessions_by_user,
                challenges,
                challenges_by_user,
                step_ups,
                reset_codes,
                reset_by_user,
                email_codes,
                queue,
                meta,
            };
            step(&trees, &found)
        }))
    }

    /// The account's sessions, challenges and step-up codes: read under its lock, so nothing
    /// is added to them before the transaction that follows.
    fn found(&self, user_id: Uuid) -> Result<Found, StoreError> {
        let mut found = Found::default();
        for entry in self.sessions_by_user.scan_prefix(user_id.as_bytes()) {
            let (_, id) = entry?;
            found.sessions.push(uuid_from(SESSIONS, &id)?);
        }
        found.challenges = self
            .challenges_by_user
            .scan_prefix(user_id.as_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        found.step_ups = self
            .step_ups_by_user
            .scan_prefix(step_up_key(&user_id, ""))
            .keys()
            .collect::<Result<_, _>>()?;
        Ok(found)
    }

    /// The live challenges of a user, oldest first, from what was found under its lock.
    pub(super) fn live_challenges(
        t: &Trees<'_>,
        found: &Found,
    ) -> Step<Vec<(sled::IVec, ChallengeRecord)>> {
        let mut live = Vec::new();
        for key in &found.challenges {
            match t.challenges.get(&key[16..])? {
                Some(bytes) => {
                    let c: ChallengeRecord = decode(CHALLENGES, &bytes).map_err(Tx::Abort)?;
                    live.push((key.clone(), c));
                }
                // Used or expired: only its index entry is left.
                None => {
                    t.challenges_by_user.remove(key)?;
                }
            }
        }
        live.sort_by_key(|(_, c)| (c.last_sent_at, c.expires_at));
        Ok(live)
    }
}
