use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{LOGIN, PASSWORD, TestApp, error_code};

fn limited(app: &mut keyhold::Config) {
    app.limits.enabled = true;
}

#[tokio::test]
async fn failed_sign_ins_make_the_account_wait_even_for_the_right_password() {
    let app = TestApp::spawn_with(|c| {
        limited(c);
        c.limits.login_failures_per_account = 3;
    })
    .await;
    app.verified_user("ada@example.com", PASSWORD).await;
    for _ in 0..3 {
        let body = app.login("ada@example.com", "a wrong password", None).await;
        assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    }
    let body = app.login("ada@example.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 1);
    app.clock.advance(Duration::from_secs(1));
    let body = app.login("ada@example.com", "a wrong password", None).await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    let body = app.login("ada@example.com", PASSWORD, None).await;
    assert_eq!(
        body["errors"][0]["extensions"]["retryAfter"], 2,
        "the wait grows: {body}"
    );
    app.clock.advance(Duration::from_secs(2));
    app.signed_in("ada@example.com", PASSWORD, None).await;
    // Success reset the count.
    let body = app.login("ada@example.com", "a wrong password", None).await;
    assert_eq!(error_code(&body), "INVALID_CREDENTIALS");
    app.signed_in("ada@example.com", PASSWORD, None).await;
    // Unknown addresses are counted the same way: the limit reveals nothing.
    for _ in 0..3 {
        app.login("nobody@example.com", PASSWORD, None).await;
    }
    assert_eq!(
        error_code(&app.login("nobody@example.com", PASSWORD, None).await),
        "RATE_LIMITED"
    );
    app.stop().await;
}

#[tokio::test]
async fn sign_ins_registrations_and_resets_are_limited_per_client_ip() {
    let app = TestApp::spawn_with(|c| {
        limited(c);
        c.limits.login_per_ip_per_minute = 2;
        c.limits.register_per_ip_per_hour = 2;
        c.limits.forgot_password_per_ip_per_hour = 4;
        c.limits.forgot_password_per_address_per_hour = 2;
    })
    .await;
    for i in 0..2 {
        app.login(&format!("u{i}@example.com"), PASSWORD, None)
            .await;
    }
    let body = app.login("u9@example.com", PASSWORD, None).await;
    assert_eq!(error_code(&body), "RATE_LIMITED");
    assert!(
        body["errors"][0]["extensions"]["retryAfter"]
            .as_u64()
            .unwrap()
            <= 60
    );
    app.clock.advance(Duration::from_secs(60));
    assert_eq!(
        error_code(&app.login("u9@example.com", PASSWORD, None).await),
        "INVALID_CREDENTIALS"
    );

    for i in 0..2 {
        let body = app
            .register(json!({ "email": format!("r{i}@example.com"), "password": PASSWORD }))
            .await;
        assert_eq!(body["data"]["register"]["status"], 201);
    }
    let body = app
        .register(json!({ "email": "r9@example.com", "password": PASSWORD }))
        .await;
    assert_eq!(error_code(&body), "RATE_LIMITED");

    let forgot = "mutation($e: EmailAddress!) { forgotPassword(email: $e) { header } }";
    for _ in 0..2 {
        let body = app.graphql(forgot, json!({ "e": "f@example.com" })).await;
        assert!(body["errors"].is_null(), "{body}");
    }
    let body = app.graphql(forgot, json!({ "e": "F@example.com" })).await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "per address: {body}");
    let body = app.graphql(forgot, json!({ "e": "g@example.com" })).await;
    assert!(body["errors"].is_null(), "another address: {body}");
    let body = app.graphql(forgot, json!({ "e": "h@example.com" })).await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "per IP: {body}");
    app.stop().await;
}

#[tokio::test]
async fn code_sends_are_limited_per_client_ip() {
    let app = TestApp::spawn_with(|c| {
        limited(c);
        c.limits.code_sends_per_ip_per_minute = 2;
    })
    .await;
    app.verified_user("cy@example.com", PASSWORD).await;
    let login = app.signed_in("cy@example.com", PASSWORD, None).await;
    let token = login["token"].as_str().unwrap();
    let send = "mutation($r: TwoFactorReason) { send2Fa(reason: $r) { status } }";
    for reason in ["GENERIC", "UPDATE_PROFILE"] {
        let body = app.graphql_as(token, send, json!({ "r": reason })).await;
        assert_eq!(body["data"]["send2Fa"]["status"], "CODE_SENT", "{body}");
    }
    let body = app
        .graphql_as(token, send, json!({ "r": "CHANGE_EMAIL" }))
        .await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    app.stop().await;
}

async fn login_from(app: &TestApp, forwarded_for: &str) -> Value {
    app.client
        .post(app.url("/graphql"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "query": LOGIN, "variables": { "email": "x@example.com", "password": PASSWORD } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited_not_the_proxy() {
    let proxied = TestApp::spawn_with(|c| {
        limited(c);
        c.limits.login_per_ip_per_minute = 1;
        c.limits.login_failures_per_account = 100;
        c.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    assert_eq!(
        error_code(&login_from(&proxied, "198.51.100.1").await),
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        error_code(&login_from(&proxied, "198.51.100.2").await),
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        error_code(&login_from(&proxied, "198.51.100.1").await),
        "RATE_LIMITED"
    );
    proxied.stop().await;

    // Not a trusted proxy: the header is the client's own claim and changes nothing.
    let direct = TestApp::spawn_with(|c| {
        limited(c);
        c.limits.login_per_ip_per_minute = 1;
        c.limits.login_failures_per_account = 100;
    })
    .await;
    assert_eq!(
        error_code(&login_from(&direct, "198.51.100.1").await),
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        error_code(&login_from(&direct, "198.51.100.2").await),
        "RATE_LIMITED"
    );
    direct.stop().await;
}
