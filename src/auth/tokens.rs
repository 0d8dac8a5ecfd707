//! Access tokens: EdDSA (Ed25519) JWTs with `iss aud sub sid iat exp jti` and a `kid` header,
//! signed by a key made on first start and kept in the store; the public keys as a JWKS.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::secrets::{SEALED_PREFIX, Secrets, random_bytes};
use crate::config::TokensConfig;
use crate::domain::records::SigningKeyRecord;
use crate::error::{Error, Result};
use crate::store::Storage;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The device session id.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

struct SigningKey {
    kid: String,
    /// When it was made: it signs only once it has been published for `jwks_refresh`.
    created_at: i64,
    /// Held parsed: `jsonwebtoken::encode` would parse the PKCS#8 document (and derive the
    /// public key, as costly as a signature) again for every token.
    pair: Ed25519KeyPair,
    /// The token's first part, the same for every token of this key: base64url of the
    /// header `{"typ":"JWT","alg":"EdDSA","kid":…}`.
    header: String,
    decoding: DecodingKey,
    /// The public key, base64url: the JWK `x`.
    x: String,
}

/// Signs and verifies access tokens.
pub struct Tokens {
    /// Every stored key: the current ones, then the retired ones, each newest first. The
    /// first published for `jwks_refresh` signs.
    keys: RwLock<Vec<SigningKey>>,
    /// `tokens.jwks_refresh`, in seconds.
    jwks_refresh: i64,
    /// Held by a rotation or a removal of keys from its read of the stored keys to its
    /// update of `keys`, so that two never interleave.
    changing: tokio::sync::Mutex<()>,
    issuer: String,
    audience: String,
    access_ttl: i64,
    validation: Validation,
    /// Tokens whose signature and claims have been checked, by SHA-256 of the whole token.
    /// The Ed25519 check is the largest single cost of an authenticated request (a third of
    /// its CPU time); a token seen before is the same bytes, so the same answer, and its
    /// expiry is still checked against the clock on every use.
    verified: Mutex<HashMap<[u8; 32], Arc<Claims>>>,
    /// Seals the keys it stores.
    secrets: Secrets,
}

