//! Signing in with a passkey: `startPasskeyLogin` hands out a WebAuthn request, kept on the
//! server as a ceremony (`CeremonyStore`), and `finishPasskeyLogin` takes that ceremony once
//! and opens a device session as `login` does.
//!
//! A passkey is a sign-in of its own: it proves possession of the authenticator and, since
//! user verification is required, its PIN or biometric. An account with two-factor sign-in
//! is therefore signed in by its passkey without a second code.

use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, RequestChallengeResponse, WebauthnError};
use webauthn_rs_proto::{AllowCredentials, AuthenticatorTransport};

use super::audit::{Event, Subject};
use super::passkeys::{parse_challenge_id, parse_credential};
use super::sessions::{DeviceInput, device_text};
use super::{Auth, Origin, PasskeyChallenge, SignedIn, seconds};
use crate::domain::Email;
use crate::domain::records::{CeremonyRecord, CeremonyState, UserRecord};
use crate::error::{Error, Result};
use crate::limits::Limit;
use crate::store::Versioned;

use super::challenge::ChallengeState;
use super::factors::Matched;
use crate::domain::records::ChallengeRecord;

/// What the fake credential IDs of an address without passkeys are derived under.
const FAKE_CREDENTIALS: &str = "passkey-fake-credentials";

impl Auth {
    /// Starts a passkey sign-in. With `email`, the request names that account's passkeys;
    /// an address without an account (or without passkeys) gets a request of the same shape,
    /// with credential IDs made up from the address, the same each time, so the answer tells
    /// nothing. Without `email`, the request is usernameless: the passkey names its account.
    /// Counted against the per-IP sign-in limit.
    pub async fn start_passkey_login(
        &self,
        email: Option<&Email>,
        origin: &Origin,
    ) -> Result<PasskeyChallenge> {
        let now = self.now();
        if let Err(refused) = self.hit_network(Limit::LoginPerIp, origin.ip, now).await? {
            let who = Subject {
                email: email.map(Email::as_str),
                ip: origin.ip,
                ..Subject::default()
            };
            return Err(self.rate_limited(refused, who, "login").await);
        }
        let failed = |e: WebauthnError| Error::internal(anyhow::anyhow!("passkey sign-in: {e}"));
        let (options, user_id, state) = match email {
            None => {
                let (mut options, state) = self
                    .webauthn
                    .start_discoverable_authentication()
                    .map_err(failed)?;
                // A plain request: the page decides whether to use conditional mediation.
                options.mediation = None;
                (options, None, CeremonyState::Discoverable(state))
            }
            Some(email) => {
                let user = self.store.user_by_email(email.as_str()).await?;
                match user.filter(|u| !u.passkeys.is_empty()) {
                    Some(user) => {
                        let (options, state) = self.account_request(&user)?;
                        (options, Some(user.id), state)
                    }
                    None => (self.decoy_request(email)?, None, CeremonyState::Nobody),
                }
            }
        };
        let ceremony = CeremonyRecord {
            id: Uuid::new_v4(),
            expires_at: now.saturating_add(seconds(self.config.webauthn.ceremony_ttl)),
            user_id,
            state,
        };
        self.store.put_ceremony(&ceremony).await?;
        Ok(PasskeyChallenge {
            challenge_id: ceremony.id,
            options: serde_json::to_string(&options.public_key).map_err(Error::internal)?,
        })
    }

    /// A request naming `user`'s passkeys, and its state.
    fn account_request(
        &self,
        user: &UserRecord,
    ) -> Result<(RequestChallengeResponse, CeremonyState)> {
        let passkeys: Vec<_> = user.passkeys.iter().map(|p| p.credential.clone()).collect();
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(|e| Error::internal(anyhow::anyhow!("passkey sign-in: {e}")))?;
        Ok((options, CeremonyState::Account(state)))
    }

