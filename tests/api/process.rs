//! The real binary, as an operator runs it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::https_client;

fn keyhold(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyhold"));
    command
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `keyhold ARGS` in `dir`, expecting success; returns what it printed.
async fn keyhold_ok(dir: &Path, args: &[&str]) -> String {
    let output = keyhold(dir).args(args).output().await.unwrap();
    assert!(
        output.status.success(),
        "keyhold {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `keyhold serve --config config.toml` in `dir`, expecting it to refuse to start.
async fn refused_start(dir: &Path, config: &str, env: &[(&str, &str)]) -> String {
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut command = keyhold(dir);
    command.args(["serve", "--config", "config.toml"]);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("start-up is refused promptly")
        .unwrap();
    assert!(!output.status.success(), "it started");
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn an_unknown_key_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 8443\n",
        &[],
    )
    .await;
    assert!(stderr.contains("server.listen_port"), "{stderr}");
}

#[tokio::test]
async fn a_bad_value_in_the_environment_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        &[("KEYHOLD_TWO_FACTOR__CODE_TTL", "ten minutes")],
    )
    .await;
    assert!(stderr.contains("two_factor.code_ttl"), "{stderr}");
}

#[tokio::test]
async fn a_misspelt_key_in_the_environment_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        &[("KEYHOLD_SERVER__LISTN", "127.0.0.1:0")],
    )
    .await;
    assert!(stderr.contains("server.listn"), "{stderr}");
}

/// Kubernetes gives every pod in the namespace of a Service named `keyhold` these.
const KUBERNETES_SERVICE_VARIABLES: [(&str, &str); 7] = [
    ("KEYHOLD_PORT", "tcp://10.0.0.1:8443"),
    ("KEYHOLD_SERVICE_HOST", "10.0.0.1"),
    ("KEYHOLD_SERVICE_PORT", "8443"),
    ("KEYHOLD_PORT_8443_TCP", "tcp://10.0.0.1:8443"),
    ("KEYHOLD_PORT_8443_TCP_ADDR", "10.0.0.1"),
    ("KEYHOLD_PORT_8443_TCP_PORT", "8443"),
    ("KEYHOLD_PORT_8443_TCP_PROTO", "tcp"),
];

#[tokio::test]
async fn kubernetes_service_variables_are_not_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\npath = \"./data\"\n",
    )
    .unwrap();
    let mut env = KUBERNETES_SERVICE_VARIABLES.to_vec();
    // Configuration beside them still applies.
    env.push(("KEYHOLD_SERVER__LISTEN", "127.0.0.1:0"));
    env.push(("RUST_LOG", "info,keyhold=debug"));
    let (mut child, addr, mut stderr, mut log) = start_server(dir.path(), &env).await;
    assert_ne!(addr.port(), 1, "KEYHOLD_SERVER__LISTEN applies");
    let ignored = log
        .iter()
        .find(|l| l.contains("environment variables ignored"))
        .unwrap_or_else(|| panic!("one debug line names them: {log:#?}"));
    for (name, _) in KUBERNETES_SERVICE_VARIABLES {
        assert!(ignored.contains(name), "{ignored}");
    }
    assert!(
        !ignored.contains("10.0.0.1"),
        "names only, no values: {ignored}"
    );
    assert!(!ignored.contains("KEYHOLD_SERVER__LISTEN"), "{ignored}");
    stops_cleanly_on_sigterm(&mut child, &mut stderr, &mut log).await;
}

