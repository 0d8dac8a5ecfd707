//! Passkeys over HTTPS, with webauthn-rs's software authenticator in the browser's place:
//! adding one takes the password (and with 2FA a code), is used once, expires, and is
//! refused from another origin or for another relying party; removing one ends no session.

use std::time::Duration;

use serde_json::{Value, json};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::{AuthenticatorBackend, WebauthnAuthenticator};
use webauthn_rs::prelude::{CreationChallengeResponse, Url};

use crate::helpers::{PASSWORD, TestApp, error_code};

const START: &str = "mutation($password: String, $code: String) { startPasskeyRegistration(password: $password, code: $code) { challengeId options } }";
const FINISH: &str = "mutation($id: String!, $credential: String!, $name: String) { finishPasskeyRegistration(challengeId: $id, credential: $credential, name: $name) { id name createdAt lastUsedAt backedUp } }";
const LIST: &str = "{ passkeys { id name createdAt lastUsedAt backedUp } }";
const REMOVE: &str = "mutation($id: String!, $password: String, $code: String) { removePasskey(id: $id, password: $password, code: $code) }";

/// The origin of the test server's pages, as its configuration (`server.public_url`) has it.
fn origin() -> Url {
    Url::parse("https://localhost:8443").unwrap()
}

/// A verified user, signed in: the access token.
async fn signed_in(app: &TestApp, email: &str) -> String {
    app.verified_user(email, PASSWORD).await;
    let login = app.signed_in(email, PASSWORD, None).await;
    login["token"].as_str().unwrap().to_string()
}

/// `startPasskeyRegistration` with the password: the challenge ID and the options.
async fn start(app: &TestApp, token: &str) -> (String, CreationChallengeResponse) {
    let body = app
        .graphql_as(token, START, json!({ "password": PASSWORD }))
        .await;
    let started = &body["data"]["startPasskeyRegistration"];
    assert!(started.is_object(), "{body}");
    let options: Value = serde_json::from_str(started["options"].as_str().unwrap()).unwrap();
    let options = serde_json::from_value(json!({ "publicKey": options })).unwrap();
    (
        started["challengeId"].as_str().unwrap().to_string(),
        options,
    )
}

/// The authenticator's answer to `options`, as the JSON a browser's `toJSON()` gives.
fn answer(key: &mut SoftPasskey, at: Url, options: CreationChallengeResponse) -> String {
    let credential = key.do_registration(at, options).unwrap();
    serde_json::to_string(&credential).unwrap()
}

/// The authenticator's answer as a client that skips the browser's own origin checks would
/// send it from a page at `at`: the client data names `at`, and the authenticator signs it.
fn answer_from(key: &mut SoftPasskey, at: &str, options: CreationChallengeResponse) -> String {
    let at = Url::parse(at).unwrap();
    let credential =
        AuthenticatorBackend::perform_register(key, at, options.public_key, 60_000).unwrap();
    serde_json::to_string(&credential).unwrap()
}

async fn finish(app: &TestApp, token: &str, id: &str, credential: &str) -> Value {
    app.graphql_as(
        token,
        FINISH,
        json!({ "id": id, "credential": credential, "name": "laptop" }),
    )
    .await
}

async fn passkeys(app: &TestApp, token: &str) -> Vec<Value> {
    let body = app.graphql_as(token, LIST, Value::Null).await;
    body["data"]["passkeys"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_passkey_is_added_listed_and_removed_with_notices_and_no_session_ends() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "pia@example.com").await;
    assert!(passkeys(&app, &token).await.is_empty());

    let mut key = SoftPasskey::new(true);
    let (id, options) = start(&app, &token).await;
    let body = finish(&app, &token, &id, &answer(&mut key, origin(), options)).await;
    let added = &body["data"]["finishPasskeyRegistration"];
    assert_eq!(added["name"], "laptop", "{body}");
    assert!(added["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(added["lastUsedAt"].is_null());
    let listed = passkeys(&app, &token).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], added["id"]);
    let notice = app
        .mailbox
        .wait_for_subject("pia@example.com", "A passkey was added")
        .await;
    assert!(notice.text().contains("\"laptop\""), "{}", notice.text());

    // A second passkey, from another authenticator: an account keeps several.
    let mut other = SoftPasskey::new(true);
    let (id, options) = start(&app, &token).await;
    let body = finish(&app, &token, &id, &answer(&mut other, origin(), options)).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(passkeys(&app, &token).await.len(), 2);

    let removed = app
        .graphql_as(
            &token,
            REMOVE,
            json!({ "id": added["id"], "password": PASSWORD }),
        )
        .await;
    assert_eq!(removed["data"]["removePasskey"], true, "{removed}");
    app.mailbox
        .wait_for_subject("pia@example.com", "A passkey was removed")
        .await;
    let left = passkeys(&app, &token).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"], added["id"]);
    // Removed already: nothing to remove, and the session that did it still works.
    let again = app
        .graphql_as(
            &token,
            REMOVE,
            json!({ "id": added["id"], "password": PASSWORD }),
        )
        .await;
    assert_eq!(again["data"]["removePasskey"], false, "{again}");

    let audit = app
        .app()
        .store()
        .audit_since(0, Some("pia@example.com"), 100)
        .await
        .unwrap();
    let events: Vec<_> = audit.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events.iter().filter(|e| **e == "passkey_added").count(),
        2,
        "{events:?}"
    );
    assert!(events.contains(&"passkey_removed"), "{events:?}");
}

