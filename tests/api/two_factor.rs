use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, error_code};

const CONFIRM: &str = "mutation($code: String!, $id: String!, $email: EmailAddress!) { confirm2Fa(code: $code, sessionId: $id, email: $email, timestamp: 12345) { status token refreshToken sessionId userProfile { twoFactorAuth twoFactorMethod } } }";
const RESEND: &str = "mutation($id: String!, $email: EmailAddress!) { resend2Fa(sessionId: $id, email: $email) { status sessionId expiresAt retryAfter } }";
const ENABLE: &str = "mutation($password: String, $method: TwoFactorMethod, $code: String) { enable2Fa(password: $password, method: $method, code: $code) { status recoveryCodes totpUri totpQrPng } }";
const DISABLE: &str = "mutation($password: String, $code: String) { disable2Fa(password: $password, code: $code) { status } }";
const SEND: &str = "mutation($reason: TwoFactorReason) { send2Fa(reason: $reason) { status sessionId expiresAt retryAfter } }";
const PROFILE: &str = "{ userProfile { email twoFactorAuth twoFactorMethod } }";

/// A verified user, signed in, with e-mailed 2FA on. Returns the access token and the
/// recovery codes.
async fn with_email_2fa(app: &TestApp, email: &str) -> (String, Vec<String>) {
    app.verified_user(email, PASSWORD).await;
    let login = app.signed_in(email, PASSWORD, None).await;
    let token = login["token"].as_str().unwrap().to_string();
    let codes = app.enable_2fa(&token, PASSWORD).await;
    (token, codes)
}

/// `login` for a 2FA account: the challenge id from the 202 answer.
async fn challenge(app: &TestApp, email: &str) -> String {
    let body = app.login(email, PASSWORD, Some("device-2fa")).await;
    let login = &body["data"]["login"];
    assert_eq!(login["status"], 202, "{body}");
    login["sessionId"].as_str().unwrap().to_string()
}

async fn confirm(app: &TestApp, code: &str, id: &str, email: &str) -> Value {
    app.graphql(CONFIRM, json!({ "code": code, "id": id, "email": email }))
        .await
}