/// Checked tokens remembered at most; past this, expired ones are dropped, then all.
const VERIFIED_CACHE: usize = 16_384;

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.read().iter().map(|k| k.kid.clone()).collect();
        f.debug_struct("Tokens")
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Loads the signing keys, making the first one when the store has none.
    pub async fn load_or_create(
        store: &dyn Storage,
        config: &TokensConfig,
        secrets: &Secrets,
        now: i64,
    ) -> anyhow::Result<Tokens> {
        let records = store.signing_keys().await?;
        for mut record in records.iter().cloned() {
            if !record.pkcs8.starts_with(SEALED_PREFIX) {
                // Written in clear by an older Keyhold: sealed now, in place.
                record.pkcs8 = secrets.seal_text(SIGNING_KEY, &record.pkcs8);
                store.add_signing_key(&record).await?;
                tracing::info!(kid = %record.kid, "sealed a signing key stored in clear");
            }
        }
        if !records.iter().any(|r| r.retired_at.is_none()) {
            let record = new_signing_key(secrets, now)?;
            store.add_signing_key(&record).await?;
            tracing::info!(kid = %record.kid, "generated the first access-token signing key");
        }
        let keys = load_keys(store, secrets).await?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        // Expiry is checked against Keyhold's clock below, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        Ok(Tokens {
            keys: RwLock::new(keys),
            changing: tokio::sync::Mutex::new(()),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: i64::try_from(config.access_ttl.as_secs()).unwrap_or(i64::MAX),
            jwks_refresh: i64::try_from(config.jwks_refresh.as_secs()).unwrap_or(i64::MAX),
            validation,
            verified: Mutex::new(HashMap::new()),
            secrets: secrets.clone(),
        })
    }

    /// A signed access token for this user and device session, and when it expires.
    pub fn issue(&self, user_id: Uuid, session_id: Uuid, now: i64) -> Result<(String, i64)> {
        let keys = self.keys.read();
        let key = signer(&keys, self.jwks_refresh, now)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("no signing key")))?;
        let exp = now.saturating_add(self.access_ttl);
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            iat: now,
            exp,
            // A version-4 id from the process's RNG: `Uuid::new_v4` asks the kernel each time.
            jti: uuid::Builder::from_random_bytes(random_bytes::<16>())
                .into_uuid()
                .to_string(),
        };
        // JWS compact serialisation (RFC 7515 §7.1), as `jsonwebtoken::encode` writes it.
        let claims = serde_json::to_vec(&claims).map_err(Error::internal)?;
        let mut token = String::with_capacity(key.header.len() + claims.len() * 4 / 3 + 90);
        token.push_str(&key.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = key.pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok((token, exp))
    }

    /// The claims of a token that is well-formed, signed by one of our keys with EdDSA, for
    /// our issuer and audience, and not expired at `now`. Anything else is `INVALID_TOKEN`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Claims>> {
        let digest = digest::digest(&digest::SHA256, token.as_bytes());
        let key: [u8; 32] = digest.as_ref().try_into().map_err(Error::internal)?;
        let known = self.verified.lock().get(&key).cloned();
        let claims = match known {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(self.verify_signed(token)?);
                let mut verified = self.verified.lock();
                if verified.len() >= VERIFIED_CACHE {
                    verified.retain(|_, c| c.exp > now);
                    if verified.len() >= VERIFIED_CACHE {
                        verified.clear();
                    }
                }
                verified.insert(key, claims.clone());
                claims
            }
        };
        if claims.exp <= now {
            return Err(Error::InvalidToken);
        }
        Ok(claims)
    }

    /// Tokens checked and remembered now.
    pub fn verified_count(&self) -> usize {
        self.verified.lock().len()
    }

    /// The claims of a token signed by one of our keys, for our issuer and audience.
    fn verify_signed(&self, token: &str) -> Result<Claims> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::InvalidToken)?;
        if header.alg != Algorithm::EdDSA {
            return Err(Error::InvalidToken);
        }
        let kid = header.kid.ok_or(Error::InvalidToken)?;
        let keys = self.keys.read();
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(Error::InvalidToken)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation)
            .map_err(|_| Error::InvalidToken)?;
        Ok(data.claims)
    }

    /// The public keys, as `GET /.well-known/jwks.json` serves them.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .read()
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": k.x,
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

impl Tokens {
    /// Makes a new key, published at once and signing once it has been published for
    /// `tokens.jwks_refresh` (every instance has read it by then). The one it replaces signs
    /// until then, and verifies the tokens it signed until they expire (`tokens.access_ttl`);
    /// then `drop_retired_keys` removes it. Returns the new key's id.
    pub async fn rotate(&self, store: &dyn Storage, now: i64) -> anyhow::Result<String> {
        let _changing = self.changing.lock().await;
        let fresh = new_signing_key(&self.secrets, now)?;
        for mut record in store.signing_keys().await? {
            if record.retired_at.is_none() {
                record.retired_at = Some(now.saturating_add(self.jwks_refresh));
                store.add_signing_key(&record).await?;
            }
        }
        store.add_signing_key(&fresh).await?;
        let loaded = load_keys(store, &self.secrets).await?;
        *self.keys.write() = loaded;
        tracing::info!(kid = %fresh.kid, "rotated the access-token signing key");
        Ok(fresh.kid)
    }

    /// Removes retired keys whose every token has expired. Returns how many.
    pub async fn drop_retired_keys(&self, store: &dyn Storage, now: i64) -> anyhow::Result<usize> {
        let _changing = self.changing.lock().await;
        let mut dropped = 0;
        for record in store.signing_keys().await? {
            if record
                .retired_at
                .is_some_and(|at| at.saturating_add(self.access_ttl) <= now)
            {
                store.remove_signing_key(&record.kid).await?;
                tracing::info!(kid = %record.kid, "removed a retired signing key: every token it signed has expired");
                dropped += 1;
            }
        }
        if dropped > 0 {
            let loaded = load_keys(store, &self.secrets).await?;
            *self.keys.write() = loaded;
        }
        Ok(dropped)
    }

