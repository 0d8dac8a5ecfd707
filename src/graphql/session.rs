//! Sign-in and device sessions: login, newToken, logout, sessions.

use async_graphql::{Context, Object};

use super::context::{auth, caller, meta};
use super::error::ResultExt;
use super::types::{DeviceInfo, DeviceSession, LoginCredentials, LoginResult, LogoutResult};
use crate::auth::{DeviceInput, LoginOutcome, LogoutTarget};

#[derive(Default)]
pub struct SessionQuery;

#[Object]
impl SessionQuery {
    /// extension: the signed-in user's active device sessions, most recently used first.
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<DeviceSession>> {
        let caller = caller(ctx).await?;
        let sessions = auth(ctx).sessions(&caller).await.gql()?;
        Ok(sessions
            .iter()
            .map(|s| DeviceSession::of(s, s.id == caller.session_id))
            .collect())
    }
}

#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// Sign in with e-mail and password. With 2FA on, no tokens are issued: a code is sent and confirm2Fa completes the sign-in.
    async fn login(
        &self,
        ctx: &Context<'_>,
        credentials: LoginCredentials,
    ) -> async_graphql::Result<Option<LoginResult>> {
        let auth = auth(ctx);
        let device = credentials.device_info.unwrap_or_default();
        let outcome = auth
            .login(
                credentials.email.normalized(),
                credentials.password,
                DeviceInput {
                    device_id: device.device_id,
                    name: device.name,
                },
                &meta(ctx).origin(),
            )
            .await
            .gql()?;
        Ok(Some(match outcome {
            LoginOutcome::SignedIn(signed_in) => LoginResult::signed_in(auth, *signed_in),
            LoginOutcome::SecondFactor(pending) => LoginResult::pending(auth, &pending),
        }))
    }

    /// Exchange a refresh token for a new access token and a new refresh token (rotation).
    async fn new_token(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
    ) -> async_graphql::Result<Option<LoginResult>> {
        let auth = auth(ctx);
        let signed_in = auth.new_token(&refresh_token).await.gql()?;
        Ok(Some(LoginResult::signed_in(auth, signed_in)))
    }

    /// Sign out one device: the caller's own, or another of the caller's devices named by deviceId.
    async fn logout(
        &self,
        ctx: &Context<'_>,
        device_info: Option<DeviceInfo>,
        #[graphql(
            default_with = "Some(false)",
            desc = "extension: sign out every device of the caller."
        )]
        all_devices: Option<bool>,
    ) -> async_graphql::Result<Option<LogoutResult>> {
        let caller = caller(ctx).await?;
        let all_devices = all_devices.unwrap_or(false);
        let target = match (all_devices, device_info.and_then(|d| d.device_id)) {
            (true, _) => LogoutTarget::All,
            (false, Some(device_id)) => LogoutTarget::Device(device_id),
            (false, None) => LogoutTarget::Own,
        };
        let all = matches!(target, LogoutTarget::All);
        let ended = auth(ctx).logout(&caller, target).await.gql()?;
        let device_id = match ended.as_slice() {
            [one] => Some(one.device_id.clone()),
            _ => ended
                .iter()
                .find(|s| s.id == caller.session_id)
                .map(|s| s.device_id.clone()),
        };
        Ok(Some(LogoutResult {
            status: Some(200),
            message: Some(if all {
                format!("Signed out of {} device(s).", ended.len())
            } else {
                "Signed out.".to_string()
            }),
            device_id,
            ip_address: meta(ctx).client_ip.map(|ip| ip.to_string()),
        }))
    }
}