#[tokio::test]
async fn log_format_json_writes_every_line_as_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"./data\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let mut env = KUBERNETES_SERVICE_VARIABLES.to_vec();
    env.push(("RUST_LOG", "info,keyhold=debug"));
    let (mut child, addr, mut stderr, mut log) = start_server(dir.path(), &env).await;
    let certificate = std::fs::read_to_string(dir.path().join("data/tls/cert.pem")).unwrap();
    let client = https_client(&certificate, addr);
    let response = client
        .get(format!("https://localhost:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    stops_cleanly_on_sigterm(&mut child, &mut stderr, &mut log).await;
    let lines: Vec<Value> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["target"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
        assert!(line["fields"].is_object(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .contains("environment variables ignored")),
        "the line that names ignored variables is JSON too: {log:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["request_id"] == id.as_str() && l["message"] == "answered"),
        "the request is logged under the id its response named: {log:#?}"
    );
}

#[tokio::test]
async fn a_missing_config_file_named_on_the_command_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = keyhold(dir.path())
        .args(["serve", "--config", "nowhere.toml"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nowhere.toml"));
}

#[tokio::test]
async fn an_unreadable_certificate_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert_file = \"missing.crt\"\nkey_file = \"missing.key\"\n",
        &[],
    )
    .await;
    assert!(stderr.contains("missing.crt"), "{stderr}");
}

type LogLines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// Starts `keyhold serve --config config.toml` in `dir` and waits for its "listening" line.
async fn start_server(
    dir: &Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr, LogLines, Vec<String>) {
    let mut command = keyhold(dir);
    command.args(["serve", "--config", "config.toml"]);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            log.push(line.clone());
            if line.starts_with('{') && line.contains("Keyhold listening") {
                let line: Value = serde_json::from_str(&line).unwrap();
                return line["fields"]["address"].as_str().unwrap().parse().unwrap();
            }
            if line.contains("Keyhold listening") {
                let start = line.find("address=").unwrap() + "address=".len();
                let rest = &line[start..];
                let end = rest.find(' ').unwrap_or(rest.len());
                return rest[..end].parse::<SocketAddr>().unwrap();
            }
        }
        panic!("the server exited before listening: {log:#?}");
    })
    .await
    .expect("the server listens within 30 s");
    (child, addr, stderr, log)
}

#[tokio::test]
async fn the_server_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The file asks for a port that cannot be bound; the environment overrides it.
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\npath = \"./data\"\n",
    )
    .unwrap();
    let (mut child, addr, mut stderr, mut log) =
        start_server(dir.path(), &[("KEYHOLD_SERVER__LISTEN", "127.0.0.1:0")]).await;
    assert_ne!(addr.port(), 0, "the log names the real port");

    let certificate = std::fs::read_to_string(dir.path().join("data/tls/cert.pem")).unwrap();
    let client = https_client(&certificate, addr);
    let url = format!("https://localhost:{}/graphql", addr.port());
    let response = client
        .post(&url)
        .json(&serde_json::json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    stops_cleanly_on_sigterm(&mut child, &mut stderr, &mut log).await;
    // The database was released: it opens again.
    keyhold::store::sled::Store::open(&dir.path().join("data/db")).unwrap();
    // Nothing answers any more.
    assert!(client.post(&url).send().await.is_err());
}

#[tokio::test]
async fn a_sigterm_as_soon_as_the_server_listens_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"./data\"\n",
    )
    .unwrap();
    let (mut child, _, mut stderr, mut log) = start_server(dir.path(), &[]).await;
    // No request first: the signal comes while start-up may still be finishing.
    stops_cleanly_on_sigterm(&mut child, &mut stderr, &mut log).await;
}