    /// Reads the stored keys again: a key another instance made or removed is served, and
    /// signs in its time, here too. The key refresher's pass (see `jobs`).
    pub async fn refresh_keys(&self, store: &dyn Storage) -> anyhow::Result<()> {
        let _changing = self.changing.lock().await;
        let loaded = load_keys(store, &self.secrets).await?;
        if !loaded.is_empty() {
            *self.keys.write() = loaded;
        }
        Ok(())
    }

    /// The id of the key that signs at `now`.
    pub fn signing_kid(&self, now: i64) -> Option<String> {
        signer(&self.keys.read(), self.jwks_refresh, now).map(|k| k.kid.clone())
    }

    /// The ids of the keys in the JWKS, newest first.
    pub fn kids(&self) -> Vec<String> {
        self.keys.read().iter().map(|k| k.kid.clone()).collect()
    }
}

/// Checks that every signing key in `store` opens with `secrets`: what a restore verifies
/// before it replaces anything. Returns how many there are.
pub async fn check_sealed_keys(store: &dyn Storage, secrets: &Secrets) -> anyhow::Result<usize> {
    let records = store.signing_keys().await?;
    for record in &records {
        signing_key(record, secrets)?;
    }
    Ok(records.len())
}

/// The stored keys: the current ones, newest first, then the retired ones, newest first.
async fn load_keys(store: &dyn Storage, secrets: &Secrets) -> anyhow::Result<Vec<SigningKey>> {
    let mut records = store.signing_keys().await?;
    records.sort_by_key(|r| {
        (
            r.retired_at.is_some(),
            std::cmp::Reverse(r.created_at),
            r.kid.clone(),
        )
    });
    records.iter().map(|r| signing_key(r, secrets)).collect()
}

/// The key that signs at `now`, of `keys` (as `load_keys` orders them): the first that has
/// been published for `jwks_refresh`, or, when none has (the first key of a new install, or
/// rotations in quick succession), the oldest.
fn signer(keys: &[SigningKey], jwks_refresh: i64, now: i64) -> Option<&SigningKey> {
    keys.iter()
        .find(|k| k.created_at.saturating_add(jwks_refresh) <= now)
        .or_else(|| keys.last())
}

/// The label signing keys are sealed under.
const SIGNING_KEY: &[u8] = b"signing-key";

fn new_signing_key(secrets: &Secrets, now: i64) -> anyhow::Result<SigningKeyRecord> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("cannot read the new Ed25519 key: {e}"))?;
    Ok(SigningKeyRecord {
        kid: thumbprint(&URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
        pkcs8: secrets.seal_text(SIGNING_KEY, &STANDARD.encode(pkcs8.as_ref())),
        created_at: now,
        retired_at: None,
    })
}

