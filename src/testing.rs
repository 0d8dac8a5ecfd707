//! A real Keyhold inside your own integration tests (cargo feature `testing`).
//!
//! [`TestServer::start`] starts a full Keyhold (the same HTTPS server, GraphQL schema, sled
//! store, mail queue and sweeper as production) on `127.0.0.1` port 0, in a temporary
//! folder that is removed afterwards, with cheap argon2 parameters and rate limits off.
//! Mail never leaves the process: a [`Mailbox`] captures every message. The server's clock
//! is a manual one that [`TestServer::advance_clock`] moves, so expiry is tested without
//! sleeping. Servers are independent: many can run at once in one process.
//!
//! The shortcuts ([`TestServer::create_verified_user`], [`TestServer::sign_in`],
//! [`TestServer::enable_2fa`], …) go through the public GraphQL API over HTTPS, so a test
//! exercises what production runs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use keyhold::testing::TestServer;
//!
//! let keyhold = TestServer::start().await?;
//! keyhold.create_verified_user("ada@example.com", "correct horse battery staple").await?;
//! let tokens = keyhold.sign_in("ada@example.com", "correct horse battery staple").await?;
//!
//! // What your service would do: check the access token with the public keys.
//! let jwks: serde_json::Value = keyhold.client().get(keyhold.jwks_url()).send().await?.json().await?;
//! assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
//! assert!(!tokens.access_token.is_empty());
//!
//! // Tokens expire on Keyhold's clock, which the test moves.
//! keyhold.advance_clock(std::time::Duration::from_secs(3600));
//! let refreshed = keyhold.refresh(&tokens.refresh_token).await?;
//! assert_ne!(refreshed.access_token, tokens.access_token);
//! keyhold.shutdown().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::mail::{Envelope, MailError, Transport};
use crate::{Application, Clock, Config};

/// Configures a [`TestServer`] before it starts.
pub struct Builder {
    config: Config,
    /// Mail goes through `mail.transport` (for example SMTP to a server the test runs)
    /// rather than into the [`Mailbox`].
    configured_mail: bool,
}

impl Builder {
    /// Changes any configuration key; the test defaults are applied first.
    ///
    /// ```
    /// # async fn demo() -> anyhow::Result<()> {
    /// let keyhold = keyhold::testing::TestServer::builder()
    ///     .config(|c| c.tokens.access_ttl = std::time::Duration::from_secs(60))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn config(mut self, change: impl FnOnce(&mut Config)) -> Builder {
        change(&mut self.config);
        self
    }

    /// Sends mail as `mail.transport` says (for example over SMTP to a server the test
    /// runs on loopback) instead of capturing it: [`TestServer::mailbox`] then stays empty.
    pub fn deliver_mail_as_configured(mut self) -> Builder {
        self.configured_mail = true;
        self
    }

    /// Starts the server: bound, serving, with its background tasks running.
    pub async fn start(self) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir().context("a temporary folder for the test server")?;
        let mut config = self.config;
        let temporary = config.storage.path == Config::default().storage.path;
        if temporary {
            config.storage.path = dir.path().join("data");
        }
        let mailbox = Mailbox::default();
        let clock = Clock::manual(Clock::system().now());
        let app = if self.configured_mail {
            Application::build_with_clock(config, clock.clone()).await?
        } else {
            Application::build_with_transport(
                config,
                clock.clone(),
                Arc::new(CaptureTransport {
                    mailbox: mailbox.clone(),
                }),
            )
            .await?
        };
        // The folder goes with the server: a checkpoint at the stop would be thrown away.
        let app = app.checkpoint_at_stop(!temporary);
        let client = client_for(app.certificate_pem(), app.addr())?;
        Ok(TestServer {
            app: Some(app),
            mailbox,
            clock,
            client,
            dir: Some(dir),
        })
    }
}

/// The configuration a test server starts from: every default, but port 0 on loopback,
/// argon2 at 64 KiB and one pass (never the production defaults), rate limits off, no
/// scheduled backups, mail captured.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.passwords.argon2_memory_kib = 64;
    config.passwords.argon2_iterations = 1;
    config.passwords.max_concurrent_hashes = Some(2);
    config.limits.enabled = false;
    config.storage.backup_interval = Duration::ZERO;
    config
}

