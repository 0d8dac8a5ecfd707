//! Connections an attacker holds open without sending anything useful: idle sockets from
//! one address, silent sockets, request heads that trickle in; and per-IP limits that a
//! whole IPv6 network shares.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{LOGIN, PASSWORD, TestApp, error_code};

/// Waits (at most `within`) for the server to close `socket`: a read that ends.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let ended = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, ended).await.is_ok()
}

async fn connect_from(local: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

#[tokio::test]
async fn idle_sockets_from_one_address_leave_room_for_another() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_connections = 8;
        c.server.max_connections_per_ip = 4;
        c.server.tls_handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let mut hoarded = Vec::new();
    for _ in 0..10 {
        hoarded.push(connect_from(loopback, app.app().addr()).await);
    }
    // Past its share, each socket of 127.0.0.1 is closed as soon as it is accepted.
    for socket in &mut hoarded[4..] {
        assert!(closed_within(socket, Duration::from_secs(5)).await);
    }
    for socket in &mut hoarded[..4] {
        assert!(
            !closed_within(socket, Duration::from_millis(50)).await,
            "its share stays open"
        );
    }
    // Another client, 127.0.0.2 (loopback too), is answered at once.
    let other = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(app.app().certificate_pem().as_bytes()).unwrap(),
        ])
        .resolve("localhost", app.app().addr())
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        other.get(app.url("/healthz")).send(),
    )
    .await
    .expect("answered within a second")
    .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    // Once 127.0.0.1's sockets close, it gets its share back.
    drop(hoarded);
    let body = app.graphql("{ __typename }", Value::Null).await;
    assert_eq!(body["data"]["__typename"], "RootQueryType");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keyhold_connections_refused_total{reason=\"per_ip\"} 6"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_socket_that_never_sends_a_byte_is_closed_after_the_handshake_timeout() {
    let app =
        TestApp::spawn_with(|c| c.server.tls_handshake_timeout = Duration::from_secs(1)).await;
    let mut silent = TcpStream::connect(app.app().addr()).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let body = app.graphql("{ __typename }", Value::Null).await;
    assert_eq!(body["data"]["__typename"], "RootQueryType");
    app.stop().await;
}

/// A TLS connection to the server, speaking HTTP/1.1.
async fn tls_to(app: &TestApp) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_slice_iter(app.app().certificate_pem().as_bytes())
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(app.app().addr()).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_request_head_that_trickles_in_is_cut_off() {
    let app = TestApp::spawn_with(|c| c.server.header_read_timeout = Duration::from_secs(2)).await;
    let mut tls = tls_to(&app).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    // One byte a second of a header that never ends, for as long as the server listens.
    let cut_off = loop {
        if tls.write_all(b"x").await.is_err() || tls.flush().await.is_err() {
            break true;
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            // An answer (408) ends it too; the connection then closes.
            Ok(Ok(_)) => break true,
            Err(_) if sent >= 10 => break false,
            Err(_) => {}
        }
    };
    assert!(cut_off, "still reading after {sent} bytes");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A complete request on a new connection is answered.
    let mut tls = tls_to(&app).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn addresses_of_one_ipv6_network_share_one_login_limit_behind_a_trusted_proxy() {
    let app = TestApp::spawn_with(|c| {
        c.limits.enabled = true;
        c.limits.login_per_ip_per_minute = 3;
        c.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    // A new address every time, so that only the per-IP limit can refuse.
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let login_from = |forwarded: &'static str| {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = app
            .client
            .post(app.url("/graphql"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({ "query": LOGIN, "variables": { "email": format!("nobody{n}@example.com"), "password": PASSWORD } }));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for forwarded in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
        let body = login_from(forwarded).await;
        assert_eq!(
            error_code(&body),
            "INVALID_CREDENTIALS",
            "{forwarded}: {body}"
        );
    }
    let body = login_from("2001:db8:1:2:dead:beef:0:1").await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "the same /64: {body}");
    let body = login_from("2001:db8:1:3::1").await;
    assert_eq!(
        error_code(&body),
        "INVALID_CREDENTIALS",
        "the next /64: {body}"
    );
    // An IPv4-mapped IPv6 address is its IPv4 address.
    for forwarded in ["192.0.2.7", "::ffff:192.0.2.7", "192.0.2.7"] {
        let body = login_from(forwarded).await;
        assert_eq!(
            error_code(&body),
            "INVALID_CREDENTIALS",
            "{forwarded}: {body}"
        );
    }
    let body = login_from("::ffff:192.0.2.7").await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    app.stop().await;
}