#[tokio::test]
async fn adding_a_passkey_takes_the_password_and_with_2fa_a_code() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "quin@example.com").await;
    for password in [json!(null), json!("not the password")] {
        let body = app
            .graphql_as(&token, START, json!({ "password": password }))
            .await;
        assert!(body["data"]["startPasskeyRegistration"].is_null(), "{body}");
        assert_eq!(error_code(&body), "INVALID_CREDENTIALS", "{body}");
    }
    // With two-factor sign-in on, the password alone is not enough; a recovery code is.
    let body = app
        .graphql_as(
            &token,
            "mutation($p: String) { enable2Fa(password: $p) { recoveryCodes } }",
            json!({ "p": PASSWORD }),
        )
        .await;
    let recovery: Vec<String> = body["data"]["enable2Fa"]["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let body = app
        .graphql_as(&token, START, json!({ "password": PASSWORD }))
        .await;
    assert!(body["data"]["startPasskeyRegistration"].is_null(), "{body}");
    assert!(!body["errors"].is_null(), "{body}");
    let body = app
        .graphql_as(
            &token,
            START,
            json!({ "password": PASSWORD, "code": "not-a-code" }),
        )
        .await;
    assert!(body["data"]["startPasskeyRegistration"].is_null(), "{body}");
    let body = app
        .graphql_as(
            &token,
            START,
            json!({ "password": PASSWORD, "code": recovery[0] }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    // The recovery code is spent by the change that used it.
    let body = app
        .graphql_as(
            &token,
            START,
            json!({ "password": PASSWORD, "code": recovery[0] }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
}

#[tokio::test]
async fn a_registration_answer_works_once_and_not_after_the_ceremony_expires() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "rae@example.com").await;
    let mut key = SoftPasskey::new(true);
    let (id, options) = start(&app, &token).await;
    let credential = answer(&mut key, origin(), options);
    let body = finish(&app, &token, &id, &credential).await;
    assert!(body["errors"].is_null(), "{body}");
    let replayed = finish(&app, &token, &id, &credential).await;
    assert_eq!(error_code(&replayed), "INVALID_CODE", "{replayed}");
    assert_eq!(passkeys(&app, &token).await.len(), 1);

    let mut late = SoftPasskey::new(true);
    let (id, options) = start(&app, &token).await;
    let credential = answer(&mut late, origin(), options);
    app.clock.advance(Duration::from_secs(5 * 60 + 1));
    let body = finish(&app, &token, &id, &credential).await;
    assert_eq!(error_code(&body), "CODE_EXPIRED", "{body}");
    assert_eq!(passkeys(&app, &token).await.len(), 1);
}

#[tokio::test]
async fn an_answer_from_another_origin_or_for_another_site_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "sol@example.com").await;
    let mut key = SoftPasskey::new(true);

    // A page on another site relaying our options: the browser writes its origin into the
    // client data.
    let (id, options) = start(&app, &token).await;
    let credential = answer_from(&mut key, "https://evil.example", options);
    let body = finish(&app, &token, &id, &credential).await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");

    // From the right origin, but made for another relying party ID: the authenticator signs
    // that RP ID's hash into its data.
    let (id, mut options) = start(&app, &token).await;
    options.public_key.rp.id = "example.com".to_string();
    let credential = answer_from(&mut key, "https://localhost:8443", options);
    let body = finish(&app, &token, &id, &credential).await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");

    // A right answer to a ceremony that a wrong answer already ended.
    let (id, options) = start(&app, &token).await;
    let wrong = answer_from(&mut key, "https://evil.example", options.clone());
    let right = answer(&mut key, origin(), options);
    assert_eq!(
        error_code(&finish(&app, &token, &id, &wrong).await),
        "INVALID_CODE"
    );
    assert_eq!(
        error_code(&finish(&app, &token, &id, &right).await),
        "INVALID_CODE"
    );

    // Not JSON of a credential at all.
    let (id, _) = start(&app, &token).await;
    for junk in ["{", "[]", "{\"id\": 1}"] {
        let body = finish(&app, &token, &id, junk).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "credential");
    }
    assert!(passkeys(&app, &token).await.is_empty());

    // The same client at the right origin is accepted: what was refused was the origin.
    let (id, options) = start(&app, &token).await;
    let credential = answer_from(&mut key, "https://localhost:8443", options);
    let body = finish(&app, &token, &id, &credential).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(passkeys(&app, &token).await.len(), 1);
}