/// A running Keyhold for a test. Dropping it stops the server (without waiting); call
/// [`TestServer::shutdown`] to wait for a clean stop.
pub struct TestServer {
    app: Option<Application>,
    mailbox: Mailbox,
    clock: Clock,
    client: reqwest::Client,
    dir: Option<tempfile::TempDir>,
}

/// An access token and its refresh token, as `login`, `confirm2Fa` and `newToken` give them.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The JWT to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// The opaque token for `newToken`; it works once.
    pub refresh_token: String,
    /// The device session the pair belongs to.
    pub device_id: String,
}

impl TestServer {
    /// A builder starting from [`test_config`].
    pub fn builder() -> Builder {
        Builder {
            config: test_config(),
            configured_mail: false,
        }
    }

    /// Starts a server with [`test_config`].
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::builder().start().await
    }

    /// The running application, for what the shortcuts do not cover.
    pub fn app(&self) -> &Application {
        // Only `shutdown` and `drop` take it out, and both consume the server.
        self.app.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// `https://localhost:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.app().addr().port())
    }

    /// Where the GraphQL API is: `https://localhost:PORT/graphql`.
    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.base_url())
    }

    /// Where the public keys that verify access tokens are.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.base_url())
    }

    /// The address the server listens on (`127.0.0.1`, a free port).
    pub fn addr(&self) -> SocketAddr {
        self.app().addr()
    }

    /// The self-signed certificate the server presents (for `localhost`), PEM.
    pub fn certificate_pem(&self) -> &str {
        self.app().certificate_pem()
    }

    /// The certificate as a reqwest root, for a client of your own.
    pub fn reqwest_certificate(&self) -> reqwest::Certificate {
        // It parsed when the server started, so it parses again.
        reqwest::Certificate::from_pem(self.certificate_pem().as_bytes())
            .unwrap_or_else(|_| unreachable!())
    }

    /// The certificate as a rustls root store, for a client built on rustls directly.
    pub fn rustls_roots(&self) -> rustls::RootCertStore {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.certificate_pem().as_bytes()).flatten() {
            let _ = roots.add(cert);
        }
        roots
    }

    /// A reqwest client that trusts the server's certificate and reaches `localhost` at
    /// its port.
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// Every message the server has sent.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// The server's clock: a manual one, which only [`TestServer::advance_clock`] (or
    /// [`Clock::advance`] on this handle) moves.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The temporary folder the server keeps its storage in (`data/` inside it, unless
    /// `storage.path` was set), removed when the server is dropped.
    pub fn dir(&self) -> &std::path::Path {
        // Only `shutdown_keeping_storage` takes it out, and it consumes the server.
        self.dir
            .as_ref()
            .map_or_else(|| unreachable!(), |dir| dir.path())
    }

    /// Moves the server's clock forward: codes, tokens and sessions expire as if that much
    /// time had passed.
    pub fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Runs one GraphQL operation, with `Authorization: Bearer` when `token` is given, and
    /// returns the whole answer (`data` and `errors`).
    pub async fn graphql(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .post(self.graphql_url())
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Ok(request.send().await?.error_for_status()?.json().await?)
    }

    /// Like [`TestServer::graphql`], but an answer with errors is an `Err` naming the code.
    async fn call(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<Value> {
        let body = self.graphql(token, query, variables).await?;
        if let Some(error) = body["errors"].get(0) {
            bail!(
                "{}: {}",
                error["extensions"]["code"].as_str().unwrap_or("ERROR"),
                error["message"].as_str().unwrap_or("")
            );
        }
        Ok(body["data"].clone())
    }

    /// Registers `email` and confirms it with the code from the mailed link, as a user would.
    pub async fn create_verified_user(&self, email: &str, password: &str) -> anyhow::Result<()> {
        let document = json!({ "email": email, "password": password }).to_string();
        self.call(
            None,
            "mutation($d: String!) { register(input: { data: $d }) { status } }",
            json!({ "d": document }),
        )
        .await?;
        let mail = self
            .mailbox
            .wait_for_where(email, |m| m.subject.contains("Confirm your e-mail"))
            .await?;
        let code = mail
            .link_code()
            .context("a link code in the verification mail")?;
        self.call(
            None,
            "mutation($c: String!) { verifyEmail(code: $c) { verified } }",
            json!({ "c": code }),
        )
        .await?;
        Ok(())
    }

    /// Signs in on a new device. Fails when the account has 2FA on (use
    /// [`TestServer::sign_in_with_2fa`]).
    pub async fn sign_in(&self, email: &str, password: &str) -> anyhow::Result<TokenPair> {
        let login = self.login(email, password).await?;
        pair(&login).context("no tokens: the account has 2FA on (use sign_in_with_2fa)")
    }

    /// Signs in to an account with e-mailed 2FA: the password, then the code from the mail.
    pub async fn sign_in_with_2fa(&self, email: &str, password: &str) -> anyhow::Result<TokenPair> {
        // Mail queued before this sign-in (an earlier one's code) is delivered first, so
        // that the count below names this sign-in's message.
        self.mail_delivered().await?;
        let already = self.mailbox.to(email).len();
        let login = self.login(email, password).await?;
        let challenge = login["sessionId"]
            .as_str()
            .context("no pending sign-in: the account has no 2FA")?
            .to_string();
        let mail = self.mailbox.wait_for_nth(email, already + 1).await?;
        let code = mail
            .six_digit_code()
            .context("a six-digit code in the mail")?;
        let data = self
            .call(
                None,
                "mutation($c: String!, $s: String!, $e: EmailAddress!) { confirm2Fa(code: $c, sessionId: $s, email: $e) { token refreshToken deviceId } }",
                json!({ "c": code, "s": challenge, "e": email }),
            )
            .await?;
        pair(&data["confirm2Fa"]).context("confirm2Fa gave no tokens")
    }

    /// Waits (up to 10 s) until every message queued so far has been delivered: a message
    /// leaves the queue only once it was sent.
    pub async fn mail_delivered(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + MAIL_WAIT;
        while self.app().store().mail_queue_len().await? > 0 {
            if tokio::time::Instant::now() >= deadline {
                bail!("queued mail was not delivered");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn login(&self, email: &str, password: &str) -> anyhow::Result<Value> {
        let data = self
            .call(
                None,
                "mutation($e: EmailAddress!, $p: String!) { login(credentials: { email: $e, password: $p }) { token refreshToken deviceId sessionId } }",
                json!({ "e": email, "p": password }),
            )
            .await?;
        Ok(data["login"].clone())
    }

    /// Turns on e-mailed 2FA for the signed-in user; returns the recovery codes.
    pub async fn enable_2fa(
        &self,
        access_token: &str,
        password: &str,
    ) -> anyhow::Result<Vec<String>> {
        let data = self
            .call(
                Some(access_token),
                "mutation($p: String) { enable2Fa(password: $p) { status recoveryCodes } }",
                json!({ "p": password }),
            )
            .await?;
        Ok(data["enable2Fa"]["recoveryCodes"]
            .as_array()
            .map(|codes| {
                codes
                    .iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Exchanges a refresh token for a new pair.
    pub async fn refresh(&self, refresh_token: &str) -> anyhow::Result<TokenPair> {
        let data = self
            .call(
                None,
                "mutation($t: String!) { newToken(refreshToken: $t) { token refreshToken deviceId } }",
                json!({ "t": refresh_token }),
            )
            .await?;
        pair(&data["newToken"]).context("newToken gave no tokens")
    }

    /// Signs the token's device out.
    pub async fn logout(&self, access_token: &str) -> anyhow::Result<()> {
        self.call(
            Some(access_token),
            "mutation { logout { status } }",
            Value::Null,
        )
        .await?;
        Ok(())
    }

    /// Stops the server and waits until it has: requests in flight answered, background
    /// work finished, the store flushed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        match self.app.take() {
            Some(app) => app.shutdown().await,
            None => Ok(()),
        }
    }

    /// Stops the server like [`TestServer::shutdown`], with the store checkpointed, and
    /// hands over the temporary folder instead of removing it: for a test that opens the
    /// storage again (a restart, an offline backup, a look at the files).
    pub async fn shutdown_keeping_storage(mut self) -> anyhow::Result<tempfile::TempDir> {
        if let Some(app) = self.app.take() {
            app.checkpoint_at_stop(true).shutdown().await?;
        }
        // Only this takes the folder out, and it consumes the server.
        Ok(self.dir.take().unwrap_or_else(|| unreachable!()))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop_in_background();
        }
    }
}

fn pair(value: &Value) -> Option<TokenPair> {
    Some(TokenPair {
        access_token: value["token"].as_str()?.to_string(),
        refresh_token: value["refreshToken"].as_str()?.to_string(),
        device_id: value["deviceId"].as_str().unwrap_or_default().to_string(),
    })
}

fn client_for(certificate_pem: &str, addr: SocketAddr) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certificate_pem.as_bytes())?])
        .resolve("localhost", addr)
        .https_only(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One message the server sent.
#[derive(Debug, Clone)]
pub struct Message {
    /// The recipient's address.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    pub html: String,
}

impl Message {
    /// The six-digit code standing alone on a line (second-factor and step-up mails).
    pub fn six_digit_code(&self) -> Option<String> {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 6 && l.chars().all(|c| c.is_ascii_digit()))
            .map(String::from)
    }

    /// The long code of the `?code=` link (verification, reset and invitation mails).
    pub fn link_code(&self) -> Option<String> {
        let start = self.text.find("code=")? + "code=".len();
        let code: String = self.text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        (!code.is_empty()).then_some(code)
    }
}

/// Every message the server has sent, in order. Cheap to clone: clones share the messages.
#[derive(Clone, Default)]
pub struct Mailbox {
    messages: Arc<Mutex<Vec<Message>>>,
    arrived: Arc<Notify>,
}

/// How long the waits below wait: mail is queued, then sent by a background worker.
const MAIL_WAIT: Duration = Duration::from_secs(10);

impl Mailbox {
    /// Every message so far.
    pub fn all(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every message to `to` so far.
    pub fn to(&self, to: &str) -> Vec<Message> {
        self.all()
            .into_iter()
            .filter(|m| m.to.eq_ignore_ascii_case(to))
            .collect()
    }

    /// The latest message to `to`, waiting (up to 10 s) for the first one.
    pub async fn wait_for(&self, to: &str) -> anyhow::Result<Message> {
        self.wait_until(to, |messages| messages.last().cloned())
            .await
    }

    /// The `n`th (1-based) message to `to`, waiting (up to 10 s) for it.
    pub async fn wait_for_nth(&self, to: &str, n: usize) -> anyhow::Result<Message> {
        self.wait_until(to, |messages| messages.get(n.saturating_sub(1)).cloned())
            .await
    }

    /// The first message to `to` that `matches`, waiting (up to 10 s) for it.
    pub async fn wait_for_where(
        &self,
        to: &str,
        matches: impl Fn(&Message) -> bool,
    ) -> anyhow::Result<Message> {
        self.wait_until(to, |messages| messages.iter().find(|m| matches(m)).cloned())
            .await
    }

    async fn wait_until(
        &self,
        to: &str,
        pick: impl Fn(&[Message]) -> Option<Message>,
    ) -> anyhow::Result<Message> {
        let deadline = tokio::time::Instant::now() + MAIL_WAIT;
        loop {
            let arrived = self.arrived.notified();
            if let Some(message) = pick(&self.to(to)) {
                return Ok(message);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let subjects: Vec<String> = self.to(to).into_iter().map(|m| m.subject).collect();
                bail!("the expected message to {to} did not arrive; it has {subjects:?}");
            }
        }
    }
}

/// Keeps every message in a [`Mailbox`] instead of sending it.
struct CaptureTransport {
    mailbox: Mailbox,
}

#[async_trait]
impl Transport for CaptureTransport {
    async fn deliver(&self, envelope: &Envelope<'_>) -> Result<(), MailError> {
        let parsed = mail_parser::MessageParser::default().parse(envelope.message);
        let text = |p: &mail_parser::Message<'_>| p.body_text(0).map(|t| t.to_string());
        let html = |p: &mail_parser::Message<'_>| p.body_html(0).map(|t| t.to_string());
        let message = Message {
            to: envelope.to.to_string(),
            subject: envelope.subject.to_string(),
            text: parsed.as_ref().and_then(text).unwrap_or_default(),
            html: parsed.as_ref().and_then(html).unwrap_or_default(),
        };
        self.mailbox
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
        self.mailbox.arrived.notify_waiters();
        Ok(())
    }
}
