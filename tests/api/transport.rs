use std::time::Duration;

use keyhold::{Application, Clock};
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, https_client, test_config};

#[tokio::test]
async fn plain_http_to_the_port_gets_no_graphql_answer() {
    let app = TestApp::spawn().await;
    let mut socket = tokio::net::TcpStream::connect(app.app().addr())
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
        .post(format!("http://{}/graphql", app.app().addr()))
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
    let config = test_config(app.dir().join("data"), 1);
    let err = Application::build(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
    app.stop().await;
}

/// A TLS connection to the app that trusts its certificate, for speaking HTTP by hand.
pub async fn raw_tls(app: &TestApp) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_slice_iter(app.app().certificate_pem().as_bytes())
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(app.app().addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

async fn read_until(stream: &mut (impl AsyncReadExt + Unpin), needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) || n == 0 {
            return text;
        }
    }
}

#[tokio::test]
async fn a_request_in_flight_finishes_while_the_server_shuts_down() {
    let app = TestApp::spawn().await;
    let mut stream = raw_tls(&app).await;
    let body = r#"{"query":"{ __typename }"}"#;
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // "100 Continue" comes once the handler reads the body: the request is in flight.
    let interim = read_until(&mut stream, "100 Continue").await;
    assert!(interim.contains("100 Continue"), "{interim}");

    let addr = app.app().addr();
    let shutdown = tokio::spawn(app.stop());
    // Wait until the listener is closed: shutdown is under way, new connections are refused.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener closes");
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the request in flight"
    );
    // The request in flight is still served.
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_until(&mut stream, "RootQueryType").await;
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("RootQueryType"), "{answer}");
    shutdown.await.unwrap();
}

#[tokio::test]
async fn the_first_connection_right_after_start_is_served() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..10 {
        let app = Application::build(test_config(dir.path().join("data"), 1))
            .await
            .unwrap();
        let client = https_client(app.certificate_pem(), app.addr());
        let response = client
            .get(format!("{}/healthz", app.base_url()))
            .send()
            .await
            .expect("the TLS configuration is in place before the first accept");
        assert_eq!(response.status().as_u16(), 200);
        app.shutdown().await.unwrap();
    }
}