    /// A request for an address with no passkeys, shaped as one for an account with some.
    fn decoy_request(&self, email: &Email) -> Result<RequestChallengeResponse> {
        let failed = |e: WebauthnError| Error::internal(anyhow::anyhow!("passkey decoy: {e}"));
        let key = self.secrets.mac(FAKE_CREDENTIALS, b"");
        let generator = webauthn_rs::fake::WebauthnFakeCredentialGenerator::<
            webauthn_rs::fake::FakePasskeyDistribution,
        >::new(&key)
        .map_err(failed)?;
        // An account with passkeys names at least one: so does every decoy (the generator
        // gives some addresses none, so the next of its draws for the address is taken).
        let mut fake = Vec::new();
        for draw in 0u8..=u8::MAX {
            let mut input = email.as_str().as_bytes().to_vec();
            if draw > 0 {
                input.extend_from_slice(&[0, draw]);
            }
            fake = generator.generate(&input).map_err(failed)?;
            if !fake.is_empty() {
                break;
            }
        }
        let (mut options, _) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(failed)?;
        options.mediation = None;
        options.public_key.extensions = None;
        options.public_key.allow_credentials = fake
            .into_iter()
            .map(|id| AllowCredentials {
                type_: "public-key".to_string(),
                id,
                transports: Some(vec![AuthenticatorTransport::Internal]),
            })
            .collect();
        Ok(options)
    }

