//! A downstream service that relies on Keyhold for sign-in. It checks each request's access
//! token with Keyhold's public keys (the JWKS, fetched once) and never calls Keyhold per
//! request. Its tests start a real Keyhold in-process with `keyhold::testing`.
//!
//! Against a running Keyhold (its generated certificate in `data/tls/cert.pem`):
//!
//! ```text
//! cargo run --example downstream -- https://localhost:8443 data/tls/cert.pem
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/me
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use poem::http::StatusCode;
use poem::web::Data;
use poem::{EndpointExt, Request, Response, Route, get, handler};
use serde::Deserialize;

/// The claims this service reads from Keyhold's access tokens.
#[derive(Debug, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The device session.
    pub sid: String,
    pub exp: i64,
}

/// Checks Keyhold access tokens: EdDSA, signed by a key of the JWKS, for this issuer and
/// audience, not expired.
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// Fetches the JWKS. A real service refreshes it when it meets an unknown `kid` (after a
    /// `keyhold keys rotate`).
    pub async fn fetch(
        client: &reqwest::Client,
        jwks_url: &str,
        issuer: &str,
        audience: &str,
    ) -> anyhow::Result<Verifier> {
        let set: JwkSet = client
            .get(jwks_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().context("a key without kid")?;
            keys.insert(kid, DecodingKey::from_jwk(jwk)?);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.leeway = 0;
        Ok(Verifier { keys, validation })
    }

    pub fn verify(&self, token: &str) -> anyhow::Result<Claims> {
        let header = jsonwebtoken::decode_header(token)?;
        anyhow::ensure!(header.alg == Algorithm::EdDSA, "not an EdDSA token");
        let kid = header.kid.context("no kid")?;
        let key = self.keys.get(&kid).context("signed by an unknown key")?;
        Ok(jsonwebtoken::decode::<Claims>(token, key, &self.validation)?.claims)
    }
}

/// `GET /me`: who the bearer is, or 401.
#[handler]
fn me(request: &Request, Data(verifier): Data<&Arc<Verifier>>) -> Response {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token.map(|t| verifier.verify(t)) {
        Some(Ok(claims)) => Response::builder()
            .content_type("application/json")
            .body(serde_json::json!({ "user": claims.sub, "session": claims.sid }).to_string()),
        _ => Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body("a valid Keyhold access token is needed"),
    }
}

