//! Operating a running server: signing-key rotation, metrics, the admin command line.

use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code};

const PASSWORD: &str = "correct horse battery staple";
const PROFILE: &str = "{ userProfile { email } }";

async fn jwks_kids(app: &TestApp) -> Vec<String> {
    app.jwks().await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn a_rotated_key_verifies_its_tokens_until_they_expire_then_leaves_the_jwks() {
    let app = TestApp::spawn().await;
    app.verified_user("ada@example.com", PASSWORD).await;
    let before = app
        .signed_in("ada@example.com", PASSWORD, Some("phone"))
        .await;
    let old_token = before["token"].as_str().unwrap().to_string();
    let old_kid = kid_of(&old_token);
    assert_eq!(jwks_kids(&app).await, vec![old_kid.clone()]);

    // Through the admin socket, as `keyhold keys rotate` does while the server runs.
    let answer = keyhold::admin::call(
        &app.app().config().admin_socket(),
        &json!({ "command": "rotate-keys" }),
    )
    .await
    .unwrap()
    .expect("the server answers");
    assert_eq!(answer["ok"], true, "{answer}");
    let new_kid = answer["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        jwks_kids(&app).await,
        vec![new_kid.clone(), old_kid.clone()]
    );

    // Published at once, the new key signs only once it has been published for
    // tokens.jwks_refresh (every instance and relying party has read it by then).
    let refresh = app.app().config().tokens.jwks_refresh;
    let second = std::time::Duration::from_secs(1);
    app.clock.advance(refresh - second);
    let last_of_old = app
        .signed_in("ada@example.com", PASSWORD, Some("tablet"))
        .await;
    let old_token = last_of_old["token"].as_str().unwrap().to_string();
    assert_eq!(kid_of(&old_token), old_kid, "the old key signs until then");
    app.clock.advance(second);
    let after = app
        .signed_in("ada@example.com", PASSWORD, Some("laptop"))
        .await;
    assert_eq!(
        kid_of(after["token"].as_str().unwrap()),
        new_kid,
        "then the new key signs"
    );
    let body = app.graphql_as(&old_token, PROFILE, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "ada@example.com",
        "{body}"
    );

    // Just before the old key's last token expires, the sweeper keeps the old key, and the
    // token works.
    let ttl = app.app().config().tokens.access_ttl;
    app.clock.advance(ttl - std::time::Duration::from_secs(3));
    let auth = app.app().auth();
    let now = app.clock.unix_seconds();
    assert_eq!(
        auth.tokens
            .drop_retired_keys(&*auth.store, now)
            .await
            .unwrap(),
        0
    );
    let body = app.graphql_as(&old_token, PROFILE, Value::Null).await;
    assert_eq!(
        body["data"]["userProfile"]["email"], "ada@example.com",
        "{body}"
    );

    // Once every token it signed has expired, the sweeper drops it.
    app.clock.advance(std::time::Duration::from_secs(5));
    let now = app.clock.unix_seconds();
    assert_eq!(
        auth.tokens
            .drop_retired_keys(&*auth.store, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(jwks_kids(&app).await, vec![new_kid]);
    let body = app.graphql_as(&old_token, PROFILE, Value::Null).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN");
    app.stop().await;
}

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_requests_outcomes_and_state_in_prometheus_format() {
    let app = TestApp::spawn().await;
    app.verified_user("ada@example.com", PASSWORD).await;
    let signed = app
        .signed_in("ada@example.com", PASSWORD, Some("phone"))
        .await;
    let wrong = app
        .login("ada@example.com", "not the password at all", None)
        .await;
    assert_eq!(error_code(&wrong), "INVALID_CREDENTIALS");
    let token = signed["token"].as_str().unwrap();
    app.graphql_as(token, PROFILE, Value::Null).await;
    app.graphql("{ __typename }", Value::Null).await;

    let (status, text) = scrape(&app, None).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "keyhold_sign_ins_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        sample(&text, "keyhold_sign_ins_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "keyhold_graphql_requests_total{operation=\"login\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "keyhold_graphql_requests_total{operation=\"login\",outcome=\"error\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "keyhold_graphql_requests_total{operation=\"userProfile\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "keyhold_graphql_requests_total{operation=\"introspection\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "keyhold_graphql_request_duration_seconds_count{operation=\"login\"}"
        ),
        2.0
    );
    assert!(text.contains(
        "keyhold_graphql_request_duration_seconds_bucket{operation=\"login\",le=\"0.005\"}"
    ));
    assert_eq!(sample(&text, "keyhold_device_sessions"), 1.0);
    // The sign-in waited for its session to be on disk; one flush covers one or more writes.
    let durable = sample(&text, "keyhold_store_flush_requests_total");
    let flushes = sample(&text, "keyhold_store_flushes_total");
    assert!(durable >= 1.0, "{durable}");
    assert!(
        flushes >= 1.0 && flushes <= durable,
        "{flushes} flushes for {durable}"
    );
    assert_eq!(sample(&text, "keyhold_password_hashes_in_use"), 0.0);
    assert!(sample(&text, "keyhold_mail_queue_depth") >= 0.0);
    assert_eq!(
        sample(
            &text,
            &format!(
                "keyhold_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(text.contains("# HELP keyhold_sign_ins_total"));
    assert!(!text.contains(token), "never a token");
    app.stop().await;
}

#[tokio::test]
async fn metrics_token_guards_the_scrape() {
    let app = TestApp::spawn_with(|c| {
        c.metrics.token = Some("scrape-secret-0123456789".to_string().into());
    })
    .await;
    assert_eq!(scrape(&app, None).await.0, 401);
    assert_eq!(scrape(&app, Some("wrong")).await.0, 401);
    let (status, text) = scrape(&app, Some("scrape-secret-0123456789")).await;
    assert_eq!(status, 200);
    assert!(text.contains("keyhold_build_info"));
    app.stop().await;
}

/// `keyhold user ACTION [EMAIL]` through the admin socket, as the command line sends it.
async fn user_admin(app: &TestApp, action: &str, email: Option<&str>) -> Value {
    let answer = keyhold::admin::call(
        &app.app().config().admin_socket(),
        &json!({ "command": "user", "action": action, "email": email }),
    )
    .await
    .unwrap()
    .expect("the server answers");
    assert_eq!(answer["ok"], true, "{action}: {answer}");
    answer["result"].clone()
}

const NEW_TOKEN: &str = "mutation($t: String!) { newToken(refreshToken: $t) { token } }";
const ENABLE_2FA: &str =
    "mutation($password: String) { enable2Fa(password: $password) { status } }";

#[tokio::test]
async fn operators_list_show_disable_enable_reset_2fa_and_log_out_accounts_while_it_runs() {
    let app = TestApp::spawn().await;
    app.verified_user("ada@example.com", PASSWORD).await;
    app.verified_user("bo@example.com", PASSWORD).await;
    let phone = app
        .signed_in("ada@example.com", PASSWORD, Some("phone"))
        .await;
    app.signed_in("ada@example.com", PASSWORD, Some("laptop"))
        .await;

    let all = user_admin(&app, "list", None).await;
    let emails: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ada@example.com", "bo@example.com"]);
    assert_eq!(all[0]["device_sessions"], 2);
    assert_eq!(
        user_admin(&app, "list", Some("bo@"))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let shown = user_admin(&app, "show", Some("ada@example.com")).await;
    assert_eq!(shown["state"], "active");
    let mut devices: Vec<&str> = shown["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, ["laptop", "phone"]);

    // Disabled: every session ends at once, and sign-in says why.
    let disabled = user_admin(&app, "disable", Some("ada@example.com")).await;
    assert_eq!(disabled["state"], "disabled");
    let token = phone["token"].as_str().unwrap();
    assert_eq!(
        error_code(&app.graphql_as(token, PROFILE, Value::Null).await),
        "INVALID_TOKEN"
    );
    let refreshed = app
        .graphql(NEW_TOKEN, json!({ "t": phone["refreshToken"] }))
        .await;
    assert_eq!(error_code(&refreshed), "INVALID_TOKEN");
    let refused = app.login("ada@example.com", PASSWORD, None).await;
    assert_eq!(error_code(&refused), "ACCOUNT_DISABLED");
    user_admin(&app, "enable", Some("ada@example.com")).await;
    let again = app
        .signed_in("ada@example.com", PASSWORD, Some("phone"))
        .await;

    // A lost phone: 2FA off, so the next sign-in needs the password alone.
    let token = again["token"].as_str().unwrap();
    let on = app
        .graphql_as(token, ENABLE_2FA, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(on["data"]["enable2Fa"]["status"], "ENABLED", "{on}");
    let pending = app.login("ada@example.com", PASSWORD, None).await;
    assert!(
        pending["data"]["login"]["token"].is_null(),
        "a second factor is asked: {pending}"
    );
    let reset = user_admin(&app, "reset-2fa", Some("ada@example.com")).await;
    assert!(reset["two_factor"].is_null());
    // The phone may be the lost one: its session ended with the reset.
    assert_eq!(reset["device_sessions"], 0, "{reset}");
    let direct = app
        .signed_in("ada@example.com", PASSWORD, Some("tablet"))
        .await;
    assert!(direct["token"].is_string());

    let ended = user_admin(&app, "logout-all", Some("ada@example.com")).await;
    assert_eq!(ended["ended"], 1, "the tablet");
    assert_eq!(
        user_admin(&app, "show", Some("ada@example.com")).await["devices"],
        json!([])
    );

    let unknown = keyhold::admin::call(
        &app.app().config().admin_socket(),
        &json!({ "command": "user", "action": "disable", "email": "nobody@example.com" }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(unknown["ok"], false);
    assert!(
        unknown["error"].as_str().unwrap().contains("no account"),
        "{unknown}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_invited_user_chooses_a_password_by_the_mailed_link_and_a_deleted_one_is_gone() {
    let app = TestApp::spawn().await;
    let made = user_admin(&app, "create", Some("cy@example.com")).await;
    assert_eq!(made["email"], "cy@example.com");
    assert_eq!(made["email_verified"], false);
    let mail = app
        .mailbox
        .wait_for_subject("cy@example.com", "choose your password")
        .await;
    let body = app
        .graphql(
            "mutation($code: String!, $new: String!) { confirmPasswordReset(passwordResetParams: { code: $code, newPassword: $new }) { reset } }",
            json!({ "code": mail.link_code(), "new": PASSWORD }),
        )
        .await;
    assert_eq!(
        body["data"]["confirmPasswordReset"]["reset"], true,
        "{body}"
    );
    assert!(app.signed_in("cy@example.com", PASSWORD, None).await["token"].is_string());
    let again = keyhold::admin::call(
        &app.app().config().admin_socket(),
        &json!({ "command": "user", "action": "create", "email": "cy@example.com" }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again["ok"], false, "an address has one account: {again}");

    user_admin(&app, "delete", Some("cy@example.com")).await;
    assert_eq!(
        error_code(&app.login("cy@example.com", PASSWORD, None).await),
        "INVALID_CREDENTIALS"
    );
    assert_eq!(user_admin(&app, "list", None).await, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn the_admin_socket_closes_a_client_that_sends_nothing() {
    let app = TestApp::spawn().await;
    let mut silent = tokio::net::UnixStream::connect(app.app().config().admin_socket())
        .await
        .unwrap();
    // The server's clock for timeouts is tokio's: paused, it jumps to the next timer as soon
    // as everything waits, so the read timeout passes without the test sleeping.
    tokio::time::pause();
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    let read = tokio::time::timeout(
        keyhold::admin::READ_TIMEOUT * 2,
        silent.read_to_end(&mut buf),
    )
    .await;
    tokio::time::resume();
    assert!(read.is_ok(), "closed within the read timeout");
    assert!(buf.is_empty(), "no answer to no request");
    app.stop().await;
}

#[tokio::test]
async fn the_admin_socket_answers_only_the_servers_own_user_and_root() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root, to connect as another user");
        return;
    }
    let app = TestApp::spawn().await;
    let socket = app.app().config().admin_socket();
    // Loosen every mode on the way, as a careless operator might: the peer check still holds.
    use std::os::unix::fs::PermissionsExt;
    let open = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(app.dir(), 0o755);
    open(&app.app().config().storage.path, 0o755);
    open(&socket, 0o666);
    // The server may refuse before the request is written: a write then meets a closed
    // socket, which must not end the client before it reads the refusal.
    let script = "use IO::Socket::UNIX; $SIG{PIPE} = 'IGNORE'; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"connect: $!\"; print $s qq({\"command\":\"ping\"}\\n); print scalar <$s>;";
    let output = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["perl", "-e", script])
        .arg(&socket)
        .output()
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(
        answer.contains("\"ok\":false") && answer.contains("own user and root"),
        "{answer} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Root itself is answered.
    let answer = keyhold::admin::call(&socket, &serde_json::json!({ "command": "ping" }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer["ok"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_second_factor_confirmed_after_a_disable_signs_nobody_in() {
    let app = TestApp::spawn().await;
    app.verified_user("kim@example.com", PASSWORD).await;
    let token = app.signed_in("kim@example.com", PASSWORD, None).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let enable = "mutation($p: String) { enable2Fa(password: $p) { status } }";
    let body = app
        .graphql_as(&token, enable, json!({ "p": PASSWORD }))
        .await;
    assert_eq!(body["data"]["enable2Fa"]["status"], "ENABLED", "{body}");
    let body = app.login("kim@example.com", PASSWORD, Some("tablet")).await;
    let challenge = body["data"]["login"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let code = app
        .mailbox
        .wait_for_subject("kim@example.com", "security code")
        .await
        .six_digit_code();
    user_admin(&app, "disable", Some("kim@example.com")).await;
    let confirm = "mutation($c: String!, $id: String!, $e: EmailAddress!) { confirm2Fa(code: $c, sessionId: $id, email: $e) { status token } }";
    let body = app
        .graphql(
            confirm,
            json!({ "c": code, "id": challenge, "e": "kim@example.com" }),
        )
        .await;
    // The disable ended the challenge with everything else the account had pending.
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    let store = app.app().store();
    let user = store
        .user_by_email("kim@example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(
        store.sessions_of(user.id).await.unwrap().is_empty(),
        "no session was made"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_disable_ends_every_pending_challenge_step_up_code_and_reset_code_with_the_sessions() {
    const SEND: &str = "mutation($reason: TwoFactorReason) { send2Fa(reason: $reason) { status } }";
    const FORGOT: &str =
        "mutation($email: EmailAddress!) { forgotPassword(email: $email) { message } }";
    const RESET: &str = "mutation($code: String!, $new: String!) { confirmPasswordReset(passwordResetParams: { code: $code, newPassword: $new }) { reset } }";
    let app = TestApp::spawn().await;
    let email = "lea@example.com";
    app.verified_user(email, PASSWORD).await;
    let login = app.signed_in(email, PASSWORD, None).await;
    let token = login["token"].as_str().unwrap().to_string();
    let refresh = login["refreshToken"].as_str().unwrap().to_string();
    let body = app
        .graphql_as(&token, ENABLE_2FA, json!({ "password": PASSWORD }))
        .await;
    assert_eq!(body["data"]["enable2Fa"]["status"], "ENABLED", "{body}");
    // Pending: a sign-in's challenge, a step-up code and a reset code.
    let body = app.login(email, PASSWORD, Some("tablet")).await;
    let challenge = body["data"]["login"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let sign_in_code = app
        .mailbox
        .wait_for_nth(email, "security code", 1)
        .await
        .six_digit_code();
    let body = app
        .graphql_as(&token, SEND, json!({ "reason": "DISABLE_TWO_FACTOR" }))
        .await;
    assert_eq!(body["data"]["send2Fa"]["status"], "CODE_SENT", "{body}");
    app.mailbox.wait_for_nth(email, "security code", 2).await;
    app.graphql(FORGOT, json!({ "email": email })).await;
    let reset_code = app
        .mailbox
        .wait_for_subject(email, "Reset")
        .await
        .link_code();

    let disabled = user_admin(&app, "disable", Some(email)).await;
    assert_eq!(disabled["state"], "disabled", "{disabled}");
    let store = app.app().store();
    let user = store.user_by_email(email).await.unwrap().unwrap();
    assert!(store.sessions_of(user.id).await.unwrap().is_empty());
    assert!(
        store
            .step_up(user.id, "DISABLE_TWO_FACTOR")
            .await
            .unwrap()
            .is_none()
    );
    // The token is refused at the next request, and the refresh token is not spent on a
    // disabled account.
    let body = app.graphql_as(&token, PROFILE, Value::Null).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "{body}");
    let body = app.graphql(NEW_TOKEN, json!({ "t": refresh })).await;
    assert_eq!(error_code(&body), "INVALID_TOKEN", "{body}");

    // Enabled again, nothing that was pending works.
    user_admin(&app, "enable", Some(email)).await;
    let confirm = "mutation($c: String!, $id: String!, $e: EmailAddress!) { confirm2Fa(code: $c, sessionId: $id, email: $e) { token } }";
    let body = app
        .graphql(
            confirm,
            json!({ "c": sign_in_code, "id": challenge, "e": email }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    let body = app
        .graphql(
            RESET,
            json!({ "code": reset_code, "new": "another good passphrase" }),
        )
        .await;
    assert_eq!(error_code(&body), "INVALID_CODE", "{body}");
    app.stop().await;
}
