//! Sign-in, device sessions and their tokens: login, newToken, logout, sessions, and
//! checking the access token of every authenticated request.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use super::audit::{Event, Subject};
use super::limits::Limit;
use super::secrets::{Secrets, random_bytes};
use super::two_factor::LoginOutcome;
use super::{Auth, Caller, Origin, seconds};
use crate::domain::Email;
use crate::domain::records::{AccountState, SessionRecord, UserRecord};
use crate::error::{Error, Result};
use crate::store::{AccountChange, Changed, Ends, LegacyRefresh, RotateOutcome};

/// Purpose tag of refresh tokens in the keyed hash.
pub const REFRESH_TOKEN: &str = "refresh-token";
/// Purpose of the MAC inside a refresh token.
const REFRESH_TOKEN_TAG: &str = "refresh-token-tag";
/// First byte of a refresh token that names its session (storage format 2 on).
const REFRESH_TOKEN_VERSION: u8 = 2;
/// Version, session id, generation, 16 random bytes.
const REFRESH_TOKEN_BODY: usize = 1 + 16 + 8 + 16;
/// The body and the first 16 bytes of its MAC.
const REFRESH_TOKEN_BYTES: usize = REFRESH_TOKEN_BODY + 16;
/// The longest client-chosen device id and device name.
const MAX_DEVICE_TEXT: usize = 128;

/// What the client says about its device at sign-in.
#[derive(Debug, Clone, Default)]
pub struct DeviceInput {
    pub device_id: Option<String>,
    pub name: Option<String>,
}

/// A completed sign-in (or refresh): the account, the device session and its tokens.
#[derive(Debug)]
pub struct SignedIn {
    pub user: UserRecord,
    pub session: SessionRecord,
    pub access_token: String,
    pub access_expires_at: i64,
    pub refresh_token: String,
    /// The sign-in before this one.
    pub last_login_at: Option<i64>,
    pub current_login_at: Option<i64>,
}

/// Which sessions `logout` ends.
#[derive(Debug, Clone)]
pub enum LogoutTarget {
    /// The caller's own.
    Own,
    /// Another of the caller's devices.
    Device(String),
    /// Every device of the caller.
    All,
}

/// A new refresh token for generation `generation` of device session `session_id`, and the
/// keyed hash that the session stores for it.
///
/// Its bytes, base64url: version ‖ session id ‖ generation (`u64` BE) ‖ 16 random bytes ‖ the
/// first 16 bytes of an HMAC over all of them. The MAC makes the session and generation
/// trustworthy, so the session record alone tells the current token (same generation, same
/// keyed hash) from a rotated one coming back (older generation): one read and one write per
/// rotation. The random bytes and the stored hash keep a leaked key from minting a current
/// token without the database too.
pub fn issue_refresh_token(
    secrets: &Secrets,
    session_id: Uuid,
    generation: u64,
) -> (String, [u8; 32]) {
    let mut bytes = Vec::with_capacity(REFRESH_TOKEN_BYTES);
    bytes.push(REFRESH_TOKEN_VERSION);
    bytes.extend_from_slice(session_id.as_bytes());
    bytes.extend_from_slice(&generation.to_be_bytes());
    bytes.extend_from_slice(&random_bytes::<16>());
    let tag = secrets.mac(REFRESH_TOKEN_TAG, &bytes);
    bytes.extend_from_slice(&tag[..16]);
    let token = URL_SAFE_NO_PAD.encode(&bytes);
    let hash = secrets.keyed_hash(REFRESH_TOKEN, &token);
    (token, hash)
}

/// The session and generation that a refresh token names, if Keyhold made it. `None` for
/// anything else, including tokens of storage format 1 (32 random bytes).
pub fn named_by_refresh_token(secrets: &Secrets, token: &str) -> Option<(Uuid, u64)> {
    if token.len() != REFRESH_TOKEN_BYTES.div_ceil(3) * 4 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != REFRESH_TOKEN_BYTES || bytes[0] != REFRESH_TOKEN_VERSION {
        return None;
    }
    let (body, tag) = bytes.split_at(REFRESH_TOKEN_BODY);
    let expected = secrets.mac(REFRESH_TOKEN_TAG, body);
    verify_slices_are_equal(tag, &expected[..16]).ok()?;
    let session_id = Uuid::from_slice(&body[1..17]).ok()?;
    let generation = u64::from_be_bytes(body[17..25].try_into().ok()?);
    Some((session_id, generation))
}

