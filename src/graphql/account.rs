//! Accounts: register, verifyEmail, userProfile, updateProfile.

use async_graphql::{Context, Object};

use super::context::{auth, caller, meta};
use super::error::ResultExt;
use super::types::{
    RegisterUserResult, UpdateUserProfileResult, UserProfile, UserProfileInputV2,
    UserRegistrationInputV2, VerificationResult,
};

#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    /// The signed-in user's profile.
    async fn user_profile(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<UserProfile>> {
        let user = auth(ctx).signed_in_user(meta(ctx).bearer()).await.gql()?;
        Ok(Some(UserProfile::from(&user)))
    }
}

#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Create an account from a JSON document (see CONTRACT.md, Registration).
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: UserRegistrationInputV2,
    ) -> async_graphql::Result<Option<RegisterUserResult>> {
        let auth = auth(ctx);
        let registered = auth
            .register(&input.data, &meta(ctx).origin())
            .await
            .gql()?;
        // No id, for a new address or a taken one alike: the answer never tells them apart.
        Ok(Some(RegisterUserResult {
            status: Some(201),
            message: Some(
                "Registration received. Check your e-mail for the verification link.".into(),
            ),
            user_id: None,
            account_id: None,
            verification_code: registered.verification_code,
        }))
    }

    /// Confirm ownership of an e-mail address with the code mailed at registration or after an address change.
    async fn verify_email(
        &self,
        ctx: &Context<'_>,
        code: String,
    ) -> async_graphql::Result<Option<VerificationResult>> {
        auth(ctx).verify_email(&code).await.gql()?;
        Ok(Some(VerificationResult {
            verified: Some(true),
            message: Some("The e-mail address is verified.".into()),
        }))
    }

    /// Update the signed-in user's profile from a JSON document of the fields to change.
    async fn update_profile(
        &self,
        ctx: &Context<'_>,
        input: UserProfileInputV2,
        #[graphql(
            desc = "extension: a step-up code; required when the e-mail address changes and 2FA is on."
        )]
        code: Option<String>,
        #[graphql(
            desc = "extension: the current password; required when the e-mail address changes."
        )]
        password: Option<String>,
    ) -> async_graphql::Result<Option<UpdateUserProfileResult>> {
        let caller = caller(ctx).await?;
        let user = auth(ctx)
            .update_profile(&caller, &input.data, code.as_deref(), password)
            .await
            .gql()?;
        Ok(Some(UpdateUserProfileResult {
            errors: Some(Vec::new()),
            status: 200,
            user_profile: UserProfile::from(&user),
        }))
    }
}
