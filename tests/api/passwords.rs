use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{NEW_TOKEN, PASSWORD, TestApp, error_code};

const NEW_PASSWORD: &str = "a brand new passphrase";
const CHANGE: &str = "mutation($old: String!, $new: String!) { changePassword(oldPassword: $old, newPassword: $new) { status token refreshToken sessionId promptTwoFactorAuth twoFactorMethod deviceId } }";
const CONFIRM_CHANGE: &str = "mutation($code: String!) { confirmChangePassword2Fa(code: $code) { status token refreshToken sessionId } }";
const RESEND_CHANGE: &str = "mutation { resendChangePassword2Fa { status retryAfter } }";
const FORGOT: &str =
    "mutation($email: EmailAddress!) { forgotPassword(email: $email) { header message email } }";
const RESET: &str = "mutation($code: String!, $new: String!) { confirmPasswordReset(passwordResetParams: { code: $code, newPassword: $new }) { reset message } }";
const PROFILE: &str = "{ userProfile { email emailVerified twoFactorAuth } }";

async fn token_works(app: &TestApp, token: &str) -> bool {
    app.graphql_as(token, PROFILE, Value::Null).await["errors"].is_null()
}

#[tokio::test]
async fn a_change_without_2fa_applies_at_once_and_ends_the_other_devices() {
    let app = TestApp::spawn().await;
    app.verified_user("ada@example.com", PASSWORD).await;
    let phone = app
        .signed_in("ada@example.com", PASSWORD, Some("phone"))
        .await;
    let laptop = app
        .signed_in("ada@example.com", PASSWORD, Some("laptop"))
        .await;
    let token = laptop["token"].as_str().unwrap();

    let body = app
        .graphql_as(
            token,
            CHANGE,
            json!({ "old": "not my password", "new": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    let body = app
        .graphql_as(
            token,
            CHANGE,
            json!({ "old": PASSWORD, "new": "password123" }),
        )
        .await;
    assert_eq!(error_code(&body), "WEAK_PASSWORD");
    assert!(
        token_works(&app, phone["token"].as_str().unwrap()).await,
        "a failure changes nothing"
    );

    let body = app
        .graphql_as(
            token,
            CHANGE,
            json!({ "old": PASSWORD, "new": NEW_PASSWORD }),
        )
        .await;
    let changed = &body["data"]["changePassword"];
    assert_eq!(changed["status"], 200, "{body}");
    assert_eq!(changed["sessionId"], laptop["sessionId"]);
    assert_eq!(changed["deviceId"], "laptop");
    assert_ne!(changed["refreshToken"], laptop["refreshToken"]);
    assert!(token_works(&app, changed["token"].as_str().unwrap()).await);
    assert!(
        !token_works(&app, phone["token"].as_str().unwrap()).await,
        "other devices end"
    );
    // The kept device's refresh token is a new generation; the one it held before is spent.
    let body = app
        .graphql(NEW_TOKEN, json!({ "refresh": changed["refreshToken"] }))
        .await;
    assert_eq!(body["data"]["newToken"]["status"], 200, "{body}");
    let body = app
        .graphql(NEW_TOKEN, json!({ "refresh": laptop["refreshToken"] }))
        .await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");

    let notice = app
        .mailbox
        .wait_for_subject("ada@example.com", "password was changed")
        .await;
    assert!(notice.text().contains("was changed at"));
    assert_eq!(
        error_code(&app.login("ada@example.com", PASSWORD, None).await),
        "INVALID_CREDENTIALS"
    );
    app.signed_in("ada@example.com", NEW_PASSWORD, None).await;
    app.stop().await;
}

#[tokio::test]
async fn a_change_with_2fa_waits_for_its_code_and_the_old_password_works_until_then() {
    let app = TestApp::spawn().await;
    app.verified_user("bob@example.com", PASSWORD).await;
    let login = app
        .signed_in("bob@example.com", PASSWORD, Some("desk"))
        .await;
    let token = login["token"].as_str().unwrap().to_string();
    app.enable_2fa(&token, PASSWORD).await;
    // A sign-in waiting on another device, to be ended by the change.
    let other = app.login("bob@example.com", PASSWORD, Some("phone")).await;
    let other_challenge = other["data"]["login"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let other_code = app
        .mailbox
        .wait_for_nth("bob@example.com", "security code", 1)
        .await
        .six_digit_code();

    let body = app
        .graphql_as(
            &token,
            CHANGE,
            json!({ "old": PASSWORD, "new": "first new passphrase" }),
        )
        .await;
    let pending = &body["data"]["changePassword"];
    assert_eq!(pending["status"], 202, "{body}");
    assert_eq!(pending["promptTwoFactorAuth"], true);
    assert_eq!(pending["twoFactorMethod"], "EMAIL");
    assert!(pending["token"].is_null());
    let first_code = app
        .mailbox
        .wait_for_nth("bob@example.com", "security code", 2)
        .await;
    assert!(first_code.text().contains("change your password"));

    // A new change replaces the waiting one.
    app.clock.advance(Duration::from_secs(1));
    let body = app
        .graphql_as(
            &token,
            CHANGE,
            json!({ "old": PASSWORD, "new": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(body["data"]["changePassword"]["status"], 202);
    let body = app.graphql_as(&token, RESEND_CHANGE, Value::Null).await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "the cooldown: {body}");
    app.clock.advance(Duration::from_secs(30));
    let body = app.graphql_as(&token, RESEND_CHANGE, Value::Null).await;
    assert_eq!(
        body["data"]["resendChangePassword2Fa"]["status"], "CODE_SENT",
        "{body}"
    );
    app.mailbox
        .wait_for_nth("bob@example.com", "security code", 4)
        .await;
    let latest = app
        .mailbox
        .to("bob@example.com")
        .into_iter()
        .filter(|m| m.subject().contains("security code"))
        .max_by_key(|m| m.date())
        .unwrap()
        .six_digit_code();

    // Until it is confirmed, the old password still signs in (up to the second factor).
    let body = app.login("bob@example.com", PASSWORD, Some("tablet")).await;
    assert_eq!(body["data"]["login"]["status"], 202, "{body}");
    let body = app
        .graphql_as(
            &token,
            CONFIRM_CHANGE,
            json!({ "code": first_code.six_digit_code() }),
        )
        .await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "the replaced change's code"
    );
    let body = app
        .graphql_as(&token, CONFIRM_CHANGE, json!({ "code": latest }))
        .await;
    let applied = &body["data"]["confirmChangePassword2Fa"];
    assert_eq!(applied["status"], 200, "{body}");
    assert!(token_works(&app, applied["token"].as_str().unwrap()).await);

    // Pending sign-ins died with the change; the new password is the one now.
    let body = app
        .graphql(
            "mutation($c: String!, $id: String!) { confirm2Fa(code: $c, sessionId: $id, email: \"bob@example.com\") { status } }",
            json!({ "c": other_code, "id": other_challenge }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    assert_eq!(
        error_code(&app.login("bob@example.com", PASSWORD, None).await),
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        app.login("bob@example.com", NEW_PASSWORD, None).await["data"]["login"]["status"],
        202
    );
    app.stop().await;
}

#[tokio::test]
async fn forgot_password_answers_the_same_for_any_address_and_mails_only_accounts() {
    let app = TestApp::spawn().await;
    app.verified_user("cy@example.com", PASSWORD).await;
    let unknown = app
        .graphql(FORGOT, json!({ "email": "Nobody@Example.com" }))
        .await;
    let known = app
        .graphql(FORGOT, json!({ "email": "CY@example.com" }))
        .await;
    let (unknown, known) = (
        &unknown["data"]["forgotPassword"],
        &known["data"]["forgotPassword"],
    );
    assert_eq!(unknown["header"], known["header"]);
    assert_eq!(unknown["message"], known["message"]);
    assert_eq!(
        unknown["email"], "Nobody@Example.com",
        "the address as given"
    );
    assert_eq!(known["email"], "CY@example.com");

    let mail = app
        .mailbox
        .wait_for_subject("cy@example.com", "Reset your password")
        .await;
    let code = mail.link_code();
    assert_eq!(code.len(), 22, "128 bits");
    assert!(mail.text().contains(&format!(
        "https://localhost:8443/reset-password?code={code}"
    )));
    assert!(mail.text().lines().any(|l| l.trim() == code));
    let mailbox = app.mailbox.clone();
    app.stop().await;
    assert!(mailbox.to("nobody@example.com").is_empty());
}

#[tokio::test]
async fn a_reset_code_sets_a_new_password_once_and_ends_every_session() {
    let app = TestApp::spawn().await;
    app.verified_user("dee@example.com", PASSWORD).await;
    let login = app.signed_in("dee@example.com", PASSWORD, None).await;
    app.graphql(FORGOT, json!({ "email": "dee@example.com" }))
        .await;
    let first = app
        .mailbox
        .wait_for_nth("dee@example.com", "Reset your password", 1)
        .await
        .link_code();
    app.clock.advance(Duration::from_secs(5));
    app.graphql(FORGOT, json!({ "email": "dee@example.com" }))
        .await;
    let second = app
        .mailbox
        .wait_for_nth("dee@example.com", "Reset your password", 2)
        .await
        .link_code();
    let body = app
        .graphql(RESET, json!({ "code": first, "new": NEW_PASSWORD }))
        .await;
    assert_eq!(
        error_code(&body),
        "INVALID_CODE",
        "a new request replaced the first code"
    );
    let body = app
        .graphql(
            RESET,
            json!({ "code": "made-up-code", "new": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE");
    let body = app
        .graphql(RESET, json!({ "code": second, "new": "short" }))
        .await;
    assert_eq!(
        error_code(&body),
        "WEAK_PASSWORD",
        "and the code is not used up"
    );
    assert!(
        token_works(&app, login["token"].as_str().unwrap()).await,
        "nothing changed"
    );

    let body = app
        .graphql(RESET, json!({ "code": second, "new": NEW_PASSWORD }))
        .await;
    assert_eq!(
        body["data"]["confirmPasswordReset"]["reset"], true,
        "{body}"
    );
    assert!(
        !token_works(&app, login["token"].as_str().unwrap()).await,
        "every session ends"
    );
    let body = app
        .graphql(
            RESET,
            json!({ "code": second, "new": "yet another passphrase" }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "used once");
    let notice = app
        .mailbox
        .wait_for_subject("dee@example.com", "password was changed")
        .await;
    assert!(notice.text().contains("was reset at"));
    app.signed_in("dee@example.com", NEW_PASSWORD, None).await;
    app.stop().await;
}

#[tokio::test]
async fn a_reset_code_expires() {
    let app = TestApp::spawn().await;
    app.verified_user("eve@example.com", PASSWORD).await;
    app.graphql(FORGOT, json!({ "email": "eve@example.com" }))
        .await;
    let code = app
        .mailbox
        .wait_for_subject("eve@example.com", "Reset your password")
        .await
        .link_code();
    app.clock.advance(Duration::from_secs(30 * 60));
    let body = app
        .graphql(RESET, json!({ "code": code, "new": NEW_PASSWORD }))
        .await;
    assert_eq!(error_code(&body), "CODE_EXPIRED", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_reset_keeps_2fa_and_verifies_the_address() {
    let app = TestApp::spawn().await;
    // Unverified: the reset mail reaching the address proves it.
    app.register(json!({ "email": "fay@example.com", "password": PASSWORD }))
        .await;
    app.graphql(FORGOT, json!({ "email": "fay@example.com" }))
        .await;
    let code = app
        .mailbox
        .wait_for_subject("fay@example.com", "Reset your password")
        .await
        .link_code();
    app.graphql(RESET, json!({ "code": code, "new": NEW_PASSWORD }))
        .await;
    let login = app.signed_in("fay@example.com", NEW_PASSWORD, None).await;
    assert_eq!(login["userProfile"]["emailVerified"], true);

    let token = login["token"].as_str().unwrap();
    app.enable_2fa(token, NEW_PASSWORD).await;
    app.clock.advance(Duration::from_secs(60));
    app.graphql(FORGOT, json!({ "email": "fay@example.com" }))
        .await;
    let code = app
        .mailbox
        .wait_for_nth("fay@example.com", "Reset your password", 2)
        .await
        .link_code();
    let body = app
        .graphql(RESET, json!({ "code": code, "new": PASSWORD }))
        .await;
    assert_eq!(
        body["data"]["confirmPasswordReset"]["reset"], true,
        "{body}"
    );
    let body = app.login("fay@example.com", PASSWORD, None).await;
    assert_eq!(body["data"]["login"]["status"], 202, "2FA is still on");
    app.stop().await;
}
