//! Passkeys: startPasskeyRegistration, finishPasskeyRegistration, passkeys, removePasskey.

use async_graphql::{Context, Object, SimpleObject};

use super::context::{auth, caller, meta};
use super::error::ResultExt;
use super::scalars::EmailAddress;
use super::types::{DeviceInfo, LoginResult};
use crate::auth::DeviceInput;
use crate::auth::iso;
use crate::domain::records::PasskeyRecord;

/// The first half of a passkey ceremony.
#[derive(SimpleObject, Clone, Debug)]
pub struct PasskeyChallenge {
    /// What the second call names.
    pub challenge_id: String,
    /// The JSON of the `publicKey` options for `navigator.credentials.create` (or `.get`), in
    /// the WebAuthn JSON form: binary fields are base64url
    /// (`PublicKeyCredential.parseCreationOptionsFromJSON` reads it as it is).
    pub options: String,
}

impl From<crate::auth::PasskeyChallenge> for PasskeyChallenge {
    fn from(c: crate::auth::PasskeyChallenge) -> PasskeyChallenge {
        PasskeyChallenge {
            challenge_id: c.challenge_id.to_string(),
            options: c.options,
        }
    }
}

/// One passkey of the signed-in account.
#[derive(SimpleObject, Clone, Debug)]
pub struct Passkey {
    /// The credential ID (base64url), as the browser knows it.
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    /// Whether the authenticator says the passkey is backed up (synced to other devices).
    pub backed_up: bool,
}

impl From<&PasskeyRecord> for Passkey {
    fn from(p: &PasskeyRecord) -> Passkey {
        Passkey {
            id: p.id(),
            name: p.name.clone(),
            created_at: iso(p.created_at),
            last_used_at: p.last_used_at.map(iso),
            backed_up: p.backed_up(),
        }
    }
}

#[derive(Default)]
pub struct PasskeyQuery;

#[Object]
impl PasskeyQuery {
    /// extension: the signed-in user's passkeys, oldest first.
    async fn passkeys(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Passkey>> {
        let caller = caller(ctx).await?;
        let passkeys = auth(ctx).passkeys(&caller).await.gql()?;
        Ok(passkeys.iter().map(Passkey::from).collect())
    }
}

#[derive(Default)]
pub struct PasskeyMutation;

#[Object]
impl PasskeyMutation {
    /// extension: start adding a passkey to the signed-in account. Takes the password, and
    /// with two-factor sign-in on also a step-up code (`send2Fa`), a TOTP or a recovery code.
    async fn start_passkey_registration(
        &self,
        ctx: &Context<'_>,
        password: Option<String>,
        code: Option<String>,
    ) -> async_graphql::Result<Option<PasskeyChallenge>> {
        let caller = caller(ctx).await?;
        let challenge = auth(ctx)
            .start_passkey_registration(&caller, password, code)
            .await
            .gql()?;
        Ok(Some(challenge.into()))
    }

    /// extension: finish adding a passkey with the browser's answer, the JSON of the
    /// `PublicKeyCredential` (its `toJSON()`).
    async fn finish_passkey_registration(
        &self,
        ctx: &Context<'_>,
        challenge_id: String,
        credential: String,
        name: Option<String>,
    ) -> async_graphql::Result<Option<Passkey>> {
        let caller = caller(ctx).await?;
        let passkey = auth(ctx)
            .finish_passkey_registration(&caller, &challenge_id, &credential, name)
            .await
            .gql()?;
        Ok(Some(Passkey::from(&passkey)))
    }

    /// extension: start signing in with a passkey. With `email`, the request names that
    /// account's passkeys (an unknown address gets an answer of the same shape); without it,
    /// the request is usernameless and the passkey names its account.
    async fn start_passkey_login(
        &self,
        ctx: &Context<'_>,
        email: Option<EmailAddress>,
    ) -> async_graphql::Result<Option<PasskeyChallenge>> {
        let challenge = auth(ctx)
            .start_passkey_login(email.as_ref().map(|e| e.normalized()), &meta(ctx).origin())
            .await
            .gql()?;
        Ok(Some(challenge.into()))
    }

    /// extension: finish a passkey sign-in with the browser's answer (the JSON of the
    /// `PublicKeyCredential`): a device session and the token pair, as `login` gives them.
    async fn finish_passkey_login(
        &self,
        ctx: &Context<'_>,
        challenge_id: String,
        credential: String,
        device_info: Option<DeviceInfo>,
    ) -> async_graphql::Result<Option<LoginResult>> {
        let auth = auth(ctx);
        let device = device_info.unwrap_or_default();
        let signed_in = auth
            .finish_passkey_login(
                &challenge_id,
                &credential,
                DeviceInput {
                    device_id: device.device_id,
                    name: device.name,
                },
                &meta(ctx).origin(),
            )
            .await
            .gql()?;
        Ok(Some(LoginResult::signed_in(auth, signed_in)))
    }

    /// extension: remove a passkey of the signed-in account, with the same proof as adding
    /// one. False when the account has no passkey of that ID.
    async fn remove_passkey(
        &self,
        ctx: &Context<'_>,
        id: String,
        password: Option<String>,
        code: Option<String>,
    ) -> async_graphql::Result<Option<bool>> {
        let caller = caller(ctx).await?;
        let removed = auth(ctx)
            .remove_passkey(&caller, &id, password, code)
            .await
            .gql()?;
        Ok(Some(removed))
    }
}