/// Sends SIGTERM and asserts a clean stop: exit status 0 and the storage flushed.
async fn stops_cleanly_on_sigterm(
    child: &mut tokio::process::Child,
    stderr: &mut LogLines,
    log: &mut Vec<String>,
) {
    signal(child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("it stops within 30 s")
        .unwrap();
    while let Some(line) = stderr.next_line().await.unwrap() {
        log.push(line);
    }
    assert!(status.success(), "exit status {status:?}: {log:#?}");
    assert!(
        log.iter().any(|l| l.contains("storage flushed")),
        "{log:#?}"
    );
}

fn signal(child: &tokio::process::Child, which: &str) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args([which, &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

async fn call(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = client
        .post(format!("https://localhost:{}/graphql", addr.port()))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn acknowledged_writes_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n[testing]\nexpose_codes = true\n",
    )
    .unwrap();
    let (mut child, addr, _stderr, log) = start_server(dir.path(), &[]).await;
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("testing.expose_codes is ON")),
        "a loud warning at start: {log:#?}"
    );
    let certificate = std::fs::read_to_string(dir.path().join("data/tls/cert.pem")).unwrap();
    let client = https_client(&certificate, addr);

    let register =
        "mutation($data: String!) { register(input: { data: $data }) { userId verificationCode } }";
    let verify = "mutation($code: String!) { verifyEmail(code: $code) { verified } }";
    let login = "mutation($email: EmailAddress!, $device: String) { login(credentials: { email: $email, password: \"correct horse battery staple\", deviceInfo: { deviceId: $device } }) { token refreshToken } }";
    let password = "correct horse battery staple";

    let body = call(
        &client,
        addr,
        None,
        register,
        json!({ "data": json!({ "email": "kit@example.com", "password": password }).to_string() }),
    )
    .await;
    let code = body["data"]["register"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    let body = call(&client, addr, None, verify, json!({ "code": code })).await;
    assert_eq!(body["data"]["verifyEmail"]["verified"], true);
    let phone = call(
        &client,
        addr,
        None,
        login,
        json!({ "email": "kit@example.com", "device": "phone" }),
    )
    .await;
    let laptop = call(
        &client,
        addr,
        None,
        login,
        json!({ "email": "kit@example.com", "device": "laptop" }),
    )
    .await;
    let laptop_token = laptop["data"]["login"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let phone_token = phone["data"]["login"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let body = call(
        &client,
        addr,
        Some(&laptop_token),
        "mutation { logout(deviceInfo: { deviceId: \"phone\" }) { status } }",
        Value::Null,
    )
    .await;
    assert_eq!(body["data"]["logout"]["status"], 200);
    let body = call(
        &client,
        addr,
        Some(&laptop_token),
        "mutation { changePassword(oldPassword: \"correct horse battery staple\", newPassword: \"new horse battery staple\") { status token } }",
        Value::Null,
    )
    .await;
    assert_eq!(body["data"]["changePassword"]["status"], 200, "{body}");
    let laptop_token = body["data"]["changePassword"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let tablet = call(
        &client,
        addr,
        None,
        "mutation { login(credentials: { email: \"kit@example.com\", password: \"new horse battery staple\", deviceInfo: { deviceId: \"tablet\" } }) { refreshToken } }",
        Value::Null,
    )
    .await;
    let refresh = tablet["data"]["login"]["refreshToken"]
        .as_str()
        .unwrap_or_else(|| panic!("tablet signs in: {tablet}"))
        .to_string();
    // Registered but never verified, near the end.
    let body = call(
        &client,
        addr,
        None,
        register,
        json!({ "data": json!({ "email": "lou@example.com", "password": password }).to_string() }),
    )
    .await;
    assert!(body["data"]["register"]["verificationCode"].is_string());

    // Rotated last: nothing after it flushes for it.
    let rotated = call(
        &client,
        addr,
        None,
        "mutation($t: String!) { newToken(refreshToken: $t) { refreshToken } }",
        json!({ "t": refresh }),
    )
    .await;
    let rotated = rotated["data"]["newToken"]["refreshToken"]
        .as_str()
        .unwrap_or_else(|| panic!("rotated: {rotated}"))
        .to_string();
    signal(&child, "-KILL");
    child.wait().await.unwrap();

    let (mut child, addr, _stderr, _log) = start_server(dir.path(), &[]).await;
    let client = https_client(&certificate, addr);
    let profile = "{ userProfile { email emailVerified } }";
    let body = call(&client, addr, Some(&laptop_token), profile, Value::Null).await;
    assert_eq!(body["data"]["userProfile"]["emailVerified"], true, "{body}");
    let body = call(&client, addr, Some(&phone_token), profile, Value::Null).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INVALID_TOKEN",
        "the logout held: {body}"
    );
    let body = call(
        &client,
        addr,
        None,
        "mutation($t: String!) { newToken(refreshToken: $t) { refreshToken } }",
        json!({ "t": rotated }),
    )
    .await;
    assert!(
        body["data"]["newToken"]["refreshToken"].is_string(),
        "the refresh-token rotation held: {body}"
    );
    let body = call(
        &client,
        addr,
        None,
        login,
        json!({ "email": "lou@example.com", "device": "any" }),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "EMAIL_NOT_VERIFIED",
        "the last account exists: {body}"
    );
    signal(&child, "-TERM");
    child.wait().await.unwrap();
}

#[tokio::test]
async fn the_command_line_backs_up_a_running_server_and_restores_a_stopped_one() {
    let dir = tempfile::tempdir().unwrap();
    // The backup key is made away from the server's folder.
    let away = tempfile::tempdir().unwrap();
    let identity = away.path().join("backup.key");
    let printed = keyhold_ok(away.path(), &["backup-key", "backup.key"]).await;
    let recipient = printed
        .split('"')
        .find(|part| part.starts_with("age1"))
        .unwrap_or_else(|| panic!("{printed}"))
        .to_string();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n[storage]\nbackup_recipient = \"{recipient}\"\n"),
    )
    .unwrap();
    let identity = identity.to_str().unwrap();
    let (mut child, addr, _stderr, _log) = start_server(dir.path(), &[]).await;
    let certificate = std::fs::read_to_string(dir.path().join("data/tls/cert.pem")).unwrap();
    let client = https_client(&certificate, addr);
    let register = "mutation($data: String!) { register(input: { data: $data }) { userId } }";
    let doc = |email: &str| json!({ "data": json!({ "email": email, "password": "correct horse battery staple" }).to_string() });
    call(&client, addr, None, register, doc("before@example.com")).await;

    let printed = keyhold_ok(
        dir.path(),
        &["backup", "--config", "config.toml", "saved.backup"],
    )
    .await;
    assert!(printed.contains("backup written"));
    let printed = keyhold_ok(
        dir.path(),
        &[
            "audit",
            "--config",
            "config.toml",
            "--user",
            "before@example.com",
            "--since",
            "1h",
        ],
    )
    .await;
    assert!(
        printed.contains("registered") && printed.contains("before@example.com"),
        "{printed}"
    );

    call(&client, addr, None, register, doc("after@example.com")).await;
    let output = keyhold(dir.path())
        .args([
            "restore",
            "--config",
            "config.toml",
            "--identity",
            identity,
            "saved.backup",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "restore refuses a running server");
    signal(&child, "-TERM");
    assert!(child.wait().await.unwrap().success());

    keyhold_ok(
        dir.path(),
        &[
            "restore",
            "--config",
            "config.toml",
            "--identity",
            identity,
            "saved.backup",
        ],
    )
    .await;
    // Stopped, a backup is taken directly.
    keyhold_ok(
        dir.path(),
        &["backup", "--config", "config.toml", "offline.backup"],
    )
    .await;

    let (mut child, addr, _stderr, _log) = start_server(dir.path(), &[]).await;
    let client = https_client(&certificate, addr);
    // Registration answers alike for every address; sign-in tells an unverified account
    // (EMAIL_NOT_VERIFIED) from none (INVALID_CREDENTIALS).
    let login = "mutation($e: EmailAddress!) { login(credentials: { email: $e, password: \"correct horse battery staple\" }) { status } }";
    let body = call(
        &client,
        addr,
        None,
        login,
        json!({ "e": "before@example.com" }),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "EMAIL_NOT_VERIFIED",
        "restored: {body}"
    );
    let body = call(
        &client,
        addr,
        None,
        login,
        json!({ "e": "after@example.com" }),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INVALID_CREDENTIALS",
        "after the backup: gone: {body}"
    );
    signal(&child, "-TERM");
    child.wait().await.unwrap();
}

#[tokio::test]
async fn init_writes_a_commented_config_and_a_certificate_that_serve_and_check_config_accept() {
    let dir = tempfile::tempdir().unwrap();
    keyhold_ok(dir.path(), &["init", "site"]).await;
    let site = dir.path().join("site");
    let written = std::fs::read_to_string(site.join("config.toml")).unwrap();
    assert!(written.starts_with("# Keyhold configuration"), "commented");
    let certificate = std::fs::read_to_string(site.join("data/tls/cert.pem")).unwrap();
    assert!(certificate.contains("BEGIN CERTIFICATE"));

    let checked = keyhold_ok(&site, &["check-config"]).await;
    assert!(checked.contains("configuration OK"));

    let again = keyhold(dir.path())
        .args(["init", "site"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing config.toml is never overwritten"
    );
    assert_eq!(
        std::fs::read_to_string(site.join("config.toml")).unwrap(),
        written
    );

    // serve uses the certificate init made.
    std::fs::write(
        site.join("config.toml"),
        written.replace("listen = \"127.0.0.1:8443\"", "listen = \"127.0.0.1:0\""),
    )
    .unwrap();
    let (mut child, addr, _stderr, _log) = start_server(&site, &[]).await;
    let body = call(
        &https_client(&certificate, addr),
        addr,
        None,
        "{ __typename }",
        Value::Null,
    )
    .await;
    assert_eq!(body["data"]["__typename"], "RootQueryType");
    signal(&child, "-TERM");
    child.wait().await.unwrap();
}

#[tokio::test]
async fn check_config_names_the_bad_key_and_the_unreadable_file_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    for (config, named) in [
        (
            "[passwords]\nargon2_memory_kib = 1\n",
            "passwords.argon2_memory_kib",
        ),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[tls]\ncert_file = \"nowhere.pem\"\nkey_file = \"nowhere.key\"\n",
            "nowhere.pem",
        ),
    ] {
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let output = keyhold(dir.path())
            .args(["check-config", "--config", "config.toml"])
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{config}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{config}: {stderr}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing was started or made"
    );
}

#[tokio::test]
async fn keys_rotate_works_on_a_stopped_server_and_the_next_start_serves_every_live_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    for _ in 0..2 {
        let printed = keyhold_ok(dir.path(), &["keys", "rotate", "--config", "config.toml"]).await;
        assert!(printed.contains("is current"));
    }
    let (mut child, addr, _stderr, _log) = start_server(dir.path(), &[]).await;
    let jwks = jwks(dir.path(), addr).await;
    // The first key (made by the first rotate's load) and two rotations: all within their
    // tokens' lifetime, so all are served.
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3, "{jwks}");
    signal(&child, "-TERM");
    child.wait().await.unwrap();
}

