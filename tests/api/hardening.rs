use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::TestApp;

#[tokio::test]
async fn answers_carry_the_security_headers() {
    let app = TestApp::spawn().await;
    for path in ["/graphql", "/healthz"] {
        let request = if path == "/graphql" {
            app.client
                .post(app.url(path))
                .json(&json!({ "query": "{ __typename }" }))
        } else {
            app.client.get(app.url(path))
        };
        let response = request.send().await.unwrap();
        let h = response.headers();
        assert!(
            h["strict-transport-security"]
                .to_str()
                .unwrap()
                .starts_with("max-age="),
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
    app.stop().await;
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cors_admits_only_the_configured_origins() {
    let closed = TestApp::spawn().await;
    let response = preflight(&closed, "https://app.example.com").await;
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    closed.stop().await;

    let open =
        TestApp::spawn_with(|c| c.server.cors_origins = vec!["https://app.example.com".into()])
            .await;
    let response = preflight(&open, "https://app.example.com").await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let response = preflight(&open, "https://evil.example").await;
    assert_ne!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://evil.example")
    );
    open.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let app = TestApp::spawn_with(|c| c.server.max_connections = 1).await;
    // Hold the only slot with an idle TCP connection.
    let held = tokio::net::TcpStream::connect(app.app().addr())
        .await
        .unwrap();
    let client = app.client.clone();
    let url = app.url("/healthz");
    let waiting = tokio::spawn(async move { client.get(url).send().await });
    // Not served while the slot is taken (this can only err on the side of passing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served beside the first"
    );
    drop(held);
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_past_the_time_limit_gets_503() {
    let app = TestApp::spawn_with(|c| c.server.request_timeout = Duration::from_millis(300)).await;
    // A body that never finishes arriving keeps the handler waiting.
    let mut stream = crate::transport::raw_tls(&app).await;
    stream
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok());
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    app.stop().await;
}
