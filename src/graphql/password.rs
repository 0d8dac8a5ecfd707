//! Passwords: changePassword, confirmChangePassword2Fa, resendChangePassword2Fa,
//! forgotPassword, confirmPasswordReset.

use async_graphql::{Context, Object};

use super::context::{auth, caller, meta};
use super::error::ResultExt;
use super::scalars::EmailAddress;
use super::types::{
    ForgotPasswordResult, LoginResult, PasswordResetParams, PasswordResetResult,
    TwoFactorAuthResult,
};
use crate::auth::ChangeOutcome;

#[derive(Default)]
pub struct PasswordMutation;

#[Object]
impl PasswordMutation {
    /// Change the signed-in user's password. With 2FA on, the change waits for confirmChangePassword2Fa.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        old_password: String,
        new_password: String,
    ) -> async_graphql::Result<Option<LoginResult>> {
        let caller = caller(ctx).await?;
        let auth = auth(ctx);
        let outcome = auth
            .change_password(&caller, old_password, new_password)
            .await
            .gql()?;
        Ok(Some(match outcome {
            ChangeOutcome::Changed(signed_in) => LoginResult::signed_in(auth, *signed_in),
            ChangeOutcome::SecondFactor(pending) => LoginResult::pending(auth, &pending),
        }))
    }

    /// Apply a pending password change with its second-factor code.
    #[graphql(name = "confirmChangePassword2Fa")]
    async fn confirm_change_password_2fa(
        &self,
        ctx: &Context<'_>,
        code: String,
    ) -> async_graphql::Result<Option<LoginResult>> {
        let caller = caller(ctx).await?;
        let auth = auth(ctx);
        let signed_in = auth.confirm_change_password(&caller, &code).await.gql()?;
        Ok(Some(LoginResult::signed_in(auth, signed_in)))
    }

    /// Send the pending password change's code again.
    #[graphql(name = "resendChangePassword2Fa")]
    async fn resend_change_password_2fa(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<TwoFactorAuthResult>> {
        let caller = caller(ctx).await?;
        let sent = auth(ctx)
            .resend_change_password(&caller, &meta(ctx).origin())
            .await
            .gql()?;
        Ok(Some(TwoFactorAuthResult::sent(&sent)))
    }

    /// Start the forgotten-password flow. The answer is the same whether or not the address has an account.
    async fn forgot_password(
        &self,
        ctx: &Context<'_>,
        email: EmailAddress,
    ) -> async_graphql::Result<Option<ForgotPasswordResult>> {
        auth(ctx)
            .forgot_password(email.normalized(), &meta(ctx).origin())
            .await
            .gql()?;
        Ok(Some(ForgotPasswordResult {
            header: Some("Check your e-mail".into()),
            message: Some(
                "If an account uses this address, a link to choose a new password is on its way."
                    .into(),
            ),
            email: Some(email),
        }))
    }

    /// Finish the forgotten-password flow with the mailed code.
    async fn confirm_password_reset(
        &self,
        ctx: &Context<'_>,
        password_reset_params: PasswordResetParams,
    ) -> async_graphql::Result<Option<PasswordResetResult>> {
        auth(ctx)
            .confirm_password_reset(
                &password_reset_params.code,
                password_reset_params.new_password,
            )
            .await
            .gql()?;
        Ok(Some(PasswordResetResult {
            reset: Some(true),
            message: Some("Your password was reset. Sign in with the new one.".into()),
        }))
    }
}