    /// Finishes a passkey sign-in with the browser's answer (the JSON of its
    /// `PublicKeyCredential`), and opens a device session as `login` does. A wrong answer
    /// counts against the account's second-factor budget; an answer whose signature counter
    /// went back (a cloned authenticator) is refused and audited.
    pub async fn finish_passkey_login(
        &self,
        challenge_id: &str,
        credential: &str,
        device: DeviceInput,
        origin: &Origin,
    ) -> Result<SignedIn> {
        let challenge_id = parse_challenge_id(challenge_id)?;
        let credential: PublicKeyCredential = parse_credential(credential)?;
        let device_id = device_text("deviceInfo.deviceId", device.device_id)?
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let name = device_text("deviceInfo.name", device.name)?;
        let now = self.now();
        let ceremony = self
            .store
            .take_ceremony(challenge_id)
            .await?
            .ok_or(Error::InvalidCode)?;
        if ceremony.expires_at <= now {
            return Err(Error::CodeExpired);
        }
        if matches!(ceremony.state, CeremonyState::Nobody) {
            return Err(Error::InvalidCode);
        }
        // The account: the one the ceremony was for, or the one the passkey names; both must
        // agree when both are known.
        let named = self
            .webauthn
            .identify_discoverable_authentication(&credential)
            .ok()
            .map(|(id, _)| id);
        let Some(user_id) = ceremony.user_id.or(named) else {
            return Err(Error::InvalidCode);
        };
        // A passkey that names another account than the one the ceremony is for: a failed
        // answer for the ceremony's account.
        let other_account = named.is_some_and(|named| named != user_id);
        let user = self.store.user(user_id).await?.ok_or(Error::InvalidCode)?;
        let who = Subject {
            user_id: Some(user.id),
            email: Some(&user.email),
            ip: origin.ip,
            device: Some(&device_id),
        };
        self.factor_budget(&user, now).await?;
        if other_account {
            return Err(self.passkey_refused(&user, who, false, now).await);
        }
        let verified = match ceremony.state {
            CeremonyState::Account(state) => self
                .webauthn
                .finish_passkey_authentication(&credential, &state),
            CeremonyState::Discoverable(state) => {
                let id = credential.get_credential_id();
                match user
                    .passkeys
                    .iter()
                    .find(|p| p.credential.cred_id().as_slice() == id)
                {
                    Some(passkey) => self.webauthn.finish_discoverable_authentication_v2(
                        &credential,
                        state,
                        &passkey.credential,
                    ),
                    None => Err(WebauthnError::CredentialNotFound),
                }
            }
            CeremonyState::Nobody => return Err(Error::InvalidCode),
        };
        let result = match verified {
            Ok(result) => result,
            Err(e) => {
                let cloned = matches!(e, WebauthnError::CredentialPossibleCompromise);
                return Err(self.passkey_refused(&user, who, cloned, now).await);
            }
        };
        self.check_may_sign_in(&user, who.clone()).await?;
        let stamp = user.stamp;
        let went_back = std::sync::atomic::AtomicBool::new(false);
        let signed_in = self
            .open_session(user.id, device_id.clone(), name, origin, |u| {
                // Disabled meanwhile: open_session refuses it; changed otherwise: refused here.
                if u.stamp != stamp {
                    return Err(Error::InvalidCode);
                }
                spend_passkey(u, &result, now).map_err(|spent| {
                    if spent == Spent::WentBack {
                        went_back.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Error::InvalidCode
                })
            })
            .await;
        if went_back.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.passkey_refused(&user, who, true, now).await);
        }
        match &signed_in {
            Ok(_) => self.audit(Event::SignedIn, who, "passkey").await,
            Err(e) => self.audit(Event::SignInFailed, who, e.code()).await,
        }
        signed_in
    }

    /// With a passkey on `user`, a passkey request that completes the pending sign-in
    /// `challenge_id` in place of its code: kept as a ceremony of the same ID, and as long.
    pub(crate) async fn start_passkey_factor(
        &self,
        user: &UserRecord,
        challenge_id: Uuid,
        expires_at: i64,
    ) -> Result<Option<String>> {
        if user.passkeys.is_empty() {
            return Ok(None);
        }
        let (options, state) = self.account_request(user)?;
        self.store
            .put_ceremony(&CeremonyRecord {
                id: challenge_id,
                expires_at,
                user_id: Some(user.id),
                state,
            })
            .await?;
        Ok(Some(
            serde_json::to_string(&options.public_key).map_err(Error::internal)?,
        ))
    }

    /// A passkey's answer to a pending sign-in: verified against the ceremony of the same ID
    /// (taken once), within the second-factor budget, and the challenge ended by
    /// compare-and-swap, so that neither a code nor another answer finishes it too.
    pub(crate) async fn attempt_passkey(
        &self,
        current: &Versioned<ChallengeRecord>,
        user: &UserRecord,
        credential: &PublicKeyCredential,
        who: Subject<'_>,
    ) -> Result<Matched> {
        let now = self.now();
        let c = &current.record;
        if c.state(now, self.config.two_factor.max_attempts) == ChallengeState::Expired {
            self.store.swap_challenge(current, None, &[]).await?;
            return Err(Error::CodeExpired);
        }
        self.factor_budget(user, now).await?;
        let Some(ceremony) = self.store.take_ceremony(c.id).await? else {
            return Err(Error::InvalidCode);
        };
        let CeremonyState::Account(state) = ceremony.state else {
            return Err(Error::InvalidCode);
        };
        if ceremony.user_id != Some(user.id) {
            return Err(Error::InvalidCode);
        }
        let result = match self
            .webauthn
            .finish_passkey_authentication(credential, &state)
        {
            Ok(result) => result,
            Err(e) => {
                let cloned = matches!(e, WebauthnError::CredentialPossibleCompromise);
                return Err(self.passkey_refused(user, who, cloned, now).await);
            }
        };
        if !self.store.swap_challenge(current, None, &[]).await? {
            // A code finished (or changed) the challenge meanwhile.
            return Err(Error::InvalidCode);
        }
        Ok(Matched::Passkey {
            result: Box::new(result),
            at: now,
        })
    }

    /// A passkey answer that did not verify: counted against the account's second-factor
    /// budget, and audited (as a likely clone when its signature counter went back).
    async fn passkey_refused(
        &self,
        user: &UserRecord,
        who: Subject<'_>,
        cloned: bool,
        now: i64,
    ) -> Error {
        if let Err(e) = self.factor_failed(user, now).await {
            return e;
        }
        if cloned {
            tracing::warn!(user = %user.id, "a passkey's signature counter went back: the authenticator may have been cloned");
            self.audit(Event::PasskeyCloned, who, "INVALID_CODE").await;
        } else {
            self.audit(Event::SignInFailed, who, "INVALID_CODE").await;
        }
        Error::InvalidCode
    }
}

/// Why a verified passkey answer could not be spent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spent {
    /// The passkey was removed meanwhile.
    Gone,
    /// Its signature counter is not past the stored one: a clone, or an older answer.
    WentBack,
}

/// Moves the passkey that gave `result` on: its counter and backup state, and when it was
/// last used. Checked on the account as it is when written, since two sign-ins started
/// together were each verified against the counter as it was at their start.
pub(crate) fn spend_passkey(
    user: &mut UserRecord,
    result: &webauthn_rs::prelude::AuthenticationResult,
    now: i64,
) -> std::result::Result<(), Spent> {
    let passkey = user
        .passkeys
        .iter_mut()
        .find(|p| p.credential.cred_id() == result.cred_id())
        .ok_or(Spent::Gone)?;
    let stored = webauthn_rs::prelude::Credential::from(passkey.credential.clone());
    if result.counter() > 0 && result.counter() <= stored.counter {
        return Err(Spent::WentBack);
    }
    passkey.credential.update_credential(result);
    passkey.last_used_at = Some(now);
    Ok(())
}
