use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use keyhold::auth::Secrets;
use keyhold::auth::secrets::random_token;
use keyhold::auth::sessions::REFRESH_TOKEN;
use keyhold::domain::records::RefreshRecord;
use keyhold::store::SessionStore;
use keyhold::store::sled::Store;

use crate::helpers::{NEW_TOKEN, PASSWORD, TestApp, error_code, graphql_on};

const PROFILE: &str = "{ userProfile { id email username } }";
const SESSIONS: &str =
    "{ sessions { deviceId name ipAddress userAgent createdAt lastSeenAt current } }";

fn claims_of(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let claims = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&header).unwrap(),
        serde_json::from_slice(&claims).unwrap(),
    )
}

/// A session id as the API shows it.
fn session_id(id: &Value) -> uuid::Uuid {
    uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap()
}

async fn refresh(app: &TestApp, token: &str) -> Value {
    app.graphql(NEW_TOKEN, json!({ "refresh": token })).await
}

#[tokio::test]
async fn login_fills_every_field_of_its_result() {
    let app = TestApp::spawn().await;
    app.verified_user("ann@example.com", PASSWORD).await;
    let first = app.signed_in("ann@example.com", PASSWORD, None).await;
    assert_eq!(first["status"], 200);
    assert_eq!(first["userUid"], first["userId"]);
    assert_eq!(first["userStatus"], "ACTIVE");
    assert_eq!(first["promptTwoFactorAuth"], false);
    assert_eq!(first["promptTncAcceptance"], false);
    assert!(first["twoFactorMethod"].is_null());
    assert_eq!(first["ipAddress"], "127.0.0.1");
    assert!(first["lastLoginAt"].is_null(), "no earlier sign-in");
    let now = keyhold::clock::iso8601(app.clock.now());
    assert_eq!(first["currentLoginAt"], now);
    assert_eq!(
        first["tokenExpiresAt"],
        keyhold::clock::iso8601(app.clock.now() + Duration::from_secs(15 * 60))
    );
    assert_eq!(
        first["refreshTokenExpiresAt"],
        keyhold::clock::iso8601(app.clock.now() + Duration::from_secs(30 * 86400))
    );
    assert_eq!(first["userProfile"]["email"], "ann@example.com");
    assert_eq!(first["userProfile"]["id"], first["userId"]);
    // A device id was assigned, and the refresh token is long and opaque.
    assert_eq!(first["deviceId"].as_str().unwrap().len(), 36);
    assert!(first["refreshToken"].as_str().unwrap().len() >= 43);
    assert!(!first["sessionId"].as_str().unwrap().is_empty());

    app.clock.advance(Duration::from_secs(60));
    let second = app
        .signed_in("ann@example.com", PASSWORD, Some("laptop"))
        .await;
    assert_eq!(second["lastLoginAt"], first["currentLoginAt"]);
    assert_eq!(second["deviceId"], "laptop");
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_address_look_the_same() {
    let app = TestApp::spawn().await;
    app.verified_user("ben@example.com", PASSWORD).await;
    let wrong = app
        .login("ben@example.com", "not the password at all", None)
        .await;
    let unknown = app.login("nobody@example.com", PASSWORD, None).await;
    assert_eq!(error_code(&wrong), "INVALID_CREDENTIALS");
    assert_eq!(error_code(&unknown), "INVALID_CREDENTIALS");
    assert_eq!(
        wrong["errors"][0]["message"],
        unknown["errors"][0]["message"]
    );
    assert!(wrong["data"]["login"].is_null());
    let malformed = app.login("not-an-address", PASSWORD, None).await;
    assert_eq!(error_code(&malformed), "BAD_USER_INPUT", "{malformed}");
    assert_eq!(
        malformed["errors"][0]["extensions"]["field"],
        "credentials.email"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_access_token_is_an_eddsa_jwt_with_the_contract_claims_and_a_published_key() {
    let app = TestApp::spawn().await;
    app.verified_user("cat@example.com", PASSWORD).await;
    let login = app.signed_in("cat@example.com", PASSWORD, None).await;
    let token = login["token"].as_str().unwrap();
    let (header, claims) = claims_of(token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(claims["iss"], "keyhold");
    assert_eq!(claims["aud"], "keyhold");
    assert_eq!(claims["sub"], login["userId"]);
    assert_eq!(claims["sid"], login["sessionId"]);
    assert_eq!(claims["iat"], app.clock.now().unix_timestamp());
    assert_eq!(claims["exp"], app.clock.now().unix_timestamp() + 900);
    assert!(claims["jti"].is_string());

    let jwks = app.jwks().await;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's kid is published");
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    // A downstream service verifies it with the published key alone.
    let decoding =
        jsonwebtoken::DecodingKey::from_ed_components(key["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["keyhold"]);
    validation.set_issuer(&["keyhold"]);
    jsonwebtoken::decode::<Value>(token, &decoding, &validation).expect("verifies");
    app.stop().await;
}

#[tokio::test]
async fn tokens_that_are_forged_expired_or_of_an_ended_session_are_refused() {
    let app = TestApp::spawn().await;
    app.verified_user("dan@example.com", PASSWORD).await;
    let login = app.signed_in("dan@example.com", PASSWORD, None).await;
    let token = login["token"].as_str().unwrap().to_string();
    let body = app.graphql_as(&token, PROFILE, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "dan@example.com",
        "{body}"
    );

    let (_, mut claims) = claims_of(&token);
    claims["sub"] = json!(uuid::Uuid::new_v4().to_string());
    let parts: Vec<&str> = token.split('.').collect();
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims_of(&token).1,
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    for bad in [
        altered.as_str(),
        unsigned.as_str(),
        hs256.as_str(),
        "garbage",
        &token[..token.len() - 3],
    ] {
        let body = app.graphql_as(bad, PROFILE, Value::Null).await;
        assert_eq!(error_code(&body), "INVALID_TOKEN", "{bad}: {body}");
    }

    app.clock.advance(Duration::from_secs(15 * 60));
    let body = app.graphql_as(&token, PROFILE, Value::Null).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "expired");
    app.stop().await;
}

#[tokio::test]
async fn logout_takes_effect_at_once() {
    let app = TestApp::spawn().await;
    app.verified_user("eli@example.com", PASSWORD).await;
    let login = app
        .signed_in("eli@example.com", PASSWORD, Some("phone"))
        .await;
    let token = login["token"].as_str().unwrap();
    let body = app
        .graphql_as(
            token,
            "mutation { logout { status message deviceId ipAddress } }",
            Value::Null,
        )
        .await;
    let result = &body["data"]["logout"];
    assert_eq!(result["status"], 200, "{body}");
    assert_eq!(result["deviceId"], "phone");
    assert_eq!(result["ipAddress"], "127.0.0.1");
    let body = app.graphql_as(token, PROFILE, Value::Null).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    let body = refresh(&app, login["refreshToken"].as_str().unwrap()).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    app.stop().await;
}

#[tokio::test]
async fn new_token_rotates_and_a_reused_refresh_token_ends_the_session() {
    let app = TestApp::spawn().await;
    app.verified_user("fox@example.com", PASSWORD).await;
    let login = app.signed_in("fox@example.com", PASSWORD, None).await;
    let first_refresh = login["refreshToken"].as_str().unwrap().to_string();

    app.clock.advance(Duration::from_secs(60));
    let body = refresh(&app, &first_refresh).await;
    let rotated = &body["data"]["newToken"];
    assert_eq!(rotated["status"], 200, "{body}");
    assert_eq!(rotated["sessionId"], login["sessionId"]);
    assert_eq!(rotated["deviceId"], login["deviceId"]);
    assert_ne!(rotated["refreshToken"], login["refreshToken"]);
    let new_access = rotated["token"].as_str().unwrap().to_string();
    let body = app.graphql_as(&new_access, PROFILE, Value::Null).await;
    assert!(body["errors"].is_null(), "{body}");

    // The old refresh token again: a thief or a replay. The whole session ends.
    let body = refresh(&app, &first_refresh).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    let body = app.graphql_as(&new_access, PROFILE, Value::Null).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "the session is gone");
    let body = refresh(&app, rotated["refreshToken"].as_str().unwrap()).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    app.stop().await;
}

#[tokio::test]
async fn an_altered_refresh_token_is_refused_and_ends_nothing() {
    let app = TestApp::spawn().await;
    app.verified_user("hal@example.com", PASSWORD).await;
    let login = app.signed_in("hal@example.com", PASSWORD, None).await;
    let body = refresh(&app, login["refreshToken"].as_str().unwrap()).await;
    let current = body["data"]["newToken"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = URL_SAFE_NO_PAD.decode(&current).unwrap();
    // Version, session id, generation (1 now), random bytes, MAC.
    assert_eq!(bytes.len(), 57);
    assert_eq!(&bytes[1..17], session_id(&login["sessionId"]).as_bytes());
    assert_eq!(bytes[17..25], 1u64.to_be_bytes());

    // Naming an older generation of the session would end it, were the MAC not checked:
    // whoever learnt a session id could log its device out.
    let mut older = bytes.clone();
    older[17..25].copy_from_slice(&0u64.to_be_bytes());
    let mut flipped = bytes.clone();
    flipped[56] ^= 1;
    for forged in [older, flipped] {
        let body = refresh(&app, &URL_SAFE_NO_PAD.encode(&forged)).await;
        assert_eq!(error_code(&body), "INVALID_TOKEN");
    }
    let body = refresh(&app, &current).await;
    assert_eq!(
        body["data"]["newToken"]["status"], 200,
        "the session lives on: {body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_token_of_storage_format_1_rotates_once_into_one_that_names_its_session() {
    let app = TestApp::spawn().await;
    app.verified_user("joy@example.com", PASSWORD).await;
    let login = app.signed_in("joy@example.com", PASSWORD, None).await;
    let kept = app.stop_keeping_storage().await;
    let config = crate::helpers::test_config(kept.path().join("data"), 1);
    // Turn the store into what storage format 1 left: the session's token is 32 random
    // bytes, with a record of its own in `refresh_tokens`.
    let legacy = {
        let store = Store::open(&config.db_path()).unwrap();
        let secrets = Secrets::load_or_create(&config.keys_dir()).unwrap();
        let id = session_id(&login["sessionId"]);
        let mut session = store.session(id).await.unwrap().unwrap();
        let legacy = random_token::<32>();
        session.refresh_hash = secrets.keyed_hash(REFRESH_TOKEN, &legacy);
        store.start_session_unchecked(&session).unwrap();
        let record = RefreshRecord {
            session_id: id,
            expires_at: session.refresh_expires_at,
        };
        store
            .put_format_1_refresh_token(&session.refresh_hash, &record)
            .unwrap();
        store.force_format_version(1).unwrap();
        legacy
    };
    let app = keyhold::Application::build(config).await.unwrap();
    assert_eq!(
        crate::helpers::sled(&app).format_version().unwrap(),
        keyhold::store::sled::keys::FORMAT_VERSION,
        "migrated"
    );
    // The session the format 1 store held is counted as it opens (format 3).
    assert_eq!(crate::helpers::sled(&app).session_count().unwrap(), 1);
    let refresh_on = |token: &Value| graphql_on(&app, None, NEW_TOKEN, json!({ "refresh": token }));
    let body = refresh_on(&json!(legacy)).await;
    let rotated = &body["data"]["newToken"];
    assert_eq!(rotated["status"], 200, "{body}");
    assert_eq!(rotated["sessionId"], login["sessionId"]);
    let next = rotated["refreshToken"].as_str().unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(next).unwrap().len(),
        57,
        "the new format"
    );
    let body = refresh_on(&rotated["refreshToken"]).await;
    let newest = &body["data"]["newToken"];
    assert_eq!(newest["status"], 200, "{body}");

    // The format 1 token again is a reuse: the session ends.
    let body = refresh_on(&json!(legacy)).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    let body = refresh_on(&newest["refreshToken"]).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "the session is gone");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refresh_token_expires() {
    let app = TestApp::spawn().await;
    app.verified_user("gil@example.com", PASSWORD).await;
    let login = app.signed_in("gil@example.com", PASSWORD, None).await;
    app.clock.advance(Duration::from_secs(30 * 86400));
    let body = refresh(&app, login["refreshToken"].as_str().unwrap()).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    let body = refresh(&app, "not-a-token").await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    app.stop().await;
}

#[tokio::test]
async fn one_session_per_device_and_logout_by_device_or_everywhere() {
    let app = TestApp::spawn().await;
    app.verified_user("hana@example.com", PASSWORD).await;
    let old_laptop = app
        .signed_in("hana@example.com", PASSWORD, Some("laptop"))
        .await;
    app.clock.advance(Duration::from_secs(10));
    let laptop = app
        .signed_in("hana@example.com", PASSWORD, Some("laptop"))
        .await;
    app.clock.advance(Duration::from_secs(10));
    let phone = app
        .signed_in("hana@example.com", PASSWORD, Some("phone"))
        .await;
    app.clock.advance(Duration::from_secs(10));
    let tablet = app
        .signed_in("hana@example.com", PASSWORD, Some("tablet"))
        .await;

    // Signing in again on the laptop replaced its session.
    let body = app
        .graphql_as(old_laptop["token"].as_str().unwrap(), PROFILE, Value::Null)
        .await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");

    // The laptop is used later than the others: it comes first, without a write per request.
    app.clock.advance(Duration::from_secs(60));
    let laptop_token = laptop["token"].as_str().unwrap();
    let body = app.graphql_as(laptop_token, SESSIONS, Value::Null).await;
    let sessions = body["data"]["sessions"].as_array().unwrap().clone();
    let devices: Vec<&str> = sessions
        .iter()
        .map(|s| s["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["laptop", "tablet", "phone"], "{body}");
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[1]["current"], false);
    assert_eq!(
        sessions[0]["lastSeenAt"],
        keyhold::clock::iso8601(app.clock.now())
    );
    assert_eq!(sessions[0]["name"], "test device");
    assert_eq!(sessions[0]["ipAddress"], "127.0.0.1");

    let body = app
        .graphql_as(
            laptop_token,
            "mutation { logout(deviceInfo: { deviceId: \"phone\" }) { status deviceId } }",
            Value::Null,
        )
        .await;
    assert_eq!(body["data"]["logout"]["deviceId"], "phone", "{body}");
    let body = app
        .graphql_as(phone["token"].as_str().unwrap(), PROFILE, Value::Null)
        .await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    let body = app.graphql_as(laptop_token, PROFILE, Value::Null).await;
    assert!(body["errors"].is_null(), "the caller stays signed in");

    let body = app
        .graphql_as(
            laptop_token,
            "mutation { logout(deviceInfo: { deviceId: \"no-such-device\" }) { status } }",
            Value::Null,
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");

    let body = app
        .graphql_as(
            laptop_token,
            "mutation { logout(allDevices: true) { status } }",
            Value::Null,
        )
        .await;
    assert_eq!(body["data"]["logout"]["status"], 200);
    for token in [laptop_token, tablet["token"].as_str().unwrap()] {
        let body = app.graphql_as(token, PROFILE, Value::Null).await;
        assert_eq!(error_code(&body), "INVALID_TOKEN");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_signing_key_survives_a_restart() {
    let app = TestApp::spawn().await;
    app.verified_user("ivy@example.com", PASSWORD).await;
    let login = app.signed_in("ivy@example.com", PASSWORD, None).await;
    let kept = app.stop_keeping_storage().await;

    let config = crate::helpers::test_config(kept.path().join("data"), 1);
    let app = keyhold::Application::build(config).await.unwrap();
    let body =
        crate::helpers::graphql_on(&app, login["token"].as_str(), PROFILE, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "ivy@example.com",
        "{body}"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn update_profile_changes_fields_and_an_address_change_is_verified_again() {
    let app = TestApp::spawn().await;
    app.verified_user("jay@example.com", PASSWORD).await;
    let login = app.signed_in("jay@example.com", PASSWORD, None).await;
    let token = login["token"].as_str().unwrap();
    let update = "mutation($data: String!) { updateProfile(input: { data: $data }) { status errors userProfile { email emailVerified firstName city optInMarketing } } }";

    let body = app
        .graphql_as(
            token,
            update,
            json!({ "data": json!({ "firstName": "Jay", "city": "Lyon", "optInMarketing": true }).to_string() }),
        )
        .await;
    let result = &body["data"]["updateProfile"];
    assert_eq!(result["status"], 200, "{body}");
    assert_eq!(result["userProfile"]["firstName"], "Jay");
    assert_eq!(result["userProfile"]["city"], "Lyon");
    assert_eq!(result["userProfile"]["optInMarketing"], true);

    for (document, field) in [
        (json!({ "nickname": "J" }), "nickname"),
        (json!({ "password": "new one please" }), "password"),
        (json!({ "email": "bad" }), "email"),
        (json!({ "dateOfBirth": "yesterday" }), "dateOfBirth"),
    ] {
        let body = app
            .graphql_as(token, update, json!({ "data": document.to_string() }))
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{document}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field);
    }

    // A new address needs the current password.
    let change = "mutation($data: String!, $password: String) { updateProfile(input: { data: $data }, password: $password) { status userProfile { email emailVerified } } }";
    let new_address = json!({ "email": "jay@new.example" }).to_string();
    for password in [Value::Null, json!("not the password")] {
        let body = app
            .graphql_as(
                token,
                change,
                json!({ "data": new_address, "password": password }),
            )
            .await;
        assert_eq!(
            error_code(&body),
            "INVALID_CREDENTIALS",
            "{password}: {body}"
        );
    }
    let change = "mutation($data: String!, $password: String) { updateProfile(input: { data: $data }, password: $password) { status userProfile { email emailVerified pendingEmail } } }";
    let body = app
        .graphql_as(
            token,
            change,
            json!({ "data": new_address, "password": PASSWORD }),
        )
        .await;
    // Pending: the account keeps its verified address until the new one is shown to work.
    assert_eq!(
        body["data"]["updateProfile"]["userProfile"],
        json!({ "email": "jay@example.com", "emailVerified": true, "pendingEmail": "jay@new.example" }),
        "{body}"
    );
    let notice = app
        .mailbox
        .wait_for_subject("jay@example.com", "change of your e-mail address")
        .await;
    assert!(notice.text().contains("jay@new.example"));
    let code = app
        .mailbox
        .wait_for_subject("jay@new.example", "Confirm")
        .await
        .link_code();
    // Until then the old address signs in, and the new one is nobody's.
    app.signed_in("jay@example.com", PASSWORD, Some("second"))
        .await;
    let body = app.login("jay@new.example", PASSWORD, None).await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    app.verify_email(&code).await;
    let notice = app
        .mailbox
        .wait_for_subject("jay@example.com", "address was changed")
        .await;
    assert!(notice.text().contains("jay@new.example"));
    let body = app.login("jay@example.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    // The code works once.
    let body = app
        .graphql(
            "mutation($c: String!) { verifyEmail(code: $c) { verified } }",
            json!({ "c": code }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    app.signed_in("jay@new.example", PASSWORD, None).await;
    app.stop().await;
}

#[tokio::test]
async fn a_session_ends_at_its_maximum_age_however_often_it_is_refreshed() {
    let app = TestApp::spawn().await;
    app.verified_user("max@example.com", PASSWORD).await;
    let login = app.signed_in("max@example.com", PASSWORD, None).await;
    let mut refresh = login["refreshToken"].as_str().unwrap().to_string();
    let day = Duration::from_secs(86_400);
    // Every 20 days, well inside the 30-day refresh lifetime: fine until day 80.
    for _ in 0..4 {
        app.clock.advance(20 * day);
        let body = app.graphql(NEW_TOKEN, json!({ "refresh": refresh })).await;
        refresh = body["data"]["newToken"]["refreshToken"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_string();
    }
    // Day 91: 11 days after the last refresh, but past tokens.session_max_age (90 days).
    app.clock.advance(11 * day);
    let body = app.graphql(NEW_TOKEN, json!({ "refresh": refresh })).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn changing_the_address_ends_the_other_devices_sessions() {
    let app = TestApp::spawn().await;
    app.verified_user("ida@example.com", PASSWORD).await;
    let laptop = app
        .signed_in("ida@example.com", PASSWORD, Some("laptop"))
        .await;
    let phone = app
        .signed_in("ida@example.com", PASSWORD, Some("phone"))
        .await;
    let (laptop, phone) = (
        laptop["token"].as_str().unwrap(),
        phone["token"].as_str().unwrap(),
    );
    let change = "mutation($data: String!, $password: String) { updateProfile(input: { data: $data }, password: $password) { status } }";
    let body = app
        .graphql_as(
            laptop,
            change,
            json!({ "data": json!({ "email": "ida@new.example" }).to_string(), "password": PASSWORD }),
        )
        .await;
    assert_eq!(body["data"]["updateProfile"]["status"], 200, "{body}");
    // Pending, nothing ends yet.
    let profile = "{ userProfile { email } }";
    let body = app.graphql_as(phone, profile, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "ida@example.com",
        "{body}"
    );
    let code = app
        .mailbox
        .wait_for_subject("ida@new.example", "Confirm")
        .await
        .link_code();
    app.verify_email(&code).await;
    // Applied: the device that asked stays, the other one is out.
    let body = app.graphql_as(phone, profile, Value::Null).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "{body}");
    let body = app.graphql_as(laptop, profile, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "ida@new.example",
        "{body}"
    );
    // Another field changes nothing of the sessions.
    let phone = app
        .signed_in("ida@new.example", PASSWORD, Some("phone"))
        .await;
    let body = app
        .graphql_as(
            laptop,
            change,
            json!({ "data": json!({ "city": "Oslo" }).to_string() }),
        )
        .await;
    assert_eq!(body["data"]["updateProfile"]["status"], 200, "{body}");
    let body = app
        .graphql_as(phone["token"].as_str().unwrap(), profile, Value::Null)
        .await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "ida@new.example",
        "{body}"
    );
    app.stop().await;
}