#[tokio::test]
async fn keyhold_user_works_on_a_stopped_server_and_through_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n",
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let args: Vec<&str> = ["user"]
            .iter()
            .chain(args)
            .chain(&["--config", "config.toml"])
            .copied()
            .collect();
        let dir = dir.path().to_path_buf();
        async move { keyhold_ok(&dir, &args).await }
    };
    // Stopped: straight on the storage; the invitation waits in the mail queue.
    let created = run(&["create", "dee@example.com"]).await;
    assert!(
        created.contains("invitation mailed to dee@example.com"),
        "{created}"
    );
    let table = run(&["list"]).await;
    assert!(table.starts_with("ID "), "a table with a header: {table}");
    assert!(
        table.contains("dee@example.com") && table.contains("active"),
        "{table}"
    );
    run(&["disable", "dee@example.com"]).await;

    // Running: through the admin socket (sled allows one process, so this proves it).
    let (mut child, _addr, _stderr, _log) = start_server(dir.path(), &[]).await;
    let shown: Value =
        serde_json::from_str(&run(&["show", "dee@example.com", "--json"]).await).unwrap();
    assert_eq!(shown["state"], "disabled");
    assert_eq!(shown["devices"], json!([]));
    let listed: Value =
        serde_json::from_str(&run(&["list", "--email", "dee", "--json"]).await).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let output = keyhold(dir.path())
        .args([
            "user",
            "show",
            "nobody@example.com",
            "--config",
            "config.toml",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no account has this address"));
    signal(&child, "-TERM");
    child.wait().await.unwrap();
    // The queued invitation went out once the server ran (the log transport's outbox).
    let outbox: Vec<_> = std::fs::read_dir(dir.path().join("data/outbox"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(!outbox.is_empty(), "the invitation was delivered");
}

#[tokio::test]
async fn a_mail_counted_as_sent_is_off_the_queue_on_disk_before_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n",
    )
    .unwrap();
    let (mut child, addr, _stderr, _log) = start_server(dir.path(), &[]).await;
    let certificate = std::fs::read_to_string(dir.path().join("data/tls/cert.pem")).unwrap();
    let client = https_client(&certificate, addr);
    let register = "mutation($data: String!) { register(input: { data: $data }) { status } }";
    let doc = json!({ "data": json!({ "email": "ona@example.com", "password": "correct horse battery staple" }).to_string() });
    call(&client, addr, None, register, doc).await;
    // keyhold_mail_sent_total counts a message once it is off the queue and flushed.
    let metrics = format!("https://localhost:{}/metrics", addr.port());
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = client
                .get(&metrics)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("keyhold_mail_sent_total 1") {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the mail is sent");
    signal(&child, "-KILL");
    child.wait().await.unwrap();
    use keyhold::store::MailQueueStore;
    let store = keyhold::store::sled::Store::open(&dir.path().join("data/db")).unwrap();
    assert_eq!(
        store.mail_queue_len().await.unwrap(),
        0,
        "it would be sent again"
    );
}

#[tokio::test]
async fn keyhold_migrate_copies_a_stopped_sled_install_into_postgres_where_user_commands_work() {
    let Some(url) = keyhold::store::postgres::test_cluster::fresh_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sled.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pg.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nbackend = \"postgres\"\npath = \"pg-data\"\nhmac_key_file = \"pg.key\"\n[storage.postgres]\nurl = \"{url}\"\nsslmode = \"disable\"\n"
        ),
    )
    .unwrap();
    keyhold_ok(
        dir.path(),
        &["user", "create", "dee@example.com", "--config", "sled.toml"],
    )
    .await;
    let printed = keyhold_ok(
        dir.path(),
        &["migrate", "--from", "sled.toml", "--to", "pg.toml"],
    )
    .await;
    assert!(
        printed.contains("copied 1 accounts") && printed.contains("from sled into postgres"),
        "{printed}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("pg.key")).unwrap(),
        std::fs::read(dir.path().join("data/keys/hmac.key")).unwrap()
    );
    let listed = keyhold_ok(dir.path(), &["user", "list", "--config", "pg.toml"]).await;
    assert!(listed.contains("dee@example.com"), "{listed}");
    let again = keyhold(dir.path())
        .args(["migrate", "--from", "sled.toml", "--to", "pg.toml"])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// The JWKS that the server at `addr` serves.
async fn jwks(dir: &Path, addr: SocketAddr) -> Value {
    let certificate = std::fs::read_to_string(dir.join("data/tls/cert.pem")).unwrap();
    https_client(&certificate, addr)
        .get(format!(
            "https://localhost:{}/.well-known/jwks.json",
            addr.port()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_rotate_audit_and_check_config_work_on_postgres_from_another_machine_while_an_instance_runs()
 {
    let Some(url) = keyhold::store::postgres::test_cluster::fresh_database().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let key_file = root.path().join("hmac.key");
    std::fs::write(&key_file, rand_key()).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n[storage]\nbackend = \"postgres\"\npath = \"./data\"\nhmac_key_file = \"{}\"\nbackup_interval = \"0s\"\n[storage.postgres]\nurl = \"{url}\"\nsslmode = \"disable\"\n",
        key_file.display()
    );
    // An instance, and an operator's folder of its own (no admin socket there): every
    // command goes to the database.
    let (serving, operator) = (root.path().join("instance"), root.path().join("operator"));
    for dir in [&serving, &operator] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("config.toml"), &config).unwrap();
    }
    let (mut child, addr, _stderr, _log) = start_server(&serving, &[]).await;
    let certificate = std::fs::read_to_string(serving.join("data/tls/cert.pem")).unwrap();
    let register = "mutation($data: String!) { register(input: { data: $data }) { userId } }";
    let data = json!({ "email": "ops@example.com", "password": "correct horse battery staple" });
    call(
        &https_client(&certificate, addr),
        addr,
        None,
        register,
        json!({ "data": data.to_string() }),
    )
    .await;
    assert!(!operator.join("data/admin.sock").exists());

    let checked = keyhold_ok(&operator, &["check-config", "--config", "config.toml"]).await;
    assert!(checked.contains("configuration OK"), "{checked}");
    let audited = keyhold_ok(
        &operator,
        &[
            "audit",
            "--config",
            "config.toml",
            "--user",
            "ops@example.com",
            "--since",
            "1h",
        ],
    )
    .await;
    assert!(
        audited.contains("registered") && audited.contains("ops@example.com"),
        "the instance's event is read from the database: {audited}"
    );
    let before = jwks(&serving, addr).await["keys"].as_array().unwrap().len();
    let rotated = keyhold_ok(&operator, &["keys", "rotate", "--config", "config.toml"]).await;
    assert!(rotated.contains("is current"), "{rotated}");
    // An instance that starts now reads the keys from the database: the new one is served
    // beside the old.
    let later = root.path().join("later");
    std::fs::create_dir(&later).unwrap();
    std::fs::write(later.join("config.toml"), &config).unwrap();
    let (mut second, second_addr, _stderr2, _log2) = start_server(&later, &[]).await;
    let served = jwks(&later, second_addr).await["keys"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(served, before + 1, "the rotated key is in the database");
    for process in [&mut child, &mut second] {
        signal(process, "-TERM");
        process.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_three_instances_killed_under_load_loses_no_acknowledged_write() {
    let Some(url) = keyhold::store::postgres::test_cluster::fresh_database().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let key: [u8; 32] = rand_key();
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(root.path().join("hmac.key"))
            .unwrap();
        std::io::Write::write_all(&mut file, &key).unwrap();
    }
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n[limits]\nenabled = false\n[storage]\nbackend = \"postgres\"\npath = \"./data\"\nhmac_key_file = \"../hmac.key\"\nbackup_interval = \"0s\"\n[storage.postgres]\nurl = \"{url}\"\nsslmode = \"disable\"\n"
    );
    let mut instances = Vec::new();
    for n in 0..3 {
        let dir = root.path().join(format!("instance{n}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), &config).unwrap();
        let (child, addr, mut stderr, _) = start_server(&dir, &[]).await;
        // Its log is read to the end, so that a full pipe never stalls it.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let certificate = std::fs::read_to_string(dir.join("data/tls/cert.pem")).unwrap();
        instances.push((child, https_client(&certificate, addr), addr));
    }
    let register = |n: usize, i: usize| {
        let (client, addr) = (instances[n].1.clone(), instances[n].2);
        async move {
            let document =
                json!({ "email": format!("user{i}@example.com"), "password": "correct horse battery staple" })
                    .to_string();
            let answer = client
                .post(format!("https://localhost:{}/graphql", addr.port()))
                .json(&json!({
                    "query": "mutation($d: String!) { register(input: { data: $d }) { status } }",
                    "variables": { "d": document },
                }))
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()?;
            answer["errors"].is_null().then_some(i)
        }
    };
    // Rounds of 12 sign-ups spread over the three at once; the third is killed mid-round.
    let mut acknowledged = Vec::new();
    let mut after_kill = Vec::new();
    for round in 0..10 {
        let batch = (0..12).map(|j| {
            let i = round * 12 + j;
            register(j % 3, i)
        });
        if round == 5 {
            let kill = async {
                tokio::task::yield_now().await;
                signal(&instances[2].0, "-KILL");
            };
            let (answers, ()) = tokio::join!(futures_util::future::join_all(batch), kill);
            acknowledged.extend(answers.into_iter().flatten());
        } else {
            let answers = futures_util::future::join_all(batch).await;
            if round > 5 {
                for (j, answer) in answers.iter().enumerate() {
                    if j % 3 != 2 {
                        after_kill.push(answer.is_some());
                    }
                }
            }
            acknowledged.extend(answers.into_iter().flatten());
        }
    }
    assert!(
        after_kill.iter().all(|ok| *ok),
        "the other two keep serving: {after_kill:?}"
    );
    instances[2].0.wait().await.unwrap();

    let mut check = keyhold::testing::test_config();
    check.storage.backend = keyhold::config::StorageBackend::Postgres;
    check.storage.postgres = keyhold::store::postgres::test_cluster::config_for(&url);
    let store = keyhold::store::open(&check).await.unwrap();
    for i in &acknowledged {
        let email = format!("user{i}@example.com");
        assert!(
            store.user_by_email(&email).await.unwrap().is_some(),
            "{email} was acknowledged and is kept"
        );
    }
    assert!(
        acknowledged.len() >= 80,
        "{} acknowledged",
        acknowledged.len()
    );
    for (child, ..) in &instances[..2] {
        signal(child, "-TERM");
    }
}

fn rand_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    key
}
