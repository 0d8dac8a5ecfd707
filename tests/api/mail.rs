use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use keyhold::Clock;
use keyhold::mail::{LogTransport, Mailer, OutgoingMail, Template, Templates};
use minijinja::context;

use crate::helpers::TestApp;

#[tokio::test]
async fn a_message_sent_over_smtp_arrives_at_the_sink_with_its_subject_and_body() {
    let app = TestApp::spawn().await;
    let mailer = app.app.mailer();
    let mail = mailer
        .render(
            "ada@example.com",
            Template::TwoFactorCode,
            context! { code => "482913", purpose => "sign in", expires_at => "2026-01-01T00:10:00Z" },
        )
        .unwrap();
    mailer.send(&mail).await.unwrap();

    let received = app.mailbox.wait_for("ada@example.com").await;
    assert_eq!(received.mail_from, "no-reply@localhost");
    assert_eq!(received.subject(), "Your Keyhold security code");
    assert!(received.text().contains("482913"), "{}", received.text());
    assert!(received.text().contains("sign in"));
    assert!(received.html().contains("482913"), "{}", received.html());
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_smtp_server_is_an_error_not_a_hang() {
    let app = TestApp::spawn_with(|c| {
        // Nothing listens on port 1 of loopback.
        c.mail.smtp.port = 1;
    })
    .await;
    let mail = OutgoingMail {
        to: "bob@example.com".into(),
        subject: "hello".into(),
        text: "body".into(),
        html: None,
    };
    let err = app.app.mailer().send(&mail).await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn the_log_transport_writes_an_eml_file_readable_only_by_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let mailer = Mailer::new(
        "Keyhold <no-reply@localhost>",
        Arc::new(LogTransport::new(outbox.clone())),
        Templates::load(None).unwrap(),
        Clock::system(),
    );
    let mail = mailer
        .render(
            "grace@example.com",
            Template::VerifyEmail,
            context! { link => "https://localhost:8443/verify?code=XYZ", code => "XYZ", expires_at => "soon" },
        )
        .unwrap();
    mailer.send(&mail).await.unwrap();

    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "eml");
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let raw = std::fs::read(&files[0]).unwrap();
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.subject(), Some("Confirm your e-mail address"));
    assert_eq!(
        parsed
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("grace@example.com")
    );
    assert!(parsed.body_text(0).unwrap().contains("XYZ"));
}

#[tokio::test]
async fn a_message_is_dated_by_the_servers_clock() {
    let app = TestApp::spawn().await;
    let a_year = std::time::Duration::from_secs(365 * 86400);
    app.clock.advance(a_year);
    let mail = OutgoingMail {
        to: "carol@example.com".into(),
        subject: "hello".into(),
        text: "body".into(),
        html: None,
    };
    app.app.mailer().send(&mail).await.unwrap();
    let received = app.mailbox.wait_for("carol@example.com").await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&received.data)
        .unwrap();
    let dated = parsed.date().unwrap().to_timestamp();
    assert_eq!(dated, app.clock.now().unix_timestamp());
    assert!(dated >= time::OffsetDateTime::now_utc().unix_timestamp() + 364 * 86400);
    app.stop().await;
}
