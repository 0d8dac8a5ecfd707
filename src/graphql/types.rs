//! The contract's result and input types, filled from the use cases' records.

use async_graphql::{ComplexObject, Enum, InputObject, SimpleObject};

use super::scalars::{EmailAddress, RId};
use crate::auth::{Auth, CodeSent, PendingSignIn, SignedIn, StepUpReason, iso};
use crate::domain::records::{SecondFactor, SessionRecord, UserRecord};

/// The second factor a user signs in with.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoFactorMethod {
    Email,
    Totp,
}

impl From<SecondFactor> for TwoFactorMethod {
    fn from(method: SecondFactor) -> Self {
        match method {
            SecondFactor::Email => TwoFactorMethod::Email,
            SecondFactor::Totp => TwoFactorMethod::Totp,
        }
    }
}

impl From<TwoFactorMethod> for SecondFactor {
    fn from(method: TwoFactorMethod) -> Self {
        match method {
            TwoFactorMethod::Email => SecondFactor::Email,
            TwoFactorMethod::Totp => SecondFactor::Totp,
        }
    }
}

/// What a step-up code will authorise.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoFactorReason {
    Generic,
    UpdateProfile,
    ChangeEmail,
    DisableTwoFactor,
}

impl From<TwoFactorReason> for StepUpReason {
    fn from(reason: TwoFactorReason) -> Self {
        match reason {
            TwoFactorReason::Generic => StepUpReason::Generic,
            TwoFactorReason::UpdateProfile => StepUpReason::UpdateProfile,
            TwoFactorReason::ChangeEmail => StepUpReason::ChangeEmail,
            TwoFactorReason::DisableTwoFactor => StepUpReason::DisableTwoFactor,
        }
    }
}

#[derive(SimpleObject, Clone, Debug, Default)]
pub struct TwoFactorAuthResult {
    /// ENABLED, DISABLED, CODE_SENT or TOTP_SETUP_PENDING (see CONTRACT.md); for a TOTP sign-in, resend2Fa answers TOTP_CODE_REQUIRED: nothing is mailed, the app shows the code.
    pub status: Option<String>,
    /// The challenge a sent code belongs to.
    pub session_id: Option<String>,
    /// extension: ISO-8601 expiry of the sent code.
    pub expires_at: Option<String>,
    /// extension: seconds before another code may be requested.
    pub retry_after: Option<i32>,
    /// extension: TOTP set-up only: the otpauth:// URI.
    pub totp_uri: Option<String>,
    /// extension: TOTP set-up only: the URI as a PNG QR code, base64.
    pub totp_qr_png: Option<String>,
    /// extension: one-time recovery codes, returned once when 2FA is turned on.
    pub recovery_codes: Option<Vec<String>>,
}

impl TwoFactorAuthResult {
    pub fn with_status(status: &str) -> Self {
        TwoFactorAuthResult {
            status: Some(status.to_string()),
            ..Default::default()
        }
    }

