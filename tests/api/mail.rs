use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use keyhold::Clock;
use keyhold::mail::{LogTransport, Mailer, OutgoingMail, Template, Templates};
use minijinja::context;

use keyhold::config::SmtpSecurity;

use crate::helpers::{TestApp, test_config};
use crate::smtp_sink::{SinkTls, SmtpSink};

#[tokio::test]
async fn a_message_sent_over_smtp_arrives_at_the_sink_with_its_subject_and_body() {
    let app = TestApp::spawn().await;
    let mailer = app.app().mailer();
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
    let err = app.app().mailer().send(&mail).await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn the_log_transport_writes_an_eml_file_readable_only_by_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let mailer = Mailer::new(
        "Keyhold <no-reply@localhost>",
        Arc::new(LogTransport::new(outbox.clone(), 10_000)),
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
    app.app().mailer().send(&mail).await.unwrap();
    let received = app.mailbox.wait_for("carol@example.com").await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&received.data)
        .unwrap();
    let dated = parsed.date().unwrap().to_timestamp();
    assert_eq!(dated, app.clock.now().unix_timestamp());
    assert!(dated >= Clock::system().unix_seconds() + 364 * 86400);
    app.stop().await;
}

async fn send_through(config: &keyhold::Config, to: &str) -> Result<(), keyhold::mail::MailError> {
    let mailer = Mailer::from_config(config, Clock::system()).unwrap();
    let mail = mailer
        .render(
            to,
            Template::PasswordChanged,
            context! { how => "changed", when => "now", reset_link => "https://localhost:8443/reset" },
        )
        .unwrap();
    mailer.send(&mail).await
}

#[tokio::test]
async fn mail_goes_through_starttls_and_implicit_tls_to_a_relay_with_a_private_ca() {
    for (mode, security) in [
        (SinkTls::StartTls, SmtpSecurity::Starttls),
        (SinkTls::Implicit, SmtpSecurity::Tls),
    ] {
        let sink = SmtpSink::start_with(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("relay-ca.pem");
        std::fs::write(&ca, &sink.certificate_pem).unwrap();
        let mut config = test_config(dir.path().join("data"), sink.port);
        config.mail.smtp.security = security;
        config.mail.smtp.ca_file = Some(ca);
        send_through(&config, "dora@example.com").await.unwrap();
        let received = sink.mailbox.wait_for("dora@example.com").await;
        assert_eq!(received.subject(), "Your password was changed", "{mode:?}");
        assert!(received.text().contains("changed at now"), "{mode:?}");
    }
}

#[tokio::test]
async fn an_untrusted_relay_certificate_is_refused() {
    let sink = SmtpSink::start_with(SinkTls::StartTls).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("data"), sink.port);
    config.mail.smtp.security = SmtpSecurity::Starttls;
    assert!(send_through(&config, "eve@example.com").await.is_err());
    assert!(sink.mailbox.all().is_empty());
}

#[tokio::test]
async fn starttls_is_never_downgraded_to_plain_text() {
    // This relay does not offer STARTTLS; the message must not go out in clear.
    let sink = SmtpSink::start_with(SinkTls::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("data"), sink.port);
    config.mail.smtp.security = SmtpSecurity::Starttls;
    assert!(send_through(&config, "eve@example.com").await.is_err());
    assert!(sink.mailbox.all().is_empty());
}