#[tokio::test]
async fn an_email_second_factor_signs_in_only_with_the_mailed_code() {
    let app = TestApp::spawn().await;
    let (token, recovery) = with_email_2fa(&app, "amy@example.com").await;
    assert_eq!(recovery.len(), 10);
    let body = app.graphql_as(&token, PROFILE, Value::Null).await;
    assert_eq!(body["data"]["userProfile"]["twoFactorAuth"], true);
    assert_eq!(body["data"]["userProfile"]["twoFactorMethod"], "EMAIL");

    let body = app
        .login("amy@example.com", PASSWORD, Some("device-2fa"))
        .await;
    let login = &body["data"]["login"];
    assert_eq!(login["status"], 202);
    assert_eq!(login["promptTwoFactorAuth"], true);
    assert_eq!(login["twoFactorMethod"], "EMAIL");
    assert!(login["token"].is_null() && login["refreshToken"].is_null());
    let id = login["sessionId"].as_str().unwrap();

    let mail = app
        .mailbox
        .wait_for_subject("amy@example.com", "security code")
        .await;
    let code = mail.six_digit_code();
    assert!(mail.text().contains("to sign in"));
    let expires = keyhold::clock::iso8601(app.clock.now() + Duration::from_secs(600));
    assert!(mail.text().contains(&expires), "{}", mail.text());

    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        error_code(&confirm(&app, wrong, id, "amy@example.com").await),
        "INVALID_CODE"
    );
    assert_eq!(
        error_code(&confirm(&app, &code, id, "someone@example.com").await),
        "INVALID_CODE",
        "the e-mail must match too"
    );
    let body = confirm(&app, &code, id, "amy@example.com").await;
    let signed_in = &body["data"]["confirm2Fa"];
    assert_eq!(signed_in["status"], 200, "{body}");
    assert!(signed_in["token"].is_string() && signed_in["refreshToken"].is_string());
    assert_eq!(signed_in["userProfile"]["twoFactorAuth"], true);
    let access = signed_in["token"].as_str().unwrap();
    let body = app.graphql_as(access, PROFILE, Value::Null).await;
    assert!(body["errors"].is_null(), "{body}");

    let body = confirm(&app, &code, id, "amy@example.com").await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "a used code never works twice"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_challenge_dies_after_too_many_wrong_codes() {
    let app = TestApp::spawn().await;
    with_email_2fa(&app, "bo@example.com").await;
    let id = challenge(&app, "bo@example.com").await;
    let code = app
        .mailbox
        .wait_for_subject("bo@example.com", "security code")
        .await
        .six_digit_code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let body = confirm(&app, wrong, &id, "bo@example.com").await;
        assert_eq!(error_code(&body), "INVALID_CODE");
    }
    let body = confirm(&app, &code, &id, "bo@example.com").await;
    assert_eq!(error_code(&body), "TOO_MANY_ATTEMPTS", "{body}");
    assert!(
        body["errors"][0]["extensions"]["retryAfter"]
            .as_u64()
            .unwrap()
            > 0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_second_factor_code_expires() {
    let app = TestApp::spawn().await;
    with_email_2fa(&app, "cal@example.com").await;
    let id = challenge(&app, "cal@example.com").await;
    let code = app
        .mailbox
        .wait_for_subject("cal@example.com", "security code")
        .await
        .six_digit_code();
    app.clock.advance(Duration::from_secs(600));
    let body = confirm(&app, &code, &id, "cal@example.com").await;
    assert_eq!(error_code(&body), "CODE_EXPIRED", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn resend_replaces_the_code_within_a_cooldown_and_a_cap() {
    let app = TestApp::spawn().await;
    with_email_2fa(&app, "dot@example.com").await;
    let id = challenge(&app, "dot@example.com").await;
    let first = app
        .mailbox
        .wait_for_subject("dot@example.com", "security code")
        .await
        .six_digit_code();
    let vars = json!({ "id": id, "email": "dot@example.com" });

    let body = app.graphql(RESEND, vars.clone()).await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 30);

    app.clock.advance(Duration::from_secs(30));
    let body = app.graphql(RESEND, vars.clone()).await;
    let sent = &body["data"]["resend2Fa"];
    assert_eq!(sent["status"], "CODE_SENT", "{body}");
    assert_eq!(sent["sessionId"], id);
    assert_eq!(sent["retryAfter"], 30);
    let second = app
        .mailbox
        .wait_for_nth("dot@example.com", "security code", 2)
        .await
        .six_digit_code();

    for _ in 0..2 {
        app.clock.advance(Duration::from_secs(30));
        let body = app.graphql(RESEND, vars.clone()).await;
        assert_eq!(body["data"]["resend2Fa"]["status"], "CODE_SENT", "{body}");
    }
    app.clock.advance(Duration::from_secs(30));
    let body = app.graphql(RESEND, vars.clone()).await;
    assert_eq!(
        error_code(&body),
        "RATE_LIMITED",
        "the cap of 3 resends: {body}"
    );

    // Mail goes out in the background, so arrival order is not sending order: the newest
    // code is the one in the message dated latest by the server's clock.
    app.mailbox
        .wait_for_nth("dot@example.com", "security code", 4)
        .await;
    let latest = app
        .mailbox
        .to("dot@example.com")
        .into_iter()
        .filter(|m| m.subject().contains("security code"))
        .max_by_key(|m| m.date())
        .unwrap()
        .six_digit_code();
    for old in [first, second] {
        if old != latest {
            let body = confirm(&app, &old, &id, "dot@example.com").await;
            assert_eq!(
                error_code(&body),
                "INVALID_CODE",
                "an old code was replaced"
            );
        }
    }
    let body = confirm(&app, &latest, &id, "dot@example.com").await;
    assert_eq!(body["data"]["confirm2Fa"]["status"], 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn enabling_needs_the_password_and_for_email_a_verified_address() {
    let app = TestApp::spawn_with(|c| c.registration.require_email_verification = false).await;
    app.register(json!({ "email": "eli@example.com", "password": PASSWORD }))
        .await;
    let login = app.signed_in("eli@example.com", PASSWORD, None).await;
    let token = login["token"].as_str().unwrap();
    let body = app
        .graphql_as(token, ENABLE, json!({ "password": "wrong password here" }))
        .await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    let body = app.graphql_as(token, ENABLE, json!({})).await;
    assert_eq!(
        error_code(&body),
        "INVALID_CREDENTIALS",
        "the password is required"
    );
    let body = app
        .graphql_as(token, ENABLE, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(error_code(&body), "EMAIL_NOT_VERIFIED");
    let body = app.graphql_as(token, PROFILE, Value::Null).await;
    assert_eq!(body["data"]["userProfile"]["twoFactorAuth"], false);
    app.stop().await;
}

#[tokio::test]
async fn enabling_twice_changes_nothing_and_a_recovery_code_works_once() {
    let app = TestApp::spawn().await;
    let (token, recovery) = with_email_2fa(&app, "fin@example.com").await;
    let body = app
        .graphql_as(&token, ENABLE, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(body["data"]["enable2Fa"]["status"], "ENABLED");
    assert!(
        body["data"]["enable2Fa"]["recoveryCodes"].is_null(),
        "{body}"
    );

    let id = challenge(&app, "fin@example.com").await;
    let body = confirm(&app, &recovery[3].to_uppercase(), &id, "fin@example.com").await;
    assert_eq!(body["data"]["confirm2Fa"]["status"], 200, "{body}");
    let id = challenge(&app, "fin@example.com").await;
    let body = confirm(&app, &recovery[3], &id, "fin@example.com").await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "a recovery code works once"
    );
    let body = confirm(&app, &recovery[4], &id, "fin@example.com").await;
    assert_eq!(body["data"]["confirm2Fa"]["status"], 200, "{body}");
    app.stop().await;
}

fn totp_from(uri: &str) -> totp_rs::Totp {
    totp_rs::Totp::from_url(uri).unwrap()
}

fn totp_code(totp: &totp_rs::Totp, at: time::OffsetDateTime) -> String {
    totp.generate(u64::try_from(at.unix_timestamp()).unwrap())
        .to_string()
}

#[tokio::test]
async fn totp_is_set_up_with_a_uri_and_qr_code_and_signs_in_without_mail() {
    let app = TestApp::spawn().await;
    app.verified_user("gia@example.com", PASSWORD).await;
    let login = app.signed_in("gia@example.com", PASSWORD, None).await;
    let token = login["token"].as_str().unwrap();

    let body = app
        .graphql_as(
            token,
            ENABLE,
            json!({ "password": PASSWORD, "method": "TOTP" }),
        )
        .await;
    let pending = &body["data"]["enable2Fa"];
    assert_eq!(pending["status"], "TOTP_SETUP_PENDING", "{body}");
    let uri = pending["totpUri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Keyhold:gia%40example.com?"),
        "{uri}"
    );
    assert!(uri.contains("issuer=Keyhold"), "{uri}");
    let png = base64::engine::general_purpose::STANDARD
        .decode(pending["totpQrPng"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let totp = totp_from(uri);
    assert_eq!(totp.digits(), 6);

    let body = app
        .graphql_as(
            token,
            ENABLE,
            json!({ "password": PASSWORD, "method": "TOTP", "code": "000000" }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE");
    let code = totp_code(&totp, app.clock.now());
    let body = app
        .graphql_as(
            token,
            ENABLE,
            json!({ "password": PASSWORD, "method": "TOTP", "code": code }),
        )
        .await;
    assert_eq!(body["data"]["enable2Fa"]["status"], "ENABLED", "{body}");
    assert_eq!(
        body["data"]["enable2Fa"]["recoveryCodes"]
            .as_array()
            .unwrap()
            .len(),
        10
    );

    let mails_before = app.mailbox.to("gia@example.com").len();
    let body = app.login("gia@example.com", PASSWORD, None).await;
    assert_eq!(body["data"]["login"]["status"], 202);
    assert_eq!(body["data"]["login"]["twoFactorMethod"], "TOTP");
    let id = body["data"]["login"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let body = app
        .graphql(RESEND, json!({ "id": id, "email": "gia@example.com" }))
        .await;
    assert_eq!(
        body["data"]["resend2Fa"]["status"], "TOTP_CODE_REQUIRED",
        "{body}"
    );

    // The set-up code's time step is used up: no replay.
    let body = confirm(&app, &code, &id, "gia@example.com").await;
    assert_eq!(error_code(&body), "INVALID_CODE");
    // One step later, the code of the step before is still accepted (±1 step).
    app.clock.advance(Duration::from_secs(30));
    let body = confirm(
        &app,
        &totp_code(&totp, app.clock.now()),
        &id,
        "gia@example.com",
    )
    .await;
    assert_eq!(body["data"]["confirm2Fa"]["status"], 200, "{body}");
    let id = challenge(&app, "gia@example.com").await;
    let body = confirm(
        &app,
        &totp_code(&totp, app.clock.now()),
        &id,
        "gia@example.com",
    )
    .await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "the same step twice is a replay"
    );
    app.clock.advance(Duration::from_secs(30));
    let previous_step = totp_code(&totp, app.clock.now() - Duration::from_secs(30));
    let id = challenge(&app, "gia@example.com").await;
    let body = confirm(&app, &previous_step, &id, "gia@example.com").await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "a step already used, even within ±1"
    );
    let next = totp_code(&totp, app.clock.now() + Duration::from_secs(30));
    let body = confirm(&app, &next, &id, "gia@example.com").await;
    assert_eq!(
        body["data"]["confirm2Fa"]["status"], 200,
        "one step ahead: {body}"
    );

    // TOTP turns off with a current app code in place of a step-up code.
    app.clock.advance(Duration::from_secs(60));
    let body = app
        .graphql_as(
            body["data"]["confirm2Fa"]["token"].as_str().unwrap(),
            DISABLE,
            json!({ "password": PASSWORD, "code": totp_code(&totp, app.clock.now()) }),
        )
        .await;
    assert_eq!(body["data"]["disable2Fa"]["status"], "DISABLED", "{body}");
    assert_eq!(
        app.mailbox.to("gia@example.com").len(),
        mails_before,
        "nothing was mailed"
    );
    app.stop().await;
}

#[tokio::test]
async fn disabling_needs_the_password_and_a_step_up_code_of_its_reason() {
    let app = TestApp::spawn().await;
    let (token, _) = with_email_2fa(&app, "hugo@example.com").await;
    let body = app
        .graphql_as(&token, DISABLE, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(error_code(&body), "FORBIDDEN", "no code: {body}");
    let body = app
        .graphql_as(
            &token,
            DISABLE,
            json!({ "password": "the wrong password", "code": "123456" }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");

    let body = app
        .graphql_as(&token, SEND, json!({ "reason": "GENERIC" }))
        .await;
    assert_eq!(body["data"]["send2Fa"]["status"], "CODE_SENT", "{body}");
    let generic = app
        .mailbox
        .wait_for_nth("hugo@example.com", "security code", 1)
        .await;
    assert!(generic.text().contains("confirm a sensitive operation"));
    let body = app
        .graphql_as(
            &token,
            DISABLE,
            json!({ "password": PASSWORD, "code": generic.six_digit_code() }),
        )
        .await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "a GENERIC code does not disable 2FA"
    );

    let body = app
        .graphql_as(&token, SEND, json!({ "reason": "DISABLE_TWO_FACTOR" }))
        .await;
    let sent = &body["data"]["send2Fa"];
    assert_eq!(sent["status"], "CODE_SENT");
    assert!(sent["sessionId"].is_string());
    let body = app
        .graphql_as(&token, SEND, json!({ "reason": "DISABLE_TWO_FACTOR" }))
        .await;
    assert_eq!(
        error_code(&body),
        "RATE_LIMITED",
        "the cooldown applies to step-up codes"
    );
    let code = app
        .mailbox
        .wait_for_nth("hugo@example.com", "security code", 2)
        .await;
    assert!(code.text().contains("turn off two-factor sign-in"));
    let body = app
        .graphql_as(
            &token,
            DISABLE,
            json!({ "password": PASSWORD, "code": code.six_digit_code() }),
        )
        .await;
    assert_eq!(body["data"]["disable2Fa"]["status"], "DISABLED", "{body}");
    let body = app.graphql_as(&token, PROFILE, Value::Null).await;
    assert_eq!(body["data"]["userProfile"]["twoFactorAuth"], false);
    let body = app
        .graphql_as(&token, DISABLE, json!({ "password": "anything" }))
        .await;
    assert_eq!(
        body["data"]["disable2Fa"]["status"], "DISABLED",
        "already off: nothing to check"
    );
    let login = app.login("hugo@example.com", PASSWORD, None).await;
    assert_eq!(login["data"]["login"]["status"], 200);
    app.stop().await;
}

#[tokio::test]
async fn changing_the_address_with_2fa_on_needs_a_change_email_code_once() {
    let app = TestApp::spawn().await;
    let (token, _) = with_email_2fa(&app, "ivo@example.com").await;
    let update = "mutation($data: String!, $code: String, $password: String) { updateProfile(input: { data: $data }, code: $code, password: $password) { status userProfile { email pendingEmail firstName } } }";
    let body = app
        .graphql_as(
            &token,
            update,
            json!({ "data": json!({ "firstName": "Ivo" }).to_string() }),
        )
        .await;
    assert_eq!(
        body["data"]["updateProfile"]["status"], 200,
        "other fields need no code"
    );
    let change =
        json!({ "data": json!({ "email": "ivo@new.example" }).to_string(), "password": PASSWORD });
    let body = app.graphql_as(&token, update, change.clone()).await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");

    app.graphql_as(&token, SEND, json!({ "reason": "CHANGE_EMAIL" }))
        .await;
    let code = app
        .mailbox
        .wait_for_subject("ivo@example.com", "security code")
        .await
        .six_digit_code();
    let mut with_code = change.clone();
    with_code["code"] = json!(code);
    let body = app.graphql_as(&token, update, with_code.clone()).await;
    assert_eq!(
        body["data"]["updateProfile"]["userProfile"]["pendingEmail"], "ivo@new.example",
        "{body}"
    );
    with_code["data"] = json!(json!({ "email": "ivo@third.example" }).to_string());
    let body = app.graphql_as(&token, update, with_code).await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "the code authorised one change"
    );
    app.stop().await;
}

/// `n` aliased copies of `field` with wrong passwords, in one mutation.
fn aliased_wrong_passwords(field: &str, n: usize) -> String {
    let fields: String = (0..n)
        .map(|i| format!("a{i}: {field}(password: \"wrong password {i}\") {{ status }} "))
        .collect();
    format!("mutation {{ {fields} }}")
}

#[tokio::test]
async fn aliased_wrong_passwords_behind_a_token_count_like_failed_sign_ins() {
    let app = TestApp::spawn_with(|c| c.limits.enabled = true).await;
    app.verified_user("eve@example.com", PASSWORD).await;
    let token = app.signed_in("eve@example.com", PASSWORD, None).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let body = app
        .graphql_as(
            &token,
            &aliased_wrong_passwords("enable2Fa", 20),
            Value::Null,
        )
        .await;
    let codes: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["extensions"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 20, "{body}");
    assert!(codes.contains(&"RATE_LIMITED"), "{codes:?}");
    // The right password now waits too.
    let body = app
        .graphql_as(&token, ENABLE, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    let body = app.login("eve@example.com", PASSWORD, None).await;
    assert_eq!(
        error_code(&body),
        "RATE_LIMITED",
        "sign-in waits as well: {body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn aliased_wrong_passwords_to_disable_2fa_are_counted_too() {
    let app = TestApp::spawn_with(|c| c.limits.enabled = true).await;
    let (token, recovery) = with_email_2fa(&app, "fay@example.com").await;
    let body = app
        .graphql_as(
            &token,
            &aliased_wrong_passwords("disable2Fa", 20),
            Value::Null,
        )
        .await;
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["extensions"]["code"] == "RATE_LIMITED"),
        "{body}"
    );
    let body = app
        .graphql_as(
            &token,
            "mutation($p: String, $c: String) { disable2Fa(password: $p, code: $c) { status } }",
            json!({ "p": PASSWORD, "c": recovery[0] }),
        )
        .await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn turning_two_factor_on_or_off_ends_the_other_devices_sessions() {
    let app = TestApp::spawn().await;
    app.verified_user("gus@example.com", PASSWORD).await;
    let laptop = app
        .signed_in("gus@example.com", PASSWORD, Some("laptop"))
        .await;
    let phone = app
        .signed_in("gus@example.com", PASSWORD, Some("phone"))
        .await;
    let token = |login: &Value| login["token"].as_str().unwrap().to_string();
    let (laptop, phone_refresh, phone) = (
        token(&laptop),
        phone["refreshToken"].as_str().unwrap().to_string(),
        token(&phone),
    );
    let body = app
        .graphql_as(&laptop, ENABLE, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(body["data"]["enable2Fa"]["status"], "ENABLED", "{body}");
    let recovery = body["data"]["enable2Fa"]["recoveryCodes"][0]
        .as_str()
        .unwrap()
        .to_string();
    let body = app.graphql_as(&phone, PROFILE, Value::Null).await;
    assert_eq!(
        error_code(&body),
        "INVALID_TOKEN",
        "the phone is out: {body}"
    );
    let body = app
        .graphql(
            "mutation($t: String!) { newToken(refreshToken: $t) { status } }",
            json!({ "t": phone_refresh }),
        )
        .await;
    assert_eq!(
        error_code(&body),
        "INVALID_TOKEN",
        "and cannot refresh: {body}"
    );
    let body = app.graphql_as(&laptop, PROFILE, Value::Null).await;
    assert_eq!(body["data"]["userProfile"]["twoFactorAuth"], true, "{body}");

    // The phone signs in again, now with a second factor; then the laptop turns it off.
    let id = challenge(&app, "gus@example.com").await;
    let code = app
        .mailbox
        .wait_for_subject("gus@example.com", "security code")
        .await
        .six_digit_code();
    let body = confirm(&app, &code, &id, "gus@example.com").await;
    let phone = token(&body["data"]["confirm2Fa"]);
    let body = app
        .graphql_as(
            &laptop,
            DISABLE,
            json!({ "password": PASSWORD, "code": recovery }),
        )
        .await;
    assert_eq!(body["data"]["disable2Fa"]["status"], "DISABLED", "{body}");
    let body = app.graphql_as(&phone, PROFILE, Value::Null).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "out again: {body}");
    let body = app.graphql_as(&laptop, PROFILE, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["twoFactorAuth"], false,
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_second_factor_path_draws_on_one_stored_budget() {
    let app = TestApp::spawn_with(|c| c.two_factor.max_failures_per_account = 4).await;
    let (token, recovery) = with_email_2fa(&app, "hal@example.com").await;
    let id = challenge(&app, "hal@example.com").await;
    let code = app
        .mailbox
        .wait_for_subject("hal@example.com", "security code")
        .await
        .six_digit_code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    // Two wrong codes on the sign-in, one on disable2Fa, one on an address change.
    for _ in 0..2 {
        let body = confirm(&app, wrong, &id, "hal@example.com").await;
        assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    }
    let body = app
        .graphql_as(
            &token,
            DISABLE,
            json!({ "password": PASSWORD, "code": wrong }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    let update = "mutation($data: String!, $code: String, $password: String) { updateProfile(input: { data: $data }, code: $code, password: $password) { status } }";
    let change = json!({ "data": json!({ "email": "hal@new.example" }).to_string(), "password": PASSWORD, "code": wrong });
    let body = app.graphql_as(&token, update, change).await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    // Spent: the right mailed code and a recovery code are refused alike, with a wait.
    let body = confirm(&app, &code, &id, "hal@example.com").await;
    assert_eq!(error_code(&body), "TOO_MANY_ATTEMPTS", "{body}");
    let retry = body["errors"][0]["extensions"]["retryAfter"]
        .as_u64()
        .unwrap();
    assert!(retry > 3500 && retry <= 3600, "{retry}");
    let body = app
        .graphql_as(
            &token,
            DISABLE,
            json!({ "password": PASSWORD, "code": recovery[0] }),
        )
        .await;
    assert_eq!(error_code(&body), "TOO_MANY_ATTEMPTS", "{body}");
    let notice = app
        .mailbox
        .wait_for_subject("hal@example.com", "Too many wrong security codes")
        .await;
    assert!(notice.text().contains("4 times"), "{}", notice.text());

    // It survives a restart.
    let smtp_port = app.app().config().mail.smtp.port;
    let now = app.clock.now();
    let kept = app.stop_keeping_storage().await;
    let mut config = crate::helpers::test_config(kept.path().join("data"), smtp_port);
    config.two_factor.max_failures_per_account = 4;
    let clock = keyhold::Clock::manual(now);
    let app = keyhold::Application::build_with_clock(config, clock.clone())
        .await
        .unwrap();
    let body = crate::helpers::graphql_on(
        &app,
        None,
        CONFIRM,
        json!({ "code": code, "id": id, "email": "hal@example.com" }),
    )
    .await;
    assert_eq!(error_code(&body), "TOO_MANY_ATTEMPTS", "{body}");
    // A right password changes nothing of it; the window's end does.
    let with_recovery_code = || async {
        let login = "mutation($e: EmailAddress!, $p: String!) { login(credentials: { email: $e, password: $p, deviceInfo: { deviceId: \"d2\" } }) { status sessionId } }";
        let body = crate::helpers::graphql_on(
            &app,
            None,
            login,
            json!({ "e": "hal@example.com", "p": PASSWORD }),
        )
        .await;
        let id = body["data"]["login"]["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        crate::helpers::graphql_on(
            &app,
            None,
            CONFIRM,
            json!({ "code": recovery[1], "id": id, "email": "hal@example.com" }),
        )
        .await
    };
    let body = with_recovery_code().await;
    assert_eq!(error_code(&body), "TOO_MANY_ATTEMPTS", "{body}");
    clock.advance(Duration::from_secs(3601));
    let body = with_recovery_code().await;
    assert_eq!(body["data"]["confirm2Fa"]["status"], 200, "{body}");
    app.shutdown().await.unwrap();
}
