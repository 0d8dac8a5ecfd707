use std::sync::atomic::Ordering;
use std::time::Duration;

use keyhold::{Application, Clock};
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, graphql_on, test_config};
use crate::smtp_sink::{SinkTls, SmtpSink};

/// A loopback port with nothing listening on it (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (real time, bounded) until `done` holds: the worker runs in the background.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} did not happen");
}

#[tokio::test]
async fn with_smtp_down_the_request_succeeds_and_the_mail_follows_once_it_is_up() {
    let port = free_port();
    let app = TestApp::spawn_with(|c| c.mail.smtp.port = port).await;
    let body = app
        .register(json!({ "email": "ada@example.com", "password": PASSWORD }))
        .await;
    assert_eq!(body["data"]["register"]["status"], 201, "{body}");
    let stats = app.app().mail_stats();
    eventually("a failed first attempt", async || {
        stats.retried.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(app.app().store().mail_queue_len().await.unwrap(), 1);

    let sink = SmtpSink::start_on(SinkTls::None, port).await;
    app.clock.advance(Duration::from_secs(10));
    let mail = sink.mailbox.wait_for("ada@example.com").await;
    assert_eq!(mail.subject(), "Confirm your e-mail address");
    eventually("the queue empties", async || {
        app.app().store().mail_queue_len().await.unwrap() == 0
    })
    .await;

    // Never twice: later rounds find nothing to send.
    app.clock.advance(Duration::from_secs(3600));
    app.register(json!({ "email": "bob@example.com", "password": PASSWORD }))
        .await;
    sink.mailbox.wait_for("bob@example.com").await;
    eventually("two sends", async || {
        stats.sent.load(Ordering::Relaxed) == 2
    })
    .await;
    assert_eq!(sink.mailbox.to("ada@example.com").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn queued_mail_survives_a_restart_and_goes_out_after_it() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("data");
    let first = Application::build_with_clock(test_config(storage.clone(), port), Clock::shifted())
        .await
        .unwrap();
    let body = graphql_on(
        &first,
        None,
        "mutation($d: String!) { register(input: { data: $d }) { status } }",
        json!({ "d": json!({ "email": "cy@example.com", "password": PASSWORD }).to_string() }),
    )
    .await;
    assert_eq!(body["data"]["register"]["status"], 201, "{body}");
    first.shutdown().await.unwrap();

    let sink = SmtpSink::start_on(SinkTls::None, port).await;
    let clock = Clock::shifted();
    // Later than any retry the first run scheduled.
    clock.advance(Duration::from_secs(3600));
    let second = Application::build_with_clock(test_config(storage, port), clock)
        .await
        .unwrap();
    let mail = sink.mailbox.wait_for("cy@example.com").await;
    assert_eq!(mail.subject(), "Confirm your e-mail address");
    second.shutdown().await.unwrap();
    assert_eq!(sink.mailbox.to("cy@example.com").len(), 1);
}

#[tokio::test]
async fn a_message_is_dropped_after_its_last_attempt() {
    let port = free_port();
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp.port = port;
        c.mail.max_attempts = 2;
    })
    .await;
    app.register(json!({ "email": "dee@example.com", "password": PASSWORD }))
        .await;
    let stats = app.app().mail_stats();
    eventually("the first failure", async || {
        stats.retried.load(Ordering::Relaxed) == 1
    })
    .await;
    app.clock.advance(Duration::from_secs(10));
    eventually("the drop", async || {
        stats.dropped.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(app.app().store().mail_queue_len().await.unwrap(), 0);
    app.stop().await;
}
