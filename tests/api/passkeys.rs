//! Passkeys over HTTPS, with webauthn-rs's software authenticator in the browser's place:
//! adding one takes the password (and with 2FA a code), is used once, expires, and is
//! refused from another origin or for another relying party; removing one ends no session.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::{AuthenticatorBackend, WebauthnAuthenticator};
use webauthn_rs::prelude::{CreationChallengeResponse, Url};

use crate::helpers::{PASSWORD, TestApp, error_code};

pub(crate) const START: &str = "mutation($password: String, $code: String) { startPasskeyRegistration(password: $password, code: $code) { challengeId options } }";
pub(crate) const FINISH: &str = "mutation($id: String!, $credential: String!, $name: String) { finishPasskeyRegistration(challengeId: $id, credential: $credential, name: $name) { id name createdAt lastUsedAt backedUp } }";
const LIST: &str = "{ passkeys { id name createdAt lastUsedAt backedUp } }";
const REMOVE: &str = "mutation($id: String!, $password: String, $code: String) { removePasskey(id: $id, password: $password, code: $code) }";

/// The origin of the test server's pages, as its configuration (`server.public_url`) has it.
pub(crate) fn origin() -> Url {
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
pub(crate) fn answer(key: &mut SoftPasskey, at: Url, options: CreationChallengeResponse) -> String {
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

/// Registers a passkey on `key` to the account of `token`, as a browser at the right origin
/// would: `finishPasskeyRegistration`'s whole answer.
pub(crate) async fn register(app: &TestApp, token: &str, key: &mut SoftPasskey) -> Value {
    let (id, options) = start(app, token).await;
    finish(app, token, &id, &answer(key, origin(), options)).await
}

async fn finish(app: &TestApp, token: &str, id: &str, credential: &str) -> Value {
    app.graphql_as(
        token,
        FINISH,
        json!({ "id": id, "credential": credential, "name": "laptop" }),
    )
    .await
}

/// `removePasskey` of `id`, with the password.
async fn remove(app: &TestApp, token: &str, id: &str) -> Value {
    app.graphql_as(token, REMOVE, json!({ "id": id, "password": PASSWORD }))
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
    let body = register(&app, &token, &mut key).await;
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
    let body = register(&app, &token, &mut other).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(passkeys(&app, &token).await.len(), 2);

    let removed = remove(&app, &token, added["id"].as_str().unwrap()).await;
    assert_eq!(removed["data"]["removePasskey"], true, "{removed}");
    app.mailbox
        .wait_for_subject("pia@example.com", "A passkey was removed")
        .await;
    let left = passkeys(&app, &token).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"], added["id"]);
    // Removed already: nothing to remove, and the session that did it still works.
    let again = remove(&app, &token, added["id"].as_str().unwrap()).await;
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
    let recovery = app.enable_2fa(&token, PASSWORD).await;
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

pub(crate) const START_LOGIN: &str =
    "mutation($email: EmailAddress) { startPasskeyLogin(email: $email) { challengeId options } }";
pub(crate) const FINISH_LOGIN: &str = "mutation($id: String!, $credential: String!, $device: DeviceInfo) { finishPasskeyLogin(challengeId: $id, credential: $credential, deviceInfo: $device) { status token refreshToken deviceId userProfile { email } } }";

/// A verified, signed-in user with one passkey on `key`: the access token, the account's id
/// and the passkey's credential ID.
async fn with_passkey(
    app: &TestApp,
    email: &str,
    key: &mut SoftPasskey,
) -> (String, String, String) {
    app.verified_user(email, PASSWORD).await;
    let login = app.signed_in(email, PASSWORD, None).await;
    let token = login["token"].as_str().unwrap().to_string();
    let user_id = login["userUid"].as_str().unwrap().to_string();
    let body = register(app, &token, key).await;
    let passkey = body["data"]["finishPasskeyRegistration"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string();
    (token, user_id, passkey)
}

/// `startPasskeyLogin`: the challenge ID and the request options (the `publicKey` JSON).
async fn start_login(app: &TestApp, email: Option<&str>) -> (String, Value) {
    let body = app.graphql(START_LOGIN, json!({ "email": email })).await;
    let started = &body["data"]["startPasskeyLogin"];
    assert!(started.is_object(), "{body}");
    let options = serde_json::from_str(started["options"].as_str().unwrap()).unwrap();
    (
        started["challengeId"].as_str().unwrap().to_string(),
        options,
    )
}

/// The authenticator's answer to request `options`, from a page at `at`. A usernameless
/// request lists no credentials; this authenticator keeps none, so the test names
/// `passkey` for it, and returns the account's handle as a discoverable passkey would.
pub(crate) fn assert_with(
    key: &mut SoftPasskey,
    at: &str,
    mut options: Value,
    passkey: &str,
    user_handle: Option<&str>,
) -> String {
    if options["allowCredentials"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        options["allowCredentials"] = json!([{ "type": "public-key", "id": passkey }]);
    }
    let options = serde_json::from_value(options).unwrap();
    let at = Url::parse(at).unwrap();
    let credential = AuthenticatorBackend::perform_auth(key, at, options, 60_000).unwrap();
    let mut credential = serde_json::to_value(&credential).unwrap();
    if let Some(handle) = user_handle {
        let uuid = uuid::Uuid::parse_str(handle).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        credential["response"]["userHandle"] = json!(b64.encode(uuid.as_bytes()));
    }
    credential.to_string()
}

async fn finish_login(app: &TestApp, id: &str, credential: &str) -> Value {
    app.graphql(
        FINISH_LOGIN,
        json!({ "id": id, "credential": credential, "device": { "deviceId": "phone", "name": "Phone" } }),
    )
    .await
}

#[tokio::test]
async fn a_passkey_signs_in_by_address_and_usernameless() {
    let app = TestApp::spawn().await;
    let mut key = SoftPasskey::new(true);
    let (_, user_id, passkey) = with_passkey(&app, "tara@example.com", &mut key).await;

    let (id, options) = start_login(&app, Some("tara@example.com")).await;
    assert_eq!(options["allowCredentials"][0]["id"], passkey, "{options}");
    assert_eq!(options["userVerification"], "required");
    let credential = assert_with(&mut key, "https://localhost:8443", options, &passkey, None);
    let body = finish_login(&app, &id, &credential).await;
    let signed_in = &body["data"]["finishPasskeyLogin"];
    assert_eq!(signed_in["status"], 200, "{body}");
    assert_eq!(signed_in["deviceId"], "phone");
    assert_eq!(signed_in["userProfile"]["email"], "tara@example.com");
    let token = signed_in["token"].as_str().unwrap();
    let listed = passkeys(&app, token).await;
    assert!(listed[0]["lastUsedAt"].is_string(), "{listed:?}");

    // The same answer again: its ceremony is gone.
    let replayed = finish_login(&app, &id, &credential).await;
    assert_eq!(error_code(&replayed), "INVALID_CODE", "{replayed}");

    let (id, options) = start_login(&app, None).await;
    assert!(
        options["allowCredentials"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{options}"
    );
    let credential = assert_with(
        &mut key,
        "https://localhost:8443",
        options,
        &passkey,
        Some(&user_id),
    );
    let body = finish_login(&app, &id, &credential).await;
    assert_eq!(body["data"]["finishPasskeyLogin"]["status"], 200, "{body}");
    // Its refresh token works as any other.
    let refresh = body["data"]["finishPasskeyLogin"]["refreshToken"]
        .as_str()
        .unwrap();
    let body = app
        .graphql(crate::helpers::NEW_TOKEN, json!({ "refresh": refresh }))
        .await;
    assert_eq!(body["data"]["newToken"]["status"], 200, "{body}");
}

#[tokio::test]
async fn an_unknown_address_gets_the_same_shape_of_request_and_no_sign_in() {
    let app = TestApp::spawn().await;
    let mut key = SoftPasskey::new(true);
    let (_, _, passkey) = with_passkey(&app, "uma@example.com", &mut key).await;
    let (_, known) = start_login(&app, Some("uma@example.com")).await;
    let (id, unknown) = start_login(&app, Some("nobody@example.com")).await;
    let (_, again) = start_login(&app, Some("nobody@example.com")).await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&known), keys(&unknown), "{known} / {unknown}");
    assert!(!unknown["allowCredentials"].as_array().unwrap().is_empty());
    assert_eq!(
        unknown["allowCredentials"], again["allowCredentials"],
        "the same made-up passkeys each time"
    );
    // Even a real passkey (uma's, for the address of nobody) finishes nothing.
    let mut unknown = unknown;
    unknown["allowCredentials"] = json!([]);
    let credential = assert_with(&mut key, "https://localhost:8443", unknown, &passkey, None);
    let body = finish_login(&app, &id, &credential).await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
}

#[tokio::test]
async fn passkey_answers_from_elsewhere_for_another_account_or_removed_are_refused_and_counted() {
    let app = TestApp::spawn_with(|c| c.two_factor.max_failures_per_account = 5).await;
    let mut key = SoftPasskey::new(true);
    let (token, user_id, passkey) = with_passkey(&app, "vic@example.com", &mut key).await;
    let mut theirs = SoftPasskey::new(true);
    let (_, other_id, other_passkey) = with_passkey(&app, "wes@example.com", &mut theirs).await;

    // Not the JSON of a credential: refused before anything is used up.
    let (id, options) = start_login(&app, Some("vic@example.com")).await;
    let body = finish_login(&app, &id, "{\"id\": 1}").await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "credential");
    // From the right origin, signed for another relying party ID: refused, and the ceremony
    // is used up by it.
    let mut elsewhere = options.clone();
    elsewhere["rpId"] = json!("example.com");
    let credential = assert_with(
        &mut key,
        "https://localhost:8443",
        elsewhere,
        &passkey,
        None,
    );
    assert_eq!(
        error_code(&finish_login(&app, &id, &credential).await),
        "INVALID_CODE"
    );
    let credential = assert_with(&mut key, "https://localhost:8443", options, &passkey, None);
    assert_eq!(
        error_code(&finish_login(&app, &id, &credential).await),
        "INVALID_CODE"
    );
    // From another origin.
    let (id, options) = start_login(&app, Some("vic@example.com")).await;
    let credential = assert_with(&mut key, "https://evil.example", options, &passkey, None);
    assert_eq!(
        error_code(&finish_login(&app, &id, &credential).await),
        "INVALID_CODE"
    );
    // Asked for vic's passkeys, answered with wes's, claiming either account.
    for handle in [None, Some(user_id.as_str()), Some(other_id.as_str())] {
        let (id, mut options) = start_login(&app, Some("vic@example.com")).await;
        options["allowCredentials"] = json!([]);
        let credential = assert_with(
            &mut theirs,
            "https://localhost:8443",
            options,
            &other_passkey,
            handle,
        );
        let body = finish_login(&app, &id, &credential).await;
        assert_eq!(error_code(&body), "INVALID_CODE", "{handle:?}: {body}");
    }
    // Five failures spent vic's budget: even the right passkey now waits.
    let (id, options) = start_login(&app, Some("vic@example.com")).await;
    let credential = assert_with(&mut key, "https://localhost:8443", options, &passkey, None);
    assert_eq!(
        error_code(&finish_login(&app, &id, &credential).await),
        "TOO_MANY_ATTEMPTS"
    );

    // wes removes his passkey; it signs nobody in any more.
    let wes = app.signed_in("wes@example.com", PASSWORD, None).await;
    let wes_token = wes["token"].as_str().unwrap();
    let removed = remove(&app, wes_token, &other_passkey).await;
    assert_eq!(removed["data"]["removePasskey"], true, "{removed}");
    let (id, options) = start_login(&app, None).await;
    let credential = assert_with(
        &mut theirs,
        "https://localhost:8443",
        options,
        &other_passkey,
        Some(&other_id),
    );
    assert_eq!(
        error_code(&finish_login(&app, &id, &credential).await),
        "INVALID_CODE"
    );
    let _ = token;
}

#[tokio::test]
async fn a_passkey_whose_counter_goes_back_is_refused_and_audited_as_cloned() {
    let app = TestApp::spawn().await;
    let mut key = SoftPasskey::new(true);
    let (_, _, passkey) = with_passkey(&app, "xia@example.com", &mut key).await;
    // Two sign-ins started together; the later answer (a higher counter) finishes first.
    let (first, options_1) = start_login(&app, Some("xia@example.com")).await;
    let (second, options_2) = start_login(&app, Some("xia@example.com")).await;
    let earlier = assert_with(
        &mut key,
        "https://localhost:8443",
        options_1,
        &passkey,
        None,
    );
    let later = assert_with(
        &mut key,
        "https://localhost:8443",
        options_2,
        &passkey,
        None,
    );
    let body = finish_login(&app, &second, &later).await;
    assert_eq!(body["data"]["finishPasskeyLogin"]["status"], 200, "{body}");
    let body = finish_login(&app, &first, &earlier).await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    let audit = app
        .app()
        .store()
        .audit_since(0, Some("xia@example.com"), 100)
        .await
        .unwrap();
    assert!(
        audit.iter().any(|r| r.event == "passkey_cloned"),
        "{:?}",
        audit.iter().map(|r| &r.event).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn passkey_sign_ins_share_the_per_ip_sign_in_limit() {
    let app = TestApp::spawn_with(|c| {
        c.limits.enabled = true;
        c.limits.login_per_ip_per_minute = 2;
    })
    .await;
    // One password sign-in attempt and one passkey sign-in use the budget of two.
    app.login("yan@example.com", PASSWORD, None).await;
    let body = app
        .graphql(START_LOGIN, json!({ "email": "yan@example.com" }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    for email in [json!("yan@example.com"), json!(null)] {
        let body = app.graphql(START_LOGIN, json!({ "email": email })).await;
        assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    }
    assert_eq!(
        error_code(&app.login("yan@example.com", PASSWORD, None).await),
        "RATE_LIMITED"
    );
}

#[tokio::test]
async fn a_passkey_completes_a_two_factor_sign_in_in_place_of_the_code() {
    const LOGIN_202: &str = "mutation($email: EmailAddress!, $password: String!) { login(credentials: { email: $email, password: $password }) { status sessionId passkeyOptions } }";
    const CONFIRM: &str = "mutation($id: String!, $email: EmailAddress!, $credential: String!) { confirm2FaWithPasskey(sessionId: $id, email: $email, credential: $credential) { status token userProfile { email } } }";
    let app = TestApp::spawn().await;
    let mut key = SoftPasskey::new(true);
    let (token, _, passkey) = with_passkey(&app, "zed@example.com", &mut key).await;
    app.enable_2fa(&token, PASSWORD).await;

    let pending = |body: &Value| {
        let login = &body["data"]["login"];
        assert_eq!(login["status"], 202, "{body}");
        let options: Value =
            serde_json::from_str(login["passkeyOptions"].as_str().unwrap()).unwrap();
        (login["sessionId"].as_str().unwrap().to_string(), options)
    };
    let vars = json!({ "email": "zed@example.com", "password": PASSWORD });
    let (id, options) = pending(&app.graphql(LOGIN_202, vars.clone()).await);
    assert_eq!(options["allowCredentials"][0]["id"], passkey, "{options}");
    let credential = assert_with(&mut key, "https://localhost:8443", options, &passkey, None);
    let confirm = json!({ "id": id, "email": "zed@example.com", "credential": credential });
    let body = app.graphql(CONFIRM, confirm.clone()).await;
    let signed_in = &body["data"]["confirm2FaWithPasskey"];
    assert_eq!(signed_in["status"], 200, "{body}");
    assert_eq!(signed_in["userProfile"]["email"], "zed@example.com");
    // The sign-in is finished: neither the answer again nor the mailed code finishes it twice.
    let again = app.graphql(CONFIRM, confirm).await;
    assert_eq!(error_code(&again), "INVALID_CODE", "{again}");
    let code = app
        .mailbox
        .wait_for_subject("zed@example.com", "security code")
        .await
        .six_digit_code();
    let body = app
        .graphql(
            "mutation($c: String!, $id: String!, $e: EmailAddress!) { confirm2Fa(code: $c, sessionId: $id, email: $e) { status } }",
            json!({ "c": code, "id": id, "e": "zed@example.com" }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");

    // Another pending sign-in, answered by another account's passkey: refused.
    let mut theirs = SoftPasskey::new(true);
    let (_, _, other) = with_passkey(&app, "ann@example.com", &mut theirs).await;
    let (id, mut options) = pending(&app.graphql(LOGIN_202, vars).await);
    options["allowCredentials"] = json!([]);
    let credential = assert_with(&mut theirs, "https://localhost:8443", options, &other, None);
    let body = app
        .graphql(
            CONFIRM,
            json!({ "id": id, "email": "zed@example.com", "credential": credential }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
}

#[tokio::test]
async fn an_account_keeps_at_most_sixteen_passkeys() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "abe@example.com").await;
    for _ in 0..keyhold::auth::passkeys::MAX_PASSKEYS {
        let mut key = SoftPasskey::new(true);
        let body = register(&app, &token, &mut key).await;
        assert!(body["errors"].is_null(), "{body}");
    }
    assert_eq!(passkeys(&app, &token).await.len(), 16);
    let body = app
        .graphql_as(&token, START, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    // Removing one makes room again.
    let first = passkeys(&app, &token).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        remove(&app, &token, &first).await["data"]["removePasskey"],
        true
    );
    start(&app, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_answer_sent_twice_at_once_is_used_once() {
    let app = TestApp::spawn().await;
    let mut key = SoftPasskey::new(true);
    let (token, _, passkey) = with_passkey(&app, "ike@example.com", &mut key).await;
    for round in 0..10 {
        // A registration's answer, finished by two requests at once.
        let mut other = SoftPasskey::new(true);
        let (id, options) = start(&app, &token).await;
        let credential = answer(&mut other, origin(), options);
        let (a, b) = tokio::join!(
            finish(&app, &token, &id, &credential),
            finish(&app, &token, &id, &credential)
        );
        let added = [&a, &b]
            .iter()
            .filter(|body| body["errors"].is_null())
            .count();
        assert_eq!(added, 1, "round {round}: {a} / {b}");
        assert_eq!(passkeys(&app, &token).await.len(), round + 2);

        // A sign-in's answer, finished by two requests at once.
        let (id, options) = start_login(&app, Some("ike@example.com")).await;
        let credential = assert_with(&mut key, "https://localhost:8443", options, &passkey, None);
        let (a, b) = tokio::join!(
            finish_login(&app, &id, &credential),
            finish_login(&app, &id, &credential)
        );
        let signed_in = [&a, &b]
            .iter()
            .filter(|body| body["data"]["finishPasskeyLogin"]["status"] == 200)
            .count();
        assert_eq!(signed_in, 1, "round {round}: {a} / {b}");
    }
}
