//! Device sessions, their refresh tokens, and the keys that sign access tokens.

use super::*;
use crate::domain::records::*;
use uuid::Uuid;

/// What presenting a refresh token did.
#[derive(Debug)]
pub enum RotateOutcome {
    /// The token was current: it is now rotated, and the session holds the new one. `user`
    /// is the session's account, as it was read in the same step.
    Rotated {
        session: SessionRecord,
        user: Box<UserRecord>,
    },
    /// The session's account is disabled: its token is refused as it is, not spent, and
    /// nothing changes.
    Disabled,
    /// The token had already been rotated: its session has been ended.
    Reused {
        session_id: Uuid,
        user_id: Uuid,
    },
    Expired,
    Unknown,
}

/// What a refresh token of storage format 1 led to.
#[derive(Debug)]
pub enum LegacyRefresh {
    /// It is its session's current token, of this generation.
    Current { session_id: Uuid, generation: u64 },
    /// It is not current: `Reused` (the session is ended), `Expired` or `Unknown`.
    Refused(RotateOutcome),
}

/// Signed-in devices and their refresh tokens.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError>;
    /// The user whose session `id` is, if it exists: what every authenticated request asks,
    /// read without decoding the rest of the record.
    async fn session_owner(&self, id: Uuid) -> Result<Option<Uuid>, StoreError>;
    /// The account whose session `id` is, if both exist: what a request that needs the
    /// caller's account asks, in one step.
    async fn session_user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError>;
    async fn sessions_of(&self, user_id: Uuid) -> Result<Vec<SessionRecord>, StoreError>;
    /// Starts a device session for its user, replacing the one the same device had, in one
    /// transaction with `sign_in`'s change to the account (its sign-in times, maybe a new
    /// hash), under the account's lock. `sign_in` sees the account as it is and may refuse
    /// (disabled, or changed since the sign-in was decided): then nothing is written. Past
    /// `max_sessions`, the user's oldest sessions end. `Done`'s `ended` holds the replaced and
    /// the ended ones.
    /// The form a `dyn Storage` can take: callers use the typed `start_session` of
    /// `dyn Storage`.
    async fn start_session_with(
        &self,
        session: &SessionRecord,
        max_sessions: usize,
        sign_in: &UserChange<'_>,
    ) -> Result<Changed<(), ()>, StoreError>;
    /// Rotates the refresh token of generation `generation` of session `session_id`, whose
    /// keyed hash is `presented`, to the token with keyed hash `new` (generation + 1). An
    /// older generation ends the session. The new token expires at `new_expires_at`, but
    /// never later than `session_max_age` seconds after the session's sign-in. The session's
    /// account is read in the same step: a disabled one rotates and ends nothing
    /// (`Disabled`), and a missing one makes the token `Unknown`. One write: the session
    /// record, compared and swapped.
    #[allow(clippy::too_many_arguments)]
    async fn rotate_refresh(
        &self,
        session_id: Uuid,
        generation: u64,
        presented: &[u8; 32],
        new: &[u8; 32],
        new_expires_at: i64,
        session_max_age: i64,
        now: i64,
    ) -> Result<RotateOutcome, StoreError>;
    /// Finds the session of a refresh token handed out before tokens named their session
    /// (the sled backend's storage format 1), by its keyed hash `old`. A current one is
    /// returned for [`SessionStore::rotate_refresh`]; one that was already rotated ends its
    /// session.
    ///
    /// Only a backend that holds such tokens overrides this: any other (one that never
    /// stored format 1) knows none, and refuses every one as unknown.
    async fn legacy_refresh(
        &self,
        _old: &[u8; 32],
        _now: i64,
    ) -> Result<LegacyRefresh, StoreError> {
        Ok(LegacyRefresh::Refused(RotateOutcome::Unknown))
    }
    /// Ends these sessions. Their refresh tokens die with them.
    async fn end_sessions(&self, ids: &[Uuid]) -> Result<(), StoreError>;
}

/// The keys that sign access tokens.
#[async_trait::async_trait]
pub trait SigningKeyStore: Send + Sync {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// Adds or replaces a key record, durably.
    async fn add_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError>;
    async fn remove_signing_key(&self, kid: &str) -> Result<(), StoreError>;
}
