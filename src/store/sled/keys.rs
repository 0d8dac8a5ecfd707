//! Every sled tree Keyhold keeps, and the layout of its keys and values.
//!
//! Rules that hold for every tree:
//! - integers inside keys are big-endian, so that a range scan runs in numeric (time) order;
//! - every value that is a record starts with a one-byte record version, so a later binary can
//!   read an older record and migrate it;
//! - a tree is named for what maps to what (`users_by_email`), never for a type.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `format_version` | `u32` BE: the storage format of the whole database ([`FORMAT_VERSION`]) |
//! | `meta` | `ready_probe` | `i64` BE: Unix nanoseconds of the last `/readyz` write probe |
//! | `meta` | `session_count` | `u64` BE: how many records `sessions` holds, changed in the same transaction as they are |
//! | `meta` | `secrets_sealed` | `[1]` once the TOTP secrets older versions stored in clear have been sealed |
//! | `users` | user id (16-byte UUID) | `UserRecord` |
//! | `users_by_email` | normalised e-mail address (UTF-8) | user id (16 bytes) |
//! | `users_by_username` | lower-cased username (UTF-8) | user id (16 bytes) |
//! | `sessions` | session id (16 bytes) | `SessionRecord` (one signed-in device) |
//! | `sessions_by_user` | user id (16) ‖ device id (UTF-8) | session id (16 bytes) |
//! | `refresh_tokens` | HMAC-SHA256 of a refresh token of format 1 (32 bytes); nothing new is written since format 2 | `RefreshRecord` |
//! | `email_codes` | HMAC-SHA256 of the verification code (32 bytes) | `EmailCodeRecord` |
//! | `signing_keys` | key id (`kid`, UTF-8) | `SigningKeyRecord` (Ed25519, PKCS#8) |
//! | `challenges` | challenge id (16 bytes) | `ChallengeRecord`: a pending sign-in second factor or step-up code; its `Revision` is the first 8 bytes of the SHA-256 of the stored value |
//! | `step_ups_by_user` | user id (16) ‖ reason (UTF-8) | challenge id (16 bytes): the one live step-up code per reason (and the pending password change, reason `PASSWORD_CHANGE`) |
//! | `challenges_by_user` | user id (16) ‖ challenge id (16) | empty: every challenge of a user, to end them all at once |
//! | `factor_failures` | user id (16 bytes) | `FactorFailuresRecord`: the account's wrong second-factor codes in the current window |
//! | `reset_codes` | HMAC-SHA256 of the reset code (32 bytes) | `ResetCodeRecord` |
//! | `reset_by_user` | user id (16 bytes) | keyed hash of the user's one live reset code (32 bytes) |
//! | `audit` | time (`u64` BE, Unix seconds) ‖ id (`u64` BE) | `AuditRecord`: one security event |
//! | `mail_queue` | message id (`u64` BE, sled's `generate_id` at queueing, so in order) | `MailQueueRecord` (the message sealed); a claim moves its `next_attempt_at` on by the lease, by compare-and-swap |
//! | `expiry` | expiry time (`u64` BE, Unix seconds) ‖ kind (1 byte) ‖ the record's key | empty: what falls due when, for the sweeper |
//!
//! Records are written as [`super::records::encode`] says: the version byte, then JSON of the
//! `crate::domain::records` type. The abuse limits are not kept here (they live in the process:
//! `crate::limits`).
//!
//! Every record that expires (e-mail and reset codes, refresh tokens of format 1, device
//! sessions, challenges) gets an `expiry` entry written *before* the record itself, so no record is
//! ever without one; an entry whose record is gone, or was given a later expiry, is simply
//! dropped by the sweeper, which always checks the record's own expiry before removing it.
//!
//! Codes and tokens are never stored in clear: only their keyed hash, with a key kept outside
//! the database (`storage.path/keys/hmac.key`), so a copy of the database alone does not let
//! anyone test guesses. A user id prefix in `sessions_by_user` makes "every device of a user"
//! one range scan.

/// The tree of database-wide facts.
pub const META: &str = "meta";

/// `meta` key: the storage format version, a `u32` big-endian.
pub const META_FORMAT_VERSION: &[u8] = b"format_version";

/// `meta` key: written by the readiness probe to prove the store takes writes.
pub const META_READY_PROBE: &[u8] = b"ready_probe";