fn signing_key(record: &SigningKeyRecord, secrets: &Secrets) -> anyhow::Result<SigningKey> {
    let opened = secrets.open_text(SIGNING_KEY, &record.pkcs8).ok_or_else(|| {
        anyhow::anyhow!(
            "signing key {} does not open with keys/hmac.key: the database and the key file are not from the same install",
            record.kid
        )
    })?;
    let pkcs8 = STANDARD.decode(&opened)?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| anyhow::anyhow!("signing key {}: {e}", record.kid))?;
    let public = pair.public_key().as_ref().to_vec();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(record.kid.clone());
    Ok(SigningKey {
        kid: record.kid.clone(),
        created_at: record.created_at,
        header: URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        pair,
        decoding: DecodingKey::from_ed_der(&public),
        x: URL_SAFE_NO_PAD.encode(&public),
    })
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key: a stable `kid`.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SigningKeyStore;
    use crate::store::sled::Store;

    fn secrets(dir: &tempfile::TempDir) -> Secrets {
        Secrets::load_or_create(&dir.path().join("keys")).unwrap()
    }

    async fn tokens() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let tokens =
            Tokens::load_or_create(&store, &TokensConfig::default(), &secrets(&dir), 1_000)
                .await
                .unwrap();
        (dir, tokens)
    }

    #[tokio::test]
    async fn a_new_key_signs_once_published_for_jwks_refresh_and_another_instance_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let config = TokensConfig::default();
        let refresh = i64::try_from(config.jwks_refresh.as_secs()).unwrap();
        let here = Tokens::load_or_create(&store, &config, &secrets(&dir), 1_000)
            .await
            .unwrap();
        let there = Tokens::load_or_create(&store, &config, &secrets(&dir), 1_000)
            .await
            .unwrap();
        let first = here.signing_kid(1_000).unwrap();
        assert_eq!(
            here.kids(),
            vec![first.clone()],
            "one key, which signs at once"
        );

        let second = here.rotate(&store, 5_000).await.unwrap();
        let third = here.rotate(&store, 5_010).await.unwrap();
        assert_eq!(here.kids(), [third.clone(), second.clone(), first.clone()]);
        assert_eq!(
            there.kids(),
            vec![first.clone()],
            "the other has not read them yet"
        );
        there.refresh_keys(&store).await.unwrap();
        assert_eq!(there.kids(), here.kids());
        for tokens in [&here, &there] {
            assert_eq!(
                tokens.signing_kid(5_010).unwrap(),
                first,
                "none published long enough"
            );
            assert_eq!(tokens.signing_kid(5_000 + refresh).unwrap(), second);
            assert_eq!(tokens.signing_kid(5_010 + refresh).unwrap(), third);
        }
        let (token, _) = here
            .issue(Uuid::new_v4(), Uuid::new_v4(), 5_010 + refresh)
            .unwrap();
        assert!(there.verify(&token, 5_011 + refresh).is_ok());
    }

    #[tokio::test]
    async fn keys_are_stored_sealed_and_a_clear_one_is_sealed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let secrets = secrets(&dir);
        let mut clear = new_signing_key(&secrets, 1).unwrap();
        let document = secrets.open_text(SIGNING_KEY, &clear.pkcs8).unwrap();
        clear.pkcs8 = document.clone();
        store.add_signing_key(&clear).await.unwrap();
        let tokens = Tokens::load_or_create(&store, &TokensConfig::default(), &secrets, 2)
            .await
            .unwrap();
        assert_eq!(tokens.kids(), [clear.kid.clone()]);
        let stored = &store.signing_keys().await.unwrap()[0];
        assert!(stored.pkcs8.starts_with(SEALED_PREFIX));
        assert!(!stored.pkcs8.contains(&document));
        // With another install's key file, the database yields no key.
        let other = tempfile::tempdir().unwrap();
        let elsewhere = Secrets::load_or_create(&other.path().join("keys")).unwrap();
        let refused = Tokens::load_or_create(&store, &TokensConfig::default(), &elsewhere, 3).await;
        assert!(refused.is_err());
    }

    #[tokio::test]
    async fn a_token_carries_the_contract_claims_and_verifies_until_it_expires() {
        let (_dir, tokens) = tokens().await;
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, exp) = tokens.issue(user, session, 1_000).unwrap();
        assert_eq!(exp, 1_000 + 15 * 60);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert!(header.kid.is_some());
        let claims = tokens.verify(&token, 1_001).unwrap();
        assert_eq!(claims.sub, user.to_string());
        assert_eq!(claims.sid, session.to_string());
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            ("keyhold", "keyhold")
        );
        assert_eq!(claims.iat, 1_000);
        let jti = Uuid::parse_str(&claims.jti).unwrap();
        assert_eq!(jti.get_version(), Some(uuid::Version::Random));
        let (again, _) = tokens.issue(user, session, 1_000).unwrap();
        assert_ne!(tokens.verify(&again, 1_001).unwrap().jti, claims.jti);
        assert!(tokens.verify(&token, exp).is_err(), "expired at exp");
    }

    #[tokio::test]
    async fn a_token_is_byte_for_byte_what_jsonwebtoken_encode_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let secrets = secrets(&dir);
        let tokens = Tokens::load_or_create(&store, &TokensConfig::default(), &secrets, 1_000)
            .await
            .unwrap();
        let record = &store.signing_keys().await.unwrap()[0];
        let document = secrets.open_text(SIGNING_KEY, &record.pkcs8).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ed_der(&STANDARD.decode(&document).unwrap());
        let (token, _) = tokens.issue(Uuid::new_v4(), Uuid::new_v4(), 1_000).unwrap();
        let claims = tokens.verify(&token, 1_001).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(record.kid.clone());
        // Ed25519 signatures are deterministic: the same input gives the same token.
        assert_eq!(
            token,
            jsonwebtoken::encode(&header, &*claims, &key).unwrap()
        );
    }

    #[tokio::test]
    async fn a_checked_token_is_remembered_but_still_expires_and_a_changed_one_is_checked_again() {
        let (_dir, tokens) = tokens().await;
        let (token, exp) = tokens.issue(Uuid::new_v4(), Uuid::new_v4(), 1_000).unwrap();
        let first = tokens.verify(&token, 1_001).unwrap();
        let again = tokens.verify(&token, 1_002).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second use is remembered");
        assert_eq!(tokens.verified_count(), 1);
        assert!(
            tokens.verify(&token, exp).is_err(),
            "a remembered token still expires"
        );
        let mut altered = token.clone();
        altered.pop();
        assert!(tokens.verify(&altered, 1_001).is_err());
        assert_eq!(
            tokens.verified_count(),
            1,
            "a refused token is not remembered"
        );
    }

    #[tokio::test]
    async fn the_memory_of_checked_tokens_is_bounded() {
        let (_dir, tokens) = tokens().await;
        for _ in 0..VERIFIED_CACHE + 10 {
            let (token, _) = tokens.issue(Uuid::new_v4(), Uuid::new_v4(), 1_000).unwrap();
            tokens.verify(&token, 1_001).unwrap();
        }
        assert!(tokens.verified_count() <= VERIFIED_CACHE);
    }

    #[tokio::test]
    async fn the_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let secrets = secrets(&dir);
        let a = Tokens::load_or_create(&store, &TokensConfig::default(), &secrets, 1)
            .await
            .unwrap();
        let (token, _) = a.issue(Uuid::new_v4(), Uuid::new_v4(), 1).unwrap();
        let b = Tokens::load_or_create(&store, &TokensConfig::default(), &secrets, 2)
            .await
            .unwrap();
        assert!(b.verify(&token, 2).is_ok());
        assert_eq!(a.jwks(), b.jwks());
    }

    #[tokio::test]
    async fn foreign_and_tampered_tokens_are_refused() {
        let (_dir, ours) = tokens().await;
        let (_dir2, theirs) = tokens().await;
        let (token, _) = theirs.issue(Uuid::new_v4(), Uuid::new_v4(), 1_000).unwrap();
        assert!(ours.verify(&token, 1_001).is_err(), "another key");

        let (token, _) = ours.issue(Uuid::new_v4(), Uuid::new_v4(), 1_000).unwrap();
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = serde_json::json!(Uuid::new_v4().to_string());
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert!(
            ours.verify(&parts.join("."), 1_001).is_err(),
            "altered claims"
        );

        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(ours.verify(&unsigned, 1_001).is_err(), "alg none");

        let store = Store::open(&_dir.path().join("db2")).unwrap();
        let ours = Tokens::load_or_create(&store, &TokensConfig::default(), &secrets(&_dir), 1_000)
            .await
            .unwrap();
        let other_issuer = Tokens::load_or_create(
            &store,
            &TokensConfig {
                issuer: "someone-else".into(),
                ..TokensConfig::default()
            },
            &secrets(&_dir),
            1_000,
        )
        .await
        .unwrap();
        let (token, _) = other_issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), 1_000)
            .unwrap();
        assert!(
            ours.verify(&token, 1_001).is_err(),
            "same key, other issuer"
        );
    }
}