    pub fn sent(sent: &CodeSent) -> Self {
        TwoFactorAuthResult {
            status: Some(
                if sent.mailed {
                    "CODE_SENT"
                } else {
                    "TOTP_CODE_REQUIRED"
                }
                .to_string(),
            ),
            session_id: Some(sent.challenge_id.to_string()),
            expires_at: Some(iso(sent.expires_at)),
            retry_after: Some(i32::try_from(sent.retry_after).unwrap_or(i32::MAX)),
            ..Default::default()
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct UserProfile {
    pub id: RId,
    /// extension
    pub email: EmailAddress,
    /// extension
    pub email_verified: bool,
    /// extension: a new address asked for, waiting for the code mailed to it; `email` stays
    /// the account's address until then.
    pub pending_email: Option<EmailAddress>,
    pub username: String,
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
    pub two_factor_auth: Option<bool>,
    /// extension
    pub two_factor_method: Option<TwoFactorMethod>,
    /// extension: ISO-8601
    pub created_at: Option<String>,
}

impl From<&UserRecord> for UserProfile {
    fn from(user: &UserRecord) -> Self {
        let p = user.profile.clone();
        // Stored addresses were checked and normalised when they were written.
        let email = EmailAddress::unchecked(&user.email);
        UserProfile {
            id: RId(user.id),
            email,
            email_verified: user.email_verified,
            pending_email: user
                .pending_email
                .as_ref()
                .map(|p| EmailAddress::unchecked(&p.email)),
            username: user.username.clone(),
            first_name: p.first_name,
            last_name: p.last_name,
            middle_name: p.middle_name,
            preferred_name: p.preferred_name,
            date_of_birth: p.date_of_birth,
            phone_number: p.phone_number,
            country_code: p.country_code,
            address1: p.address1,
            address2: p.address2,
            city: p.city,
            state: p.state,
            zip_code: p.zip_code,
            country: p.country,
            opt_in_marketing: p.opt_in_marketing,
            two_factor_auth: Some(user.two_factor.is_some()),
            two_factor_method: user.two_factor.as_ref().map(|tf| tf.method.into()),
            created_at: Some(iso(user.created_at)),
        }
    }
}

#[derive(SimpleObject, Clone, Debug, Default)]
#[graphql(complex)]
pub struct LoginResult {
    /// 200: signed in, tokens issued. 202: a second factor is required; see sessionId.
    pub status: Option<i32>,
    pub user_id: Option<RId>,
    /// Same value as userId; kept for clients that read it.
    pub user_uid: Option<String>,
    /// ACTIVE, UNVERIFIED or DISABLED.
    pub user_status: Option<String>,
    /// The access token (a JWT) to send as 'Authorization: Bearer ...'. Null while a second factor is pending.
    pub token: Option<String>,
    /// The opaque refresh token for newToken. Null while a second factor is pending.
    pub refresh_token: Option<String>,
    /// While status is 202: the pending challenge's id for confirm2Fa / resend2Fa. Otherwise: the device session's id.
    pub session_id: Option<String>,
    pub prompt_two_factor_auth: Option<bool>,
    /// Always false: Keyhold has no terms-and-conditions flow.
    pub prompt_tnc_acceptance: Option<bool>,
    pub device_id: Option<String>,
    pub ip_address: Option<String>,
    /// The four times the answer can show, written out only for the fields a query asks for.
    #[graphql(skip)]
    pub times: LoginTimes,
    /// The signed-in account, for `userProfile`: made into a profile only when asked for.
    #[graphql(skip)]
    pub user: Option<Box<UserRecord>>,
    /// extension: the method of the pending second factor.
    pub two_factor_method: Option<TwoFactorMethod>,
    /// extension: with a passkey on the account, the request options (the `publicKey` JSON
    /// for `navigator.credentials.get`) with which `confirm2FaWithPasskey` completes the
    /// pending sign-in instead of the code.
    pub passkey_options: Option<String>,
}

/// The times of a [`LoginResult`], in Unix seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoginTimes {
    pub last_login: Option<i64>,
    pub current_login: Option<i64>,
    pub token_expires: Option<i64>,
    pub refresh_token_expires: Option<i64>,
}

#[ComplexObject]
impl LoginResult {
    /// ISO-8601 time of the previous sign-in.
    async fn last_login_at(&self) -> Option<String> {
        self.times.last_login.map(iso)
    }

    /// ISO-8601 time of this sign-in.
    async fn current_login_at(&self) -> Option<String> {
        self.times.current_login.map(iso)
    }

    async fn user_profile(&self) -> Option<UserProfile> {
        self.user.as_deref().map(UserProfile::from)
    }

    /// extension: ISO-8601 expiry of token.
    async fn token_expires_at(&self) -> Option<String> {
        self.times.token_expires.map(iso)
    }

    /// extension: ISO-8601 expiry of refreshToken.
    async fn refresh_token_expires_at(&self) -> Option<String> {
        self.times.refresh_token_expires.map(iso)
    }
}

impl LoginResult {
    pub fn signed_in(auth: &Auth, s: SignedIn) -> LoginResult {
        LoginResult {
            status: Some(200),
            user_id: Some(RId(s.user.id)),
            user_uid: Some(s.user.id.to_string()),
            user_status: Some(auth.user_status(&s.user).to_string()),
            token: Some(s.access_token),
            refresh_token: Some(s.refresh_token),
            session_id: Some(s.session.id.to_string()),
            prompt_two_factor_auth: Some(false),
            prompt_tnc_acceptance: Some(false),
            device_id: Some(s.session.device_id),
            ip_address: s.session.ip_address,
            times: LoginTimes {
                last_login: s.last_login_at,
                current_login: s.current_login_at,
                token_expires: Some(s.access_expires_at),
                refresh_token_expires: Some(s.session.refresh_expires_at),
            },
            user: Some(Box::new(s.user)),
            two_factor_method: None,
            passkey_options: None,
        }
    }
}

impl LoginResult {
    /// 202: the password was right; the second factor is awaited. No tokens.
    pub fn pending(auth: &Auth, p: &PendingSignIn) -> LoginResult {
        LoginResult {
            status: Some(202),
            user_id: Some(RId(p.user.id)),
            user_uid: Some(p.user.id.to_string()),
            user_status: Some(auth.user_status(&p.user).to_string()),
            session_id: Some(p.challenge_id.to_string()),
            prompt_two_factor_auth: Some(true),
            prompt_tnc_acceptance: Some(false),
            two_factor_method: Some(p.method.into()),
            passkey_options: p.passkey_options.clone(),
            ..Default::default()
        }
    }
}

#[derive(SimpleObject, Clone, Debug, Default)]
pub struct RegisterUserResult {
    /// 201 on success.
    pub status: Option<i32>,
    pub message: Option<String>,
    /// extension: always null, so that registration never reveals which addresses exist (the id is in login and userProfile).
    pub user_id: Option<RId>,
    #[graphql(deprecation = "Same as userId.")]
    pub account_id: Option<RId>,
    /// Only when the server runs with testing.expose_codes = true; otherwise always null.
    pub verification_code: Option<String>,
}

#[derive(SimpleObject, Clone, Debug, Default)]
pub struct VerificationResult {
    pub verified: Option<bool>,
    pub message: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct UpdateUserProfileResult {
    pub errors: Option<Vec<Option<String>>>,
    pub status: i32,
    pub user_profile: UserProfile,
}

/// extension
#[derive(SimpleObject, Clone, Debug)]
pub struct DeviceSession {
    pub device_id: String,
    pub name: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: String,
    pub last_seen_at: String,
    /// True for the session of the token making this request.
    pub current: bool,
}

impl DeviceSession {
    pub fn of(session: &SessionRecord, current: bool) -> DeviceSession {
        DeviceSession {
            device_id: session.device_id.clone(),
            name: session.name.clone(),
            ip_address: session.ip_address.clone(),
            user_agent: session.user_agent.clone(),
            created_at: iso(session.created_at),
            last_seen_at: iso(session.last_seen_at),
            current,
        }
    }
}

#[derive(SimpleObject, Clone, Debug, Default)]
pub struct LogoutResult {
    /// 200 on success.
    pub status: Option<i32>,
    pub message: Option<String>,
    pub device_id: Option<String>,
    pub ip_address: Option<String>,
}

#[derive(InputObject, Clone, Debug, Default)]
pub struct DeviceInfo {
    /// The device's own stable id. When absent at sign-in, the server assigns one and returns it.
    pub device_id: Option<String>,
    /// extension: a human-readable name such as 'Firefox on Linux'.
    pub name: Option<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct LoginCredentials {
    pub email: EmailAddress,
    pub password: String,
    pub device_info: Option<DeviceInfo>,
}

/// A JSON document in a string; fields in CONTRACT.md, Registration.
#[derive(InputObject, Clone, Debug)]
pub struct UserRegistrationInputV2 {
    pub data: String,
}

/// A JSON document in a string with the profile fields to change.
#[derive(InputObject, Clone, Debug)]
pub struct UserProfileInputV2 {
    pub data: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ForgotPasswordResult {
    pub header: Option<String>,
    pub message: Option<String>,
    /// The address as given.
    pub email: Option<EmailAddress>,
}

#[derive(SimpleObject, Clone, Debug, Default)]
pub struct PasswordResetResult {
    pub reset: Option<bool>,
    pub message: Option<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct PasswordResetParams {
    /// The code mailed by forgotPassword.
    pub code: String,
    pub new_password: String,
}