pub(crate) fn device_text(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.chars().count() > MAX_DEVICE_TEXT || v.chars().any(char::is_control) => {
            Err(Error::bad_input(
                field,
                format!("must be at most {MAX_DEVICE_TEXT} printable characters"),
            ))
        }
        Some(v) => Ok(Some(v)),
    }
}

impl Auth {
    /// Signs in with address and password. A wrong address and a wrong password are the same
    /// `INVALID_CREDENTIALS`, in the same time.
    pub async fn login(
        &self,
        email: &Email,
        password: String,
        device: DeviceInput,
        origin: &Origin,
    ) -> Result<LoginOutcome> {
        let device_id = device_text("deviceInfo.deviceId", device.device_id)?;
        let name = device_text("deviceInfo.name", device.name)?;
        let now = self.now();
        let requested_device = device_id.clone();
        let who = Subject {
            user_id: None,
            email: Some(email.as_str()),
            ip: origin.ip,
            device: requested_device.as_deref(),
        };
        // The account's wait is checked before the password: a right one does not skip it.
        let allowed = match self.hit_network(Limit::LoginPerIp, origin.ip, now).await? {
            Ok(()) => self.store.check_lockout(email.as_str(), now).await?,
            refused => refused,
        };
        if let Err(refused) = allowed {
            return Err(self.rate_limited(refused, who, "login").await);
        }
        if password.chars().count() > super::passwords::MAX_LENGTH {
            // Never hash unbounded input; no stored password can be this long.
            self.store
                .record_sign_in_failure(email.as_str(), now)
                .await?;
            self.audit(Event::SignInFailed, who, "INVALID_CREDENTIALS")
                .await;
            return Err(Error::InvalidCredentials);
        }
        let user = self.store.user_by_email(email.as_str()).await?;
        let verified = self
            .passwords
            .verify(
                password.clone(),
                user.as_ref().map(|u| u.password_hash.clone()),
            )
            .await?;
        let Some(user) = user.filter(|_| verified.matches) else {
            // Unknown addresses count too, so the limit says nothing about which exist.
            self.store
                .record_sign_in_failure(email.as_str(), now)
                .await?;
            self.audit(Event::SignInFailed, who, "INVALID_CREDENTIALS")
                .await;
            return Err(Error::InvalidCredentials);
        };
        let who = Subject {
            user_id: Some(user.id),
            ..who
        };
        self.store.record_sign_in_success(email.as_str()).await?;
        self.check_may_sign_in(&user, who.clone()).await?;
        // Decided on the account as read before the hash: if it changes meanwhile (a new
        // password, a disable, 2FA on or off), this sign-in does not finish.
        let stamp = user.stamp;
        let new_hash = match verified.needs_rehash {
            true => Some(self.passwords.hash(password).await?),
            false => None,
        };
        let device_id = device_id.unwrap_or_else(|| Uuid::new_v4().to_string());
        if user.two_factor.is_some() {
            if let Some(new_hash) = new_hash {
                let old_hash = user.password_hash.clone();
                // Only over the hash it was made from: never brings back an older password.
                self.store
                    .change_user(user.id, AccountChange::ending(Ends::Nothing), |u| {
                        if u.password_hash == old_hash {
                            u.password_hash = new_hash.clone();
                        }
                        Ok::<_, Error>(())
                    })
                    .await?;
            }
            let pending = self
                .challenge_sign_in(user, device_id, name, origin)
                .await?;
            self.audit(Event::TwoFactorCodeSent, who, "sign_in").await;
            return Ok(LoginOutcome::SecondFactor(Box::new(pending)));
        }
        let who = Subject {
            device: Some(&device_id),
            ..who
        };
        let signed_in = self
            .open_session(user.id, device_id.clone(), name, origin, |u| {
                if u.stamp != stamp {
                    return Err(Error::InvalidCredentials);
                }
                if let Some(hash) = &new_hash {
                    u.password_hash = hash.clone();
                }
                Ok(())
            })
            .await;
        match &signed_in {
            Ok(_) => self.audit(Event::SignedIn, who, "ok").await,
            Err(e) => self.audit(Event::SignInFailed, who, e.code()).await,
        }
        Ok(LoginOutcome::SignedIn(Box::new(signed_in?)))
    }

