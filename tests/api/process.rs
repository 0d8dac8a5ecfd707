//! The real binary, as an operator runs it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

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

#[tokio::test]
async fn the_server_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The file asks for a port that cannot be bound; the environment overrides it.
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\npath = \"./data\"\n",
    )
    .unwrap();
    let mut child = keyhold(dir.path())
        .args(["serve", "--config", "config.toml"])
        .env("KEYHOLD_SERVER__LISTEN", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            log.push(line.clone());
            if line.contains("Keyhold listening") {
                let start = line.find("address=").unwrap() + "address=".len();
                let rest = &line[start..];
                let end = rest.find(' ').unwrap_or(rest.len());
                return rest[..end].parse::<std::net::SocketAddr>().unwrap();
            }
        }
        panic!("the server exited before listening: {log:#?}");
    })
    .await
    .expect("the server listens within 30 s");
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

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
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
    // The database was released: it opens again.
    keyhold::store::Store::open(&dir.path().join("data/db")).unwrap();
    // Nothing answers any more.
    assert!(client.post(&url).send().await.is_err());
}
