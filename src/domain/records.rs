//! What Keyhold keeps: accounts, device sessions, challenges, codes, keys and queued mail.
//! The serde derives describe their shape; how a backend writes them is its own (the sled
//! backend: a version byte, then JSON).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether an account may sign in at all.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    #[default]
    Active,
    Disabled,
}

/// The optional profile fields of the contract's `UserProfile`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProfileRecord {
    pub first_name: String,
    pub last_name: String,
    pub middle_name: Option<String>,
    pub preferred_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub phone_number: Option<String>,
    pub country_code: Option<String>,
    pub address1: Option<String>,
    pub address2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip_code: Option<String>,
    pub country: Option<String>,
    pub opt_in_marketing: Option<bool>,
}

/// `users`: one account.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UserRecord {
    pub id: Uuid,
    /// Normalised (lower case); `users_by_email` maps it back.
    pub email: String,
    pub email_verified: bool,
    pub username: String,
    /// An argon2id PHC string.
    pub password_hash: String,
    #[serde(default)]
    pub state: AccountState,
    #[serde(default)]
    pub profile: ProfileRecord,
    /// Unix seconds.
    pub created_at: i64,
    /// The sign-in before the latest one (Unix seconds).
    #[serde(default)]
    pub last_login_at: Option<i64>,
    /// The latest sign-in (Unix seconds).
    #[serde(default)]
    pub current_login_at: Option<i64>,
    /// Two-factor sign-in, when on.
    #[serde(default)]
    pub two_factor: Option<TwoFactorRecord>,
    /// A TOTP secret shown to the user and waiting for its first code.
    #[serde(default)]
    pub pending_totp: Option<PendingTotpRecord>,
    /// Moves on with every change that ends the account's sessions (a new password, a
    /// disable, a change of address or of two-factor sign-in). A sign-in or challenge decided
    /// on an older stamp cannot finish.
    #[serde(default)]
    pub stamp: u64,
    /// A new address asked for and not yet verified: the account keeps signing in, and gets
    /// its mail, at `email` until the code mailed to this one is used.
    #[serde(default)]
    pub pending_email: Option<PendingEmailRecord>,
    /// The account's passkeys (WebAuthn credentials), in the order they were added.
    #[serde(default)]
    pub passkeys: Vec<PasskeyRecord>,
    /// A passkey registration started and not yet finished: the ceremony's state, kept here
    /// (not by the client) so that it is used once and expires, on whichever instance.
    #[serde(default)]
    pub pending_passkey: Option<PendingPasskeyRecord>,
}

/// One passkey of an account.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PasskeyRecord {
    /// The name its owner gave it ("laptop").
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    #[serde(default)]
    pub last_used_at: Option<i64>,
    /// What webauthn-rs keeps of the credential: its ID, public key, signature counter and
    /// backup state. A public key: nothing in it signs anybody in.
    pub credential: webauthn_rs::prelude::Passkey,
}

impl PasskeyRecord {
    /// The credential ID as the browser and the API write it (base64url, no padding).
    pub fn id(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.credential.cred_id().as_slice())
    }

    /// Whether the authenticator said, at its last use, that the passkey is backed up
    /// (synced to the owner's other devices).
    pub fn backed_up(&self) -> bool {
        webauthn_rs::prelude::Credential::from(self.credential.clone()).backup_state
    }
}

/// `ceremonies`: a passkey sign-in between its start and its finish, taken (and so ended) by
/// the first finish that names it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CeremonyRecord {
    pub id: Uuid,
    pub expires_at: i64,
    /// The account it was started for (by address); `None`: any passkey's account.
    pub user_id: Option<Uuid>,
    pub state: CeremonyState,
}

/// webauthn-rs's state of a passkey sign-in.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum CeremonyState {
    /// For the passkeys of one account.
    Account(webauthn_rs::prelude::PasskeyAuthentication),
    /// Usernameless: the passkey names its account.
    Discoverable(webauthn_rs::prelude::DiscoverableAuthentication),
    /// For an address with no account (or no passkey): no answer finishes it.
    Nobody,
}

/// A passkey registration between its two calls.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PendingPasskeyRecord {
    /// What `finishPasskeyRegistration` must name.
    pub challenge_id: Uuid,
    pub expires_at: i64,
    /// webauthn-rs's state of the ceremony: the challenge it sent, and what it asked for.
    pub state: webauthn_rs::prelude::PasskeyRegistration,
}

/// An address change waiting for the code mailed to the new address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PendingEmailRecord {
    /// Normalised, like `UserRecord::email`.
    pub email: String,
    /// The device session that asked: it stays signed in when the change applies.
    #[serde(default)]
    pub session_id: Option<Uuid>,
    pub requested_at: i64,
}

