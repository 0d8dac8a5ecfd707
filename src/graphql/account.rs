//! Accounts: the signed-in user's profile, device sessions and sign-out. The operations that
//! create accounts and sign in arrive here with the accounts work; until then every one of
//! these needs a token that cannot yet exist, and refuses.

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject};

use super::context::caller;
use super::scalars::{EmailAddress, RId};

/// The second factor a user signs in with.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoFactorMethod {
    Email,
    Totp,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct UserProfile {
    pub id: RId,
    /// extension
    pub email: EmailAddress,
    /// extension
    pub email_verified: bool,
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

#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    /// The signed-in user's profile.
    async fn user_profile(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<UserProfile>> {
        match caller(ctx)? {}
    }

    /// extension: the signed-in user's active device sessions, most recently used first.
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<DeviceSession>> {
        match caller(ctx)? {}
    }
}

#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Sign out one device: the caller's own, or another of the caller's devices named by deviceId.
    async fn logout(
        &self,
        ctx: &Context<'_>,
        device_info: Option<DeviceInfo>,
        #[graphql(
            default = false,
            desc = "extension: sign out every device of the caller."
        )]
        all_devices: bool,
    ) -> async_graphql::Result<Option<LogoutResult>> {
        let _ = (device_info, all_devices);
        match caller(ctx)? {}
    }
}
