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

/// What the process logged, in each format.
struct Logs {
    human: Captured,
    json: Captured,
}

impl Logs {
    fn human(&self) -> String {
        String::from_utf8(self.human.0.lock().unwrap().clone()).unwrap()
    }

    /// Every JSON line, each checked to be one object with the fields a shipper reads.
    fn json(&self) -> Vec<Value> {
        let text = String::from_utf8(self.json.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let value: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                for key in ["timestamp", "level", "target", "message"] {
                    assert!(value[key].is_string(), "{key} in {line}");
                }
                assert!(value["fields"].is_object(), "fields in {line}");
                value
            })
            .collect()
    }
}

/// One process-wide subscriber at debug level for Keyhold and the crates it drives, writing
/// each event twice, in Keyhold's human and JSON formats, into two buffers. Process-wide
/// because a thread-local one misses events whose callsites other tests' threads registered
/// first.
fn capture() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        use keyhold::logging::{LogFormat, layer};
        use tracing_subscriber::layer::SubscriberExt;
        let logs = Logs {
            human: Captured::default(),
            json: Captured::default(),
        };
        let subscriber = tracing_subscriber::registry()
            .with(layer(LogFormat::Human, logs.human.clone(), false))
            .with(layer(LogFormat::Json, logs.json.clone(), false))
            .with(tracing_subscriber::EnvFilter::new(
                "info,keyhold=debug,poem=debug,async_graphql=debug,mail_send=debug",
            ));
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
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

    let recovery = app.enable_2fa(&token, password).await;
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

    let human = captured.human();
    assert!(human.contains("DEBUG"), "debug logs were captured");
    assert!(
        human.contains("Keyhold listening"),
        "the server's logs were captured"
    );
    assert!(
        human.contains("mail sent over SMTP"),
        "the flows were logged"
    );
    let json = captured.json();
    assert!(
        json.iter().any(|l| l["message"] == "Keyhold listening"),
        "the same events were written as JSON"
    );
    assert!(
        json.iter().any(|l| l["request_id"].is_string()),
        "requests' events carry their id"
    );
    // Searched as written: none of the secrets has a character that JSON escapes.
    let json = String::from_utf8(captured.json.0.lock().unwrap().clone()).unwrap();
    for secret in secrets {
        for (format, logs) in [("human", &human), ("json", &json)] {
            assert!(
                !appears(logs, &secret),
                "a secret reached the {format} logs: {secret}"
            );
        }
    }
}

#[tokio::test]
async fn a_request_is_logged_under_the_id_its_response_names() {
    let captured = capture();
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    let id = response
        .headers()
        .get("x-request-id")
        .expect("every response names its request")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 32, "a random id: {id}");
    let again = app
        .client
        .post(app.url("/graphql"))
        .header("x-request-id", "forged-by-the-client")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    let second = again.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(
        second, "forged-by-the-client",
        "a client is not a trusted proxy"
    );
    assert_ne!(second, id, "each request has its own id");
    app.stop().await;

    let json = captured.json();
    let answered = json
        .iter()
        .find(|l| l["request_id"] == id.as_str() && l["message"] == "answered")
        .unwrap_or_else(|| panic!("the request's line in the JSON logs"));
    assert_eq!(answered["fields"]["status"], 200, "{answered}");
    assert_eq!(answered["fields"]["path"], "/graphql", "{answered}");
    assert!(
        captured.human().contains(&format!("request_id={id}")),
        "the human format names it too"
    );
}

/// Requests in flight at once, on every worker: each one's lines carry its own id, never
/// another's (the id is a task-local, so it must not leak between tasks on one thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_each_log_under_their_own_id() {
    let captured = capture();
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for _round in 0..4 {
        let requests = (0..32).map(|i| {
            app.client
                .post(app.url("/graphql"))
                .json(&json!({ "query": format!("{{ n{i}: __typename }}") }))
                .send()
        });
        for response in futures_util::future::join_all(requests).await {
            let response = response.unwrap();
            ids.push(
                response.headers()["x-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    app.stop().await;
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every request has its own id");
    let json = captured.json();
    for id in &ids {
        let answered = json
            .iter()
            .filter(|l| l["request_id"] == id.as_str() && l["message"] == "answered")
            .count();
        assert_eq!(answered, 1, "one line under {id}");
    }
}

#[tokio::test]
async fn a_trusted_proxys_request_id_is_kept_only_when_it_is_a_plain_token() {
    let app =
        TestApp::spawn_with(|c| c.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()])
            .await;
    let id_for = |sent: &'static str| {
        let request = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", sent)
            .send();
        async move {
            let response = request.await.unwrap();
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(id_for("lb-7f3a.2_x").await, "lb-7f3a.2_x");
    let forged = "x\" level=\"ERROR";
    assert_ne!(id_for(forged).await, forged, "not a plain token");
    let long = "a".repeat(65).leak();
    assert_ne!(id_for(long).await, *long, "too long");
    app.stop().await;
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
