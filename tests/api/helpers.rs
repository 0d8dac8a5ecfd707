//! Starts a real Keyhold in-process through `keyhold::testing` (what an embedding
//! project's tests run): HTTPS on a free loopback port, sled in a temp folder and a manual
//! clock the test moves; here mail goes over real SMTP to a sink on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keyhold::config::{MailTransportKind, SmtpSecurity};
use keyhold::testing::TestServer;
use keyhold::{Application, Clock, Config};
use serde_json::{Value, json};

use crate::smtp_sink::{Mailbox, SmtpSink};

pub struct TestApp {
    server: TestServer,
    pub client: reqwest::Client,
    pub mailbox: Mailbox,
    /// The server's clock (a handle on the same manual clock).
    pub clock: Clock,
    _sink: SmtpSink,
}

/// Mail over plain SMTP to `127.0.0.1:port`.
fn smtp_to(config: &mut Config, port: u16) {
    config.mail.transport = MailTransportKind::Smtp;
    config.mail.smtp.host = Some("127.0.0.1".into());
    config.mail.smtp.port = port;
    config.mail.smtp.security = SmtpSecurity::None;
}

/// The configuration of a test server (`keyhold::testing::test_config`: cheap argon2
/// through config, never by changing the defaults, port 0) with its storage at `storage`
/// and mail to the sink at `smtp_port`: for starting a stopped test's storage again.
pub fn test_config(storage: PathBuf, smtp_port: u16) -> Config {
    let mut config = keyhold::testing::test_config();
    config.storage.path = storage;
    smtp_to(&mut config, smtp_port);
    config
}

/// A client that trusts only this server's certificate and finds `localhost` at `addr`.
pub fn https_client(certificate_pem: &str, addr: SocketAddr) -> reqwest::Client {
    let certificate = reqwest::Certificate::from_pem(certificate_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([certificate])
        .resolve("localhost", addr)
        .https_only(true)
        .build()
        .unwrap()
}

/// Runs one operation against a bare `Application` (one started without `TestApp`, e.g.
/// after a restart), optionally with a bearer token.
pub async fn graphql_on(
    app: &Application,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = https_client(app.certificate_pem(), app.addr())
        .post(format!("{}/graphql", app.base_url()))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let sink = SmtpSink::start().await;
        let port = sink.port;
        let server = TestServer::builder()
            .config(|c| {
                smtp_to(c, port);
                adjust(c);
            })
            .deliver_mail_as_configured()
            .start()
            .await
            .expect("Keyhold starts");
        TestApp {
            client: server.client(),
            mailbox: sink.mailbox.clone(),
            clock: server.clock().clone(),
            server,
            _sink: sink,
        }
    }

    /// The running application.
    pub fn app(&self) -> &Application {
        self.server.app()
    }

    /// The temporary folder; the storage is `data/` inside it.
    pub fn dir(&self) -> &Path {
        self.server.dir()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    /// POSTs `body` to `path` and returns the status and the JSON answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs `body` as it is to `/graphql`, as `application/json`.
    pub async fn post_raw_json(
        &self,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /.well-known/jwks.json`.
    pub async fn jwks(&self) -> Value {
        self.client
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Runs one GraphQL operation at `/graphql`.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self
            .post_json(
                "/graphql",
                &json!({ "query": query, "variables": variables }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Runs one operation with `Authorization: Bearer token`.
    pub async fn graphql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        let response = self
            .client
            .post(self.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.unwrap()
    }

    /// `register` with a document.
    pub async fn register(&self, document: Value) -> Value {
        self.graphql(
            "mutation($data: String!) { register(input: { data: $data }) { status message userId accountId verificationCode } }",
            json!({ "data": document.to_string() }),
        )
        .await
    }

    /// Registers `email` and uses the mailed code, so the account can sign in.
    pub async fn verified_user(&self, email: &str, password: &str) {
        let body = self
            .register(json!({ "email": email, "password": password }))
            .await;
        assert_eq!(body["data"]["register"]["status"], 201, "{body}");
        let mail = self
            .mailbox
            .wait_for_subject(email, "Confirm your e-mail")
            .await;
        let body = self.verify_email(&mail.link_code()).await;
        assert_eq!(body["data"]["verifyEmail"]["verified"], true, "{body}");
    }

    pub async fn verify_email(&self, code: &str) -> Value {
        self.graphql(
            "mutation($code: String!) { verifyEmail(code: $code) { verified message } }",
            json!({ "code": code }),
        )
        .await
    }

    /// Turns on e-mailed two-factor sign-in for the caller of `token`, with its `password`:
    /// the recovery codes, shown once.
    pub async fn enable_2fa(&self, token: &str, password: &str) -> Vec<String> {
        let body = self
            .graphql_as(
                token,
                "mutation($p: String) { enable2Fa(password: $p) { status recoveryCodes } }",
                json!({ "p": password }),
            )
            .await;
        assert_eq!(body["data"]["enable2Fa"]["status"], "ENABLED", "{body}");
        body["data"]["enable2Fa"]["recoveryCodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    }

    /// `login`, returning the whole answer.
    pub async fn login(&self, email: &str, password: &str, device_id: Option<&str>) -> Value {
        self.graphql(
            LOGIN,
            json!({ "email": email, "password": password, "device": device_id.map(|d| json!({ "deviceId": d, "name": "test device" })) }),
        )
        .await
    }

    /// Signs in and returns `data.login`.
    pub async fn signed_in(&self, email: &str, password: &str, device_id: Option<&str>) -> Value {
        let body = self.login(email, password, device_id).await;
        assert!(body["errors"].is_null(), "{body}");
        body["data"]["login"].clone()
    }

    pub async fn stop(self) {
        self.server.shutdown().await.expect("a clean shutdown");
    }

    /// Stops the server (with a checkpoint) but keeps its storage for the test to look at.
    pub async fn stop_keeping_storage(self) -> tempfile::TempDir {
        self.server
            .shutdown_keeping_storage()
            .await
            .expect("a clean shutdown")
    }
}

/// The `extensions.code` of the first error.
pub fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

pub const LOGIN: &str = "mutation($email: EmailAddress!, $password: String!, $device: DeviceInfo) { login(credentials: { email: $email, password: $password, deviceInfo: $device }) { status userId userUid userStatus token refreshToken sessionId promptTwoFactorAuth promptTncAcceptance deviceId ipAddress lastLoginAt currentLoginAt tokenExpiresAt refreshTokenExpiresAt twoFactorMethod userProfile { id email emailVerified username firstName lastName twoFactorAuth createdAt } } }";

pub const NEW_TOKEN: &str = "mutation($refresh: String!) { newToken(refreshToken: $refresh) { status token refreshToken sessionId deviceId tokenExpiresAt refreshTokenExpiresAt userProfile { id } } }";

/// A password that meets the policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// The sled backend under a running application, for tests of what is particular to it
/// (its format version, its expiry index).
pub fn sled(app: &Application) -> &keyhold::store::sled::Store {
    app.store()
        .as_any()
        .downcast_ref()
        .expect("the tests run on the sled backend")
}