impl UserRecord {
    /// A new active account with no profile, no sign-in yet and no second factor.
    pub fn new(email: &str, username: &str, password_hash: String, created_at: i64) -> UserRecord {
        UserRecord {
            id: Uuid::new_v4(),
            email: email.to_string(),
            email_verified: false,
            username: username.to_string(),
            password_hash,
            state: AccountState::Active,
            profile: ProfileRecord::default(),
            created_at,
            last_login_at: None,
            current_login_at: None,
            two_factor: None,
            pending_totp: None,
            stamp: 0,
            pending_email: None,
            passkeys: Vec::new(),
            pending_passkey: None,
        }
    }
}

/// The second factor a user signs in with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactor {
    Email,
    Totp,
}

/// Two-factor sign-in of a user.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct TwoFactorRecord {
    pub method: SecondFactor,
    /// The TOTP secret (base32), for the TOTP method.
    #[serde(default)]
    pub totp_secret: Option<String>,
    /// The last TOTP time step accepted: a code of this step or an older one never works again.
    #[serde(default)]
    pub totp_last_step: Option<u64>,
    /// Keyed hashes of the unused recovery codes.
    #[serde(default)]
    pub recovery_codes: Vec<[u8; 32]>,
    pub enabled_at: i64,
}

impl std::fmt::Debug for TwoFactorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoFactorRecord")
            .field("method", &self.method)
            .field("recovery_codes_left", &self.recovery_codes.len())
            .finish_non_exhaustive()
    }
}

/// A TOTP set-up waiting for the first code from the app.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct PendingTotpRecord {
    pub secret: String,
    pub created_at: i64,
}

impl std::fmt::Debug for PendingTotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTotpRecord")
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// What a challenge's code authorises.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ChallengePurpose {
    /// Finishing a sign-in on this device.
    SignIn {
        device_id: String,
        #[serde(default)]
        device_name: Option<String>,
        #[serde(default)]
        ip_address: Option<String>,
        #[serde(default)]
        user_agent: Option<String>,
    },
    /// One sensitive operation of this reason (GENERIC, UPDATE_PROFILE, CHANGE_EMAIL,
    /// DISABLE_TWO_FACTOR).
    StepUp { reason: String },
    /// A password change waiting for its second factor: the new hash, computed when the
    /// change was asked for, and the device session that asked.
    PasswordChange { new_hash: String, session_id: Uuid },
}

/// `challenges`: a pending second-factor check. Pending while it exists and `attempts` is
/// below the limit; dead once the limit is reached; gone once it has succeeded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChallengeRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub purpose: ChallengePurpose,
    pub method: SecondFactor,
    /// Keyed hash of the mailed code (EMAIL method).
    #[serde(default)]
    pub code_hash: Option<[u8; 32]>,
    pub attempts: u32,
    pub resends: u32,
    pub last_sent_at: i64,
    pub expires_at: i64,
    /// The account's stamp when the challenge was made: once the account has moved on (a
    /// password change, a disable), the challenge signs nobody in.
    #[serde(default)]
    pub stamp: u64,
}

/// `sessions`: one signed-in device of a user.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub device_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// Keyed hash of the one refresh token that is current for this session.
    pub refresh_hash: [u8; 32],
    pub refresh_expires_at: i64,
    /// The generation of the current refresh token: 0 at sign-in, one more at each rotation.
    /// A refresh token names its session and generation, so an older generation coming back
    /// is a reuse, told from this record alone. Records of storage format 1 read as 0.
    #[serde(default)]
    pub refresh_generation: u64,
}

/// `refresh_tokens` (storage format 1 only): every refresh token handed out before format 2,
/// current or already rotated, until it expires. Nothing new is written here; tokens of
/// format 1 still rotate through it, into tokens that name their session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshRecord {
    pub session_id: Uuid,
    pub expires_at: i64,
}

/// `email_codes`: a pending e-mail verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EmailCodeRecord {
    pub user_id: Uuid,
    /// The address the code was sent to: it verifies only that address.
    pub email: String,
    pub expires_at: i64,
}

/// `signing_keys`: one Ed25519 key for access tokens.
#[derive(Serialize, Deserialize, Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// The PKCS#8 document, sealed (`Secrets::seal_text`): a copy of the database alone
    /// yields no key. Records written in clear by an older Keyhold (base64 of the document)
    /// are sealed at start.
    pub pkcs8: String,
    pub created_at: i64,
    /// When a newer key took over signing. A retired key still verifies the tokens it
    /// signed until they have all expired; then the sweeper removes it.
    #[serde(default)]
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// `mail_queue`: a message waiting to be sent. The message itself is sealed (it carries
/// codes and links); only the schedule is in clear.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MailQueueRecord {
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub created_at: i64,
    /// The rendered message, AES-256-GCM sealed, base64.
    pub sealed: String,
}

/// A queued message with its place in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMail {
    pub id: u64,
    pub record: MailQueueRecord,
}

/// `reset_codes`: a pending forgotten-password reset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResetCodeRecord {
    pub user_id: Uuid,
    /// The address the code was mailed to.
    pub email: String,
    pub expires_at: i64,
}
