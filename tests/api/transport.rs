use std::time::Duration;

use keyhold::{Application, Clock};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, https_client, test_config};

#[tokio::test]
async fn plain_http_to_the_port_gets_no_graphql_answer() {
    let app = TestApp::spawn().await;
    let mut socket = tokio::net::TcpStream::connect(app.app.addr())
        .await
        .unwrap();
    let body = r#"{"query":"{ __typename }"}"#;
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("RootQueryType"), "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A plain-HTTP client fails outright.
    let plain = reqwest::Client::new();
    let result = plain
        .post(format!("http://{}/graphql", app.app.addr()))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await;
    match result {
        Err(_) => {}
        Ok(response) => {
            let text = response.text().await.unwrap_or_default();
            assert!(!text.contains("RootQueryType"), "{text}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_generated_certificate_is_made_once_and_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("data");
    let first = Application::build_with_clock(test_config(storage.clone(), 1), Clock::shifted())
        .await
        .unwrap();
    let certificate = first.certificate_pem().to_string();
    assert!(storage.join("tls/cert.pem").exists());
    first.shutdown().await.unwrap();

    let second = Application::build_with_clock(test_config(storage, 1), Clock::shifted())
        .await
        .unwrap();
    assert_eq!(second.certificate_pem(), certificate);
    // A client that trusted the first start's certificate talks to the second start.
    let client = https_client(&certificate, second.addr());
    let response = client
        .post(format!("{}/graphql", second.base_url()))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn configured_certificate_files_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut config = test_config(dir.path().join("data"), 1);
    config.tls.cert_file = Some(cert);
    config.tls.key_file = Some(key);
    let app = Application::build(config).await.unwrap();
    assert_eq!(app.certificate_pem(), made.cert.pem());
    assert!(!dir.path().join("data/tls").exists(), "nothing generated");
    let client = https_client(&made.cert.pem(), app.addr());
    let response = client
        .get(format!("{}/healthz", app.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_server_on_the_same_storage_is_refused() {
    let app = TestApp::spawn().await;
    let config = test_config(app.dir.path().join("data"), 1);
    let err = Application::build(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
    app.stop().await;
}