    /// A disabled account, or one whose address is not verified yet (while registration
    /// requires it), does not sign in: audited as a failed sign-in.
    pub(crate) async fn check_may_sign_in(
        &self,
        user: &UserRecord,
        who: Subject<'_>,
    ) -> Result<()> {
        let refused = if user.state == AccountState::Disabled {
            Error::AccountDisabled
        } else if !user.email_verified && self.config.registration.require_email_verification {
            Error::EmailNotVerified
        } else {
            return Ok(());
        };
        self.audit(Event::SignInFailed, who, refused.code()).await;
        Err(refused)
    }

    /// Starts a device session for the user (replacing the one the device had), durable
    /// before it returns, if `check` (on the account as it is then) lets it: a disabled
    /// account is refused here, whatever was read before.
    pub(crate) async fn open_session(
        &self,
        user_id: Uuid,
        device_id: String,
        name: Option<String>,
        origin: &Origin,
        check: impl Fn(&mut UserRecord) -> Result<()> + Send + Sync,
    ) -> Result<SignedIn> {
        let now = self.now();
        let id = Uuid::new_v4();
        let (refresh_token, refresh_hash) = issue_refresh_token(&self.secrets, id, 0);
        let session = SessionRecord {
            id,
            user_id,
            device_id,
            name,
            ip_address: origin.ip.map(|ip| ip.to_string()),
            user_agent: origin.user_agent.clone(),
            created_at: now,
            last_seen_at: now,
            refresh_hash,
            refresh_expires_at: self.refresh_expiry(now, now),
            refresh_generation: 0,
        };
        let started = self
            .store
            .start_session(&session, self.config.tokens.max_sessions_per_user, |u| {
                if u.state == AccountState::Disabled {
                    return Err(Error::AccountDisabled);
                }
                check(u)?;
                u.last_login_at = u.current_login_at;
                u.current_login_at = Some(now);
                Ok(())
            })
            .await?;
        let user = match started {
            // Deleted meanwhile.
            Changed::Missing => return Err(Error::InvalidCredentials),
            other => self.changed(other)?.0,
        };
        self.hand_out(user, session, refresh_token, now)
    }

    /// Issues the access token for a session that is in place, and marks it used.
    pub(crate) fn hand_out(
        &self,
        user: UserRecord,
        session: SessionRecord,
        refresh_token: String,
        now: i64,
    ) -> Result<SignedIn> {
        let (access_token, access_expires_at) = self.tokens.issue(user.id, session.id, now)?;
        self.touch(session.id, now);
        Ok(SignedIn {
            last_login_at: user.last_login_at,
            current_login_at: user.current_login_at,
            user,
            session,
            access_token,
            access_expires_at,
            refresh_token,
        })
    }

    /// When a refresh token handed out at `now` to a session that signed in at `created_at`
    /// expires: `tokens.refresh_ttl` on, but never past `tokens.session_max_age` from the
    /// sign-in.
    pub(crate) fn refresh_expiry(&self, created_at: i64, now: i64) -> i64 {
        (now + seconds(self.config.tokens.refresh_ttl))
            .min(created_at.saturating_add(seconds(self.config.tokens.session_max_age)))
    }

    /// Exchanges a refresh token for a new pair. A token that was already rotated ends its
    /// session: whoever presents it may have stolen it.
    pub async fn new_token(&self, refresh_token: &str) -> Result<SignedIn> {
        let now = self.now();
        let presented = refresh_token.trim();
        let presented_hash = self.secrets.keyed_hash(REFRESH_TOKEN, presented);
        let (session_id, generation) = match named_by_refresh_token(&self.secrets, presented) {
            Some(named) => named,
            // Handed out before storage format 2: found through its hash, once.
            None => match self.store.legacy_refresh(&presented_hash, now).await? {
                LegacyRefresh::Current {
                    session_id,
                    generation,
                } => (session_id, generation),
                LegacyRefresh::Refused(outcome) => return Err(self.refused(outcome).await),
            },
        };
        let next = generation.checked_add(1).ok_or(Error::InvalidToken)?;
        let (fresh, new) = issue_refresh_token(&self.secrets, session_id, next);
        let expires_at = now + seconds(self.config.tokens.refresh_ttl);
        // The account's state is checked in the same step: a disabled account's token is
        // refused as it is, not spent.
        let (session, user) = match self
            .store
            .rotate_refresh(
                session_id,
                generation,
                &presented_hash,
                &new,
                expires_at,
                seconds(self.config.tokens.session_max_age),
                now,
            )
            .await?
        {
            RotateOutcome::Rotated { session, user } => (session, *user),
            RotateOutcome::Disabled => return Err(Error::AccountDisabled),
            refused => return Err(self.refused(refused).await),
        };
        // The client drops the old token once it has the new one: the rotation must be durable.
        self.hand_out(user, session, fresh, now)
    }

