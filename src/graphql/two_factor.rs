//! Second factor: confirm2Fa, resend2Fa, enable2Fa, disable2Fa, send2Fa.

use async_graphql::{Context, Object};

use super::context::{auth, caller, meta};
use super::error::ResultExt;
use super::scalars::EmailAddress;
use super::types::{LoginResult, TwoFactorAuthResult, TwoFactorMethod, TwoFactorReason};
use crate::auth::Enabled;

#[derive(Default)]
pub struct TwoFactorMutation;

#[Object]
impl TwoFactorMutation {
    /// Complete a sign-in that is waiting for its second factor.
    #[graphql(name = "confirm2Fa")]
    async fn confirm_2fa(
        &self,
        ctx: &Context<'_>,
        code: String,
        session_id: String,
        #[graphql(
            deprecation = "Accepted and ignored: codes are checked against the server's clock."
        )]
        timestamp: Option<i32>,
        email: EmailAddress,
    ) -> async_graphql::Result<Option<LoginResult>> {
        let _ = timestamp;
        let auth = auth(ctx);
        let signed_in = auth
            .confirm_2fa(&code, &session_id, email.normalized())
            .await
            .gql()?;
        Ok(Some(LoginResult::signed_in(auth, signed_in)))
    }

    /// extension: complete a sign-in that is waiting for its second factor with one of the
    /// account's passkeys: the browser's answer (the JSON of its `PublicKeyCredential`) to
    /// the `passkeyOptions` of the 202 answer.
    #[graphql(name = "confirm2FaWithPasskey")]
    async fn confirm_2fa_with_passkey(
        &self,
        ctx: &Context<'_>,
        session_id: String,
        email: EmailAddress,
        credential: String,
    ) -> async_graphql::Result<Option<LoginResult>> {
        let auth = auth(ctx);
        let signed_in = auth
            .confirm_2fa_with_passkey(&credential, &session_id, email.normalized())
            .await
            .gql()?;
        Ok(Some(LoginResult::signed_in(auth, signed_in)))
    }

    /// Send the pending sign-in's code again.
    #[graphql(name = "resend2Fa")]
    async fn resend_2fa(
        &self,
        ctx: &Context<'_>,
        session_id: String,
        email: EmailAddress,
    ) -> async_graphql::Result<Option<TwoFactorAuthResult>> {
        let sent = auth(ctx)
            .resend_2fa(&session_id, email.normalized(), &meta(ctx).origin())
            .await
            .gql()?;
        Ok(Some(TwoFactorAuthResult::sent(&sent)))
    }

    /// Turn on two-factor sign-in for the signed-in user.
    #[graphql(name = "enable2Fa")]
    async fn enable_2fa(
        &self,
        ctx: &Context<'_>,
        password: Option<String>,
        #[graphql(
            default_with = "Some(TwoFactorMethod::Email)",
            desc = "extension: EMAIL (default) or TOTP."
        )]
        method: Option<TwoFactorMethod>,
        #[graphql(
            desc = "extension: for TOTP, the first code from the authenticator app, which completes the set-up."
        )]
        code: Option<String>,
    ) -> async_graphql::Result<Option<TwoFactorAuthResult>> {
        let caller = caller(ctx).await?;
        let enabled = auth(ctx)
            .enable_2fa(
                &caller,
                password,
                method.unwrap_or(TwoFactorMethod::Email).into(),
                code,
            )
            .await
            .gql()?;
        Ok(Some(match enabled {
            Enabled::On { recovery_codes } => TwoFactorAuthResult {
                recovery_codes,
                ..TwoFactorAuthResult::with_status("ENABLED")
            },
            Enabled::TotpPending { uri, qr_png_base64 } => TwoFactorAuthResult {
                totp_uri: Some(uri),
                totp_qr_png: Some(qr_png_base64),
                ..TwoFactorAuthResult::with_status("TOTP_SETUP_PENDING")
            },
        }))
    }

    /// Turn off two-factor sign-in. Does nothing when it is already off.
    #[graphql(name = "disable2Fa")]
    async fn disable_2fa(
        &self,
        ctx: &Context<'_>,
        password: Option<String>,
        #[graphql(
            desc = "extension: a current second-factor code (see CONTRACT.md, Step-up codes)."
        )]
        code: Option<String>,
    ) -> async_graphql::Result<Option<TwoFactorAuthResult>> {
        let caller = caller(ctx).await?;
        auth(ctx).disable_2fa(&caller, password, code).await.gql()?;
        Ok(Some(TwoFactorAuthResult::with_status("DISABLED")))
    }

    /// Send a step-up code to the signed-in user for the given reason.
    #[graphql(name = "send2Fa")]
    async fn send_2fa(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            default_with = "Some(TwoFactorReason::Generic)",
            desc = "extension: what the code will authorise; GENERIC when absent."
        )]
        reason: Option<TwoFactorReason>,
    ) -> async_graphql::Result<Option<TwoFactorAuthResult>> {
        let caller = caller(ctx).await?;
        let reason = reason.unwrap_or(TwoFactorReason::Generic).into();
        let sent = auth(ctx)
            .send_2fa(&caller, reason, &meta(ctx).origin())
            .await
            .gql()?;
        Ok(Some(TwoFactorAuthResult::sent(&sent)))
    }
}
