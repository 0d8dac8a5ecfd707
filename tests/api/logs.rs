//! Every flow run with logs captured at debug level: no password, code, recovery code,
//! refresh token or access token may appear in them.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{NEW_TOKEN, TestApp};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// One process-wide subscriber at debug level for Keyhold and the crates it drives, writing
/// into a buffer. Process-wide because a thread-local one misses events whose callsites other
/// tests' threads registered first.
fn capture() -> Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(
                    "info,keyhold=debug,poem=debug,async_graphql=debug,mail_send=debug",
                )
                .with_writer(captured.clone())
                .with_ansi(false)
                .without_time()
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            captured
        })
        .clone()
}

#[tokio::test]
async fn no_secret_reaches_the_logs_at_debug_level() {
    let captured = capture();
    let password = "Tr0ub4dor&3-secret-pass";
    let new_password = "c0rrect-h0rse-NEW-secret";
    let app = TestApp::spawn_with(|c| c.testing.expose_codes = true).await;
    let mut secrets: Vec<String> = vec![password.into(), new_password.into()];

    let body = app
        .register(json!({ "email": "ada@example.com", "password": password }))
        .await;
    let code = body["data"]["register"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    secrets.push(code.clone());
    app.verify_email(&code).await;
    let login = app.signed_in("ada@example.com", password, None).await;
    let token = login["token"].as_str().unwrap().to_string();
    secrets.push(token.clone());
    secrets.push(login["refreshToken"].as_str().unwrap().into());
    let bad = app
        .login("ada@example.com", "wrong-secret-guess", None)
        .await;
    assert!(bad["errors"].is_array());
    secrets.push("wrong-secret-guess".into());

    let body = app
        .graphql(NEW_TOKEN, json!({ "refresh": login["refreshToken"] }))
        .await;
    let token = body["data"]["newToken"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    secrets.push(token.clone());
    secrets.push(
        body["data"]["newToken"]["refreshToken"]
            .as_str()
            .unwrap()
            .into(),
    );

    let body = app
        .graphql_as(
            &token,
            "mutation($p: String) { enable2Fa(password: $p) { recoveryCodes } }",
            json!({ "p": password }),
        )
        .await;
    let recovery: Vec<String> = body["data"]["enable2Fa"]["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    secrets.extend(recovery.iter().cloned());

    let body = app.login("ada@example.com", password, Some("d2")).await;
    let challenge = body["data"]["login"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let two_factor_code = app
        .mailbox
        .wait_for_subject("ada@example.com", "security code")
        .await
        .six_digit_code();
    secrets.push(two_factor_code.clone());
    let body = app
        .graphql(
            "mutation($c: String!, $id: String!) { confirm2Fa(code: $c, sessionId: $id, email: \"ada@example.com\") { token refreshToken } }",
            json!({ "c": two_factor_code, "id": challenge }),
        )
        .await;
    secrets.push(body["data"]["confirm2Fa"]["token"].as_str().unwrap().into());
    secrets.push(
        body["data"]["confirm2Fa"]["refreshToken"]
            .as_str()
            .unwrap()
            .into(),
    );

    app.graphql(
        "mutation { forgotPassword(email: \"ada@example.com\") { header } }",
        Value::Null,
    )
    .await;
    let reset = app
        .mailbox
        .wait_for_subject("ada@example.com", "Reset your password")
        .await
        .link_code();
    secrets.push(reset.clone());
    let body = app
        .graphql(
            "mutation($c: String!, $p: String!) { confirmPasswordReset(passwordResetParams: { code: $c, newPassword: $p }) { reset } }",
            json!({ "c": reset, "p": new_password }),
        )
        .await;
    assert_eq!(
        body["data"]["confirmPasswordReset"]["reset"], true,
        "{body}"
    );
    app.clock.advance(Duration::from_secs(1));
    app.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("DEBUG"), "debug logs were captured");
    assert!(
        logs.contains("Keyhold listening"),
        "the server's logs were captured"
    );
    assert!(
        logs.contains("mail sent over SMTP"),
        "the flows were logged"
    );
    for secret in secrets {
        assert!(
            !appears(&logs, &secret),
            "a secret reached the logs: {secret}"
        );
    }
}

/// Whether `secret` stands in `logs`; a six-digit code only as a number of its own, not as
/// part of a longer one (a port, a count).
fn appears(logs: &str, secret: &str) -> bool {
    if !(secret.len() == 6 && secret.chars().all(|c| c.is_ascii_digit())) {
        return logs.contains(secret);
    }
    logs.match_indices(secret).any(|(i, _)| {
        let before = logs[..i].chars().next_back();
        let after = logs[i + 6..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}