pub fn service(verifier: Arc<Verifier>) -> impl poem::Endpoint {
    Route::new().at("/me", get(me)).data(verifier)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "https://localhost:8443".into());
    let certificate = std::fs::read(args.next().unwrap_or_else(|| "data/tls/cert.pem".into()))?;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&certificate)?])
        .build()?;
    let verifier = Verifier::fetch(
        &client,
        &format!("{base}/.well-known/jwks.json"),
        "keyhold",
        "keyhold",
    )
    .await?;
    println!("serving http://127.0.0.1:3000/me");
    poem::Server::new(poem::listener::TcpListener::bind("127.0.0.1:3000"))
        .run(service(Arc::new(verifier)))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhold::testing::TestServer;
    use poem::Endpoint;

    const PASSWORD: &str = "correct horse battery staple";

    async fn downstream(keyhold: &TestServer) -> impl Endpoint + use<> {
        let config = keyhold.app().config();
        let verifier = Verifier::fetch(
            &keyhold.client(),
            &keyhold.jwks_url(),
            &config.tokens.issuer,
            &config.tokens.audience,
        )
        .await
        .unwrap();
        service(Arc::new(verifier))
    }

    /// `GET /me` with the token: the status and the body.
    async fn call_me(service: &impl Endpoint, token: &str) -> (u16, String) {
        let request = Request::builder()
            .uri("/me".parse().unwrap())
            .header("authorization", format!("Bearer {token}"))
            .finish();
        let response = service.get_response(request).await;
        let status = response.status().as_u16();
        (status, response.into_body().into_string().await.unwrap())
    }

    #[tokio::test]
    async fn a_signed_in_user_is_recognised_and_a_forged_token_is_not() {
        let keyhold = TestServer::start().await.unwrap();
        keyhold
            .create_verified_user("ada@example.com", PASSWORD)
            .await
            .unwrap();
        let tokens = keyhold.sign_in("ada@example.com", PASSWORD).await.unwrap();
        let service = downstream(&keyhold).await;
        let (status, body) = call_me(&service, &tokens.access_token).await;
        assert_eq!(status, 200, "{body}");
        let profile = keyhold
            .graphql(
                Some(&tokens.access_token),
                "{ userProfile { id } }",
                serde_json::Value::Null,
            )
            .await
            .unwrap();
        assert!(body.contains(profile["data"]["userProfile"]["id"].as_str().unwrap()));

        let mut forged = tokens.access_token.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert_eq!(call_me(&service, &forged).await.0, 401);
        keyhold.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_refreshed_token_works_and_a_logout_ends_the_refresh_chain() {
        let keyhold = TestServer::start().await.unwrap();
        keyhold
            .create_verified_user("bo@example.com", PASSWORD)
            .await
            .unwrap();
        let first = keyhold.sign_in("bo@example.com", PASSWORD).await.unwrap();
        let service = downstream(&keyhold).await;
        let second = keyhold.refresh(&first.refresh_token).await.unwrap();
        assert_eq!(call_me(&service, &second.access_token).await.0, 200);

        keyhold.logout(&second.access_token).await.unwrap();
        let refused = keyhold.refresh(&second.refresh_token).await.unwrap_err();
        assert!(refused.to_string().contains("INVALID_TOKEN"), "{refused}");
        // This service checks signatures only, so an access token stays good here until it
        // expires (tokens.access_ttl): Keyhold itself refuses it at once.
        let profile = keyhold
            .graphql(
                Some(&second.access_token),
                "{ userProfile { id } }",
                serde_json::Value::Null,
            )
            .await
            .unwrap();
        assert_eq!(profile["errors"][0]["extensions"]["code"], "INVALID_TOKEN");

        // A refresh token works once; presenting a used one ends its device session.
        let third = keyhold.sign_in("bo@example.com", PASSWORD).await.unwrap();
        let fourth = keyhold.refresh(&third.refresh_token).await.unwrap();
        assert!(
            keyhold.refresh(&third.refresh_token).await.is_err(),
            "used once"
        );
        assert!(
            keyhold.refresh(&fourth.refresh_token).await.is_err(),
            "the session ended"
        );
        keyhold.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_user_with_two_factor_signs_in_with_the_mailed_code() {
        let keyhold = TestServer::start().await.unwrap();
        keyhold
            .create_verified_user("cy@example.com", PASSWORD)
            .await
            .unwrap();
        let tokens = keyhold.sign_in("cy@example.com", PASSWORD).await.unwrap();
        let recovery = keyhold
            .enable_2fa(&tokens.access_token, PASSWORD)
            .await
            .unwrap();
        assert_eq!(recovery.len(), 10);
        assert!(
            keyhold.sign_in("cy@example.com", PASSWORD).await.is_err(),
            "a code is needed"
        );
        let signed = keyhold
            .sign_in_with_2fa("cy@example.com", PASSWORD)
            .await
            .unwrap();
        let service = downstream(&keyhold).await;
        assert_eq!(call_me(&service, &signed.access_token).await.0, 200);
        keyhold.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn many_servers_run_side_by_side_in_one_process() {
        let servers = futures_util::future::join_all((0..4).map(|_| TestServer::start())).await;
        let servers: Vec<TestServer> = servers.into_iter().map(Result::unwrap).collect();
        for (i, keyhold) in servers.iter().enumerate() {
            keyhold
                .create_verified_user("dee@example.com", PASSWORD)
                .await
                .unwrap();
            assert_eq!(
                keyhold.mailbox().all().len(),
                1,
                "server {i} has its own mailbox"
            );
        }
        let ports: std::collections::HashSet<u16> =
            servers.iter().map(|s| s.addr().port()).collect();
        assert_eq!(ports.len(), 4);
    }
}