    /// The error for a refresh token that did not rotate; a reused one has ended its session,
    /// which is audited and made durable first.
    async fn refused(&self, outcome: RotateOutcome) -> Error {
        if let RotateOutcome::Reused {
            session_id,
            user_id,
        } = outcome
        {
            self.audit(
                Event::RefreshTokenReuse,
                Subject::user(user_id),
                "session_ended",
            )
            .await;
            self.forget_sessions(&[session_id]);
            tracing::warn!(
                user = %user_id,
                session = %session_id,
                "a rotated refresh token was presented again: the device session is ended"
            );
        }
        Error::InvalidToken
    }

    /// Who holds `bearer`: the token must verify and its device session must still exist,
    /// so a logout takes effect at once.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Caller> {
        let (caller, now) = self.claimed(bearer)?;
        let owner = self
            .store
            .session_owner(caller.session_id)
            .await?
            .ok_or(Error::InvalidToken)?;
        if owner != caller.user_id {
            return Err(Error::InvalidToken);
        }
        self.touch(caller.session_id, now);
        Ok(caller)
    }

    /// The account of whoever holds `bearer`, checked as [`Auth::authenticate`] checks it,
    /// read with its session in one step.
    pub async fn signed_in_user(&self, bearer: Option<&str>) -> Result<UserRecord> {
        let (caller, now) = self.claimed(bearer)?;
        let user = self
            .store
            .session_user(caller.session_id)
            .await?
            .filter(|user| user.id == caller.user_id)
            .ok_or(Error::InvalidToken)?;
        self.touch(caller.session_id, now);
        Ok(user)
    }

    /// Who `bearer` says it is, if it verifies: not yet checked against the store.
    fn claimed(&self, bearer: Option<&str>) -> Result<(Caller, i64)> {
        let token = bearer.ok_or(Error::Unauthenticated)?;
        let now = self.now();
        let claims = self.tokens.verify(token, now).inspect_err(|_| {
            tracing::debug!("an access token did not verify");
        })?;
        let session_id = Uuid::parse_str(&claims.sid).map_err(|_| Error::InvalidToken)?;
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| Error::InvalidToken)?;
        Ok((
            Caller {
                user_id,
                session_id,
            },
            now,
        ))
    }

    /// Ends the caller's own session, another of its devices, or all of them. Returns the
    /// ended sessions.
    pub async fn logout(
        &self,
        caller: &Caller,
        target: LogoutTarget,
    ) -> Result<Vec<SessionRecord>> {
        let mine = self.store.sessions_of(caller.user_id).await?;
        let ended: Vec<SessionRecord> = match target {
            LogoutTarget::Own => mine
                .into_iter()
                .filter(|s| s.id == caller.session_id)
                .collect(),
            LogoutTarget::All => mine,
            LogoutTarget::Device(device_id) => {
                let found: Vec<_> = mine
                    .into_iter()
                    .filter(|s| s.device_id == device_id)
                    .collect();
                if found.is_empty() {
                    return Err(Error::bad_input(
                        "deviceInfo.deviceId",
                        "no device of yours is signed in with this id",
                    ));
                }
                found
            }
        };
        let ids: Vec<Uuid> = ended.iter().map(|s| s.id).collect();
        for session in &ended {
            self.audit(
                Event::LoggedOut,
                Subject {
                    device: Some(&session.device_id),
                    ..Subject::user(caller.user_id)
                },
                "ok",
            )
            .await;
        }
        self.store.end_sessions(&ids).await?;
        self.forget_sessions(&ids);
        Ok(ended)
    }

    /// The caller's device sessions, most recently used first, with `last_seen_at` as this
    /// process last saw them.
    pub async fn sessions(&self, caller: &Caller) -> Result<Vec<SessionRecord>> {
        let mut sessions = self.store.sessions_of(caller.user_id).await?;
        for s in &mut sessions {
            if let Some(seen) = self.last_seen(s.id) {
                s.last_seen_at = s.last_seen_at.max(seen);
            }
        }
        sessions.sort_by_key(|s| std::cmp::Reverse(s.last_seen_at));
        Ok(sessions)
    }
}