/// `meta` key: the number of device sessions, a `u64` big-endian (since format 3).
pub const META_SESSION_COUNT: &[u8] = b"session_count";

/// `meta` key: present once the TOTP secrets that older versions stored in clear have been
/// sealed, so that start-up does not read every account again.
pub const META_SECRETS_SEALED: &[u8] = b"secrets_sealed";
/// `meta`'s `key_fingerprint`: the fingerprint of the `hmac.key` the store is used with.
pub const META_KEY_FINGERPRINT: &[u8] = b"key_fingerprint";

pub const USERS: &str = "users";
pub const USERS_BY_EMAIL: &str = "users_by_email";
pub const USERS_BY_USERNAME: &str = "users_by_username";
pub const SESSIONS: &str = "sessions";
pub const SESSIONS_BY_USER: &str = "sessions_by_user";
pub const REFRESH_TOKENS: &str = "refresh_tokens";
pub const EMAIL_CODES: &str = "email_codes";
pub const SIGNING_KEYS: &str = "signing_keys";
pub const FACTOR_FAILURES: &str = "factor_failures";
pub const CHALLENGES: &str = "challenges";
pub const STEP_UPS_BY_USER: &str = "step_ups_by_user";
pub const CHALLENGES_BY_USER: &str = "challenges_by_user";
pub const RESET_CODES: &str = "reset_codes";
pub const RESET_BY_USER: &str = "reset_by_user";
/// Passkey sign-in ceremonies: id (16 bytes) -> `CeremonyRecord`.
pub const CEREMONIES: &str = "ceremonies";

pub const EXPIRY: &str = "expiry";
pub const MAIL_QUEUE: &str = "mail_queue";
pub const AUDIT: &str = "audit";

/// What an `expiry` entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExpiryKind {
    EmailCode = 1,
    ResetCode = 2,
    RefreshToken = 3,
    Session = 4,
    Challenge = 5,
    Ceremony = 6,
}

impl ExpiryKind {
    pub fn from_byte(b: u8) -> Option<ExpiryKind> {
        Some(match b {
            1 => ExpiryKind::EmailCode,
            2 => ExpiryKind::ResetCode,
            3 => ExpiryKind::RefreshToken,
            4 => ExpiryKind::Session,
            5 => ExpiryKind::Challenge,
            6 => ExpiryKind::Ceremony,
            _ => return None,
        })
    }
}

/// `expiry` key: time first, big-endian, so a range scan from the start finds what is due.
pub fn expiry_key(at: i64, kind: ExpiryKind, id: &[u8]) -> Vec<u8> {
    let mut key = u64::try_from(at.max(0)).unwrap_or(0).to_be_bytes().to_vec();
    key.push(kind as u8);
    key.extend_from_slice(id);
    key
}

/// `challenges_by_user` key: user id ‖ challenge id.
pub fn challenge_by_user_key(user_id: &uuid::Uuid, challenge_id: &uuid::Uuid) -> Vec<u8> {
    let mut key = user_id.as_bytes().to_vec();
    key.extend_from_slice(challenge_id.as_bytes());
    key
}

/// `step_ups_by_user` key: user id ‖ reason.
pub fn step_up_key(user_id: &uuid::Uuid, reason: &str) -> Vec<u8> {
    let mut key = user_id.as_bytes().to_vec();
    key.extend_from_slice(reason.as_bytes());
    key
}

/// `sessions_by_user` key: user id ‖ device id.
pub fn session_by_user_key(user_id: &uuid::Uuid, device_id: &str) -> Vec<u8> {
    let mut key = user_id.as_bytes().to_vec();
    key.extend_from_slice(device_id.as_bytes());
    key
}

/// The storage format this binary reads and writes. Raise it only together with a migration
/// from the previous one, run when the store opens.
///
/// - 1: the first.
/// - 2: a refresh token names its device session and generation under a MAC, so a rotation
///   rewrites the session record alone; `refresh_tokens` only holds tokens of format 1.
/// - 3: `meta` keeps the number of device sessions (`session_count`), so counting them
///   (every `/metrics` scrape) reads one key instead of walking, and caching, every session.
///   Opening an older store counts them once.
pub const FORMAT_VERSION: u32 = 3;
