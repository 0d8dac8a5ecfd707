//! Typed configuration: built-in defaults, then `config.toml`, then `KEYHOLD_<SECTION>__<KEY>`
//! environment variables. Unknown keys and bad values are errors that name the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

/// The prefix of every environment variable that overrides a key.
pub const ENV_PREFIX: &str = "KEYHOLD_";
/// The file read when `--config` is not given; when it is missing, every key has its default.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";

/// Why a configuration could not be used. The message names the key or the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn key(key: &str, message: impl fmt::Display) -> Self {
        ConfigError(format!("config key `{key}`: {message}"))
    }

    pub(crate) fn file(path: &Path, message: impl fmt::Display) -> Self {
        ConfigError(format!("file {}: {message}", path.display()))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub tls: TlsConfig,
    pub mail: MailConfig,
    pub passwords: PasswordsConfig,
    pub tokens: TokensConfig,
    pub two_factor: TwoFactorConfig,
    pub webauthn: WebauthnConfig,
    pub registration: RegistrationConfig,
    pub graphql: GraphqlConfig,
    pub limits: LimitsConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub testing: TestingConfig,
}

/// What the logs look like. Which events are written is `RUST_LOG`'s (default `info`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// `human`: one line per event for a terminal or `journalctl`; `json`: one JSON object per
/// line for a log shipper (Loki, Elasticsearch, Vector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `GET /metrics` (Prometheus text format).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// When set, a scrape must send `Authorization: Bearer <token>`.
    #[serde(deserialize_with = "lenient_secret")]
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// How long security events are kept.
    #[serde(with = "duration")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Duration::from_secs(90 * 86400),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Base of the links put in mails.
    pub public_url: url::Url,
    /// How long in-flight requests may run on after a stop signal.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Longest time one request may take; past it the client gets 503.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Connections at once from one client network (IPv6: one `limits.ipv6_prefix`);
    /// trusted proxies are exempt.
    pub max_connections_per_ip: usize,
    /// Longest a TLS handshake may take.
    #[serde(with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Longest a request head may take to arrive, from when the connection waits for one
    /// (so also how long an HTTP/1.1 connection may sit idle between requests).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no traffic either way for this long is closed (HTTP/2 included).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Requests in flight at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Largest request head: the HTTP/2 header list, or HTTP/1.1's request line and headers.
    pub max_header_bytes: usize,
    /// Browser origins allowed to call the API (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// Peers (reverse proxies) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            public_url: default_public_url(),
            shutdown_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_ip: 64,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 100,
            max_header_bytes: 16 * 1024,
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_public_url() -> url::Url {
    // A literal that always parses; kept in one place.
    url::Url::parse("https://localhost:8443").unwrap_or_else(|_| unreachable!())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where accounts, sessions and codes are kept.
    pub backend: StorageBackend,
    /// The sled database, the generated certificate and the mail outbox live here.
    pub path: PathBuf,
    /// How often the sweeper reclaims expired codes, challenges and sessions.
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
    /// How often a backup is made into `storage.path/backups`; `"0s"` turns it off.
    #[serde(with = "duration")]
    pub backup_interval: Duration,
    /// How many of those backups are kept.
    pub backup_keep: usize,
    /// The age recipient (`age1…`) every backup is encrypted to. Its identity (the private
    /// half, from `keyhold backup-key`) is kept away from the server and is needed to
    /// restore. Unset: no backup is written.
    pub backup_recipient: Option<String>,
    /// The key that codes and tokens are hashed, and queued mail and signing keys sealed,
    /// under; unset: `storage.path/keys/hmac.key`. Made (mode 0600) when it does not exist.
    /// Instances sharing a database need the same key: copy the first one's file to the
    /// others. The database keeps its fingerprint and refuses a different key.
    pub hmac_key_file: Option<PathBuf>,
    /// The database of `backend = "postgres"`.
    pub postgres: PostgresConfig,
}

/// `[storage.postgres]`: the shared database that several instances run on.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://USER@HOST:PORT/DBNAME` (a `host=… dbname=…` string works too). Keep the
    /// password out of it: in `password_file`, or `KEYHOLD_STORAGE__POSTGRES__PASSWORD`.
    pub url: Option<String>,
    pub password: Option<SecretString>,
    /// A file whose first line is the password (read at start).
    pub password_file: Option<PathBuf>,
    /// `disable`, `require` (encrypted, server not verified) or `verify-full` (the
    /// default: encrypted to a server whose certificate names its host).
    pub sslmode: PostgresSslMode,
    /// The CA certificates (PEM) the server's certificate must chain to, for
    /// `verify-full`; unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Connections each instance keeps at most.
    pub pool_size: usize,
    /// How long a request waits to connect or for a free connection before it fails.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            password: None,
            password_file: None,
            sslmode: PostgresSslMode::VerifyFull,
            ca_file: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// How the connection to PostgreSQL is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresSslMode {
    Disable,
    Require,
    VerifyFull,
}

/// The storage backends Keyhold can run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The embedded sled database in `storage.path`: one process on one machine.
    #[default]
    Sled,
    /// PostgreSQL at `storage.postgres.url`: several instances share one database.
    Postgres,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sled,
            path: PathBuf::from("./data"),
            sweep_interval: Duration::from_secs(60),
            backup_interval: Duration::from_secs(24 * 3600),
            backup_keep: 7,
            backup_recipient: None,
            hmac_key_file: None,
            postgres: PostgresConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransportKind {
    /// Logged, and written as `.eml` files under `storage.path/outbox`.
    Log,
    /// Sent through `mail.smtp`.
    Smtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    pub transport: MailTransportKind,
    pub from: String,
    /// A folder whose `NAME.txt` / `NAME.html` files replace the built-in templates.
    pub templates_dir: Option<PathBuf>,
    /// Tries per message before it is dropped (with an error in the log).
    pub max_attempts: u32,
    /// Messages waiting in the queue at most, and `.eml` files in the `log` outbox; past it
    /// new mail is dropped (an error in the log, `keyhold_mail_refused_total`).
    pub max_queued: usize,
    pub smtp: SmtpConfig,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            transport: MailTransportKind::Log,
            from: "Keyhold <no-reply@localhost>".to_string(),
            templates_dir: None,
            max_attempts: 10,
            max_queued: 10_000,
            smtp: SmtpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: Option<String>,
    pub port: u16,
    pub security: SmtpSecurity,
    #[serde(deserialize_with = "lenient_string")]
    pub username: Option<String>,
    #[serde(deserialize_with = "lenient_secret")]
    pub password: Option<SecretString>,
    /// PEM certificates to trust for the relay instead of the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Connect and per-command time limit.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: None,
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordsConfig {
    pub min_length: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    #[serde(with = "duration")]
    pub reset_ttl: Duration,
    /// Hashes computed at once; unset: the number of cores.
    pub max_concurrent_hashes: Option<usize>,
    /// Hashes waiting for a core; past this the caller is told to retry (`RATE_LIMITED`).
    pub max_queued_hashes: usize,
}

impl Default for PasswordsConfig {
    fn default() -> Self {
        PasswordsConfig {
            min_length: 10,
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            reset_ttl: Duration::from_secs(30 * 60),
            max_concurrent_hashes: None,
            max_queued_hashes: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(with = "duration")]
    pub access_ttl: Duration,
    #[serde(with = "duration")]
    pub refresh_ttl: Duration,
    /// A device session lives at most this long from its sign-in, however often it is
    /// refreshed.
    #[serde(with = "duration")]
    pub session_max_age: Duration,
    /// Device sessions one user may have; a sign-in past it ends the oldest.
    pub max_sessions_per_user: usize,
    /// How often each instance reads the signing keys again, and how long a new key is
    /// published in the JWKS before anything signs with it: a rotation on one instance is
    /// served by every other, and known to relying parties that fetch the JWKS this often,
    /// before the first token it signs.
    #[serde(with = "duration")]
    pub jwks_refresh: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            issuer: "keyhold".to_string(),
            audience: "keyhold".to_string(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            session_max_age: Duration::from_secs(90 * 24 * 3600),
            max_sessions_per_user: 50,
            jwks_refresh: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwoFactorConfig {
    #[serde(with = "duration")]
    pub code_ttl: Duration,
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub resend_cooldown: Duration,
    /// How often one challenge's code may be sent again.
    pub max_resends: u32,
    /// The issuer an authenticator app shows next to the account.
    pub totp_issuer: String,
    /// Wrong second-factor codes one account may see within `failure_window`, on every
    /// path together; past it every code, even a right one, is TOO_MANY_ATTEMPTS.
    pub max_failures_per_account: u32,
    #[serde(with = "duration")]
    pub failure_window: Duration,
    /// Sign-in challenges one user may have waiting; a new one past it ends the oldest.
    pub max_pending_challenges: usize,
}

impl Default for TwoFactorConfig {
    fn default() -> Self {
        TwoFactorConfig {
            code_ttl: Duration::from_secs(10 * 60),
            max_attempts: 5,
            resend_cooldown: Duration::from_secs(30),
            max_resends: 3,
            totp_issuer: "Keyhold".to_string(),
            max_failures_per_account: 10,
            failure_window: Duration::from_secs(3600),
            max_pending_challenges: 10,
        }
    }
}

/// Passkeys (WebAuthn). The relying party is the site the passkeys belong to: its ID is a
/// domain, and every page that calls the passkey operations must be served from an origin on
/// that domain, or the browser refuses (and so does Keyhold).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebauthnConfig {
    /// The relying party ID, a domain such as `example.com`. Unset: the host of
    /// `server.public_url`.
    pub rp_id: Option<String>,
    /// The name an authenticator shows beside the passkey.
    pub rp_name: String,
    /// The origins (`https://app.example.com`) of the pages that call the passkey operations.
    /// Empty: the origin of `server.public_url`.
    pub origins: Vec<String>,
    /// How long a passkey ceremony (a registration or a sign-in) may take between its start
    /// and its finish.
    #[serde(with = "duration")]
    pub ceremony_ttl: Duration,
}

impl Default for WebauthnConfig {
    fn default() -> Self {
        WebauthnConfig {
            rp_id: None,
            rp_name: "Keyhold".to_string(),
            origins: Vec::new(),
            ceremony_ttl: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    pub open: bool,
    pub require_email_verification: bool,
    /// Lifetime of an e-mail verification code.
    #[serde(with = "duration")]
    pub verification_ttl: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            open: true,
            require_email_verification: true,
            verification_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    pub playground: bool,
    pub introspection: bool,
    pub max_body_bytes: usize,
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_batch: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        GraphqlConfig {
            playground: true,
            introspection: true,
            max_body_bytes: 65536,
            max_depth: 12,
            max_complexity: 500,
            max_batch: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub enabled: bool,
    pub login_failures_per_account: u32,
    #[serde(with = "duration")]
    pub login_failure_window: Duration,
    pub login_per_ip_per_minute: u32,
    pub code_sends_per_ip_per_minute: u32,
    pub register_per_ip_per_hour: u32,
    pub forgot_password_per_ip_per_hour: u32,
    pub forgot_password_per_address_per_hour: u32,
    /// IPv6 clients are limited per network of this prefix length (a /64 is one subscriber).
    pub ipv6_prefix: u8,
    /// Mail nobody asked for ("someone tried to register", …) per address per hour.
    pub notices_per_address_per_hour: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            enabled: true,
            login_failures_per_account: 5,
            login_failure_window: Duration::from_secs(15 * 60),
            login_per_ip_per_minute: 30,
            code_sends_per_ip_per_minute: 10,
            register_per_ip_per_hour: 20,
            forgot_password_per_ip_per_hour: 20,
            forgot_password_per_address_per_hour: 5,
            ipv6_prefix: 64,
            notices_per_address_per_hour: 3,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestingConfig {
    /// Returns verification codes in `register`; for load tests only.
    pub expose_codes: bool,
}

/// Whether `KEYHOLD_<key>` names configuration: only `<SECTION>__<KEY>` does. Other
/// `KEYHOLD_*` names are someone else's, such as the `KEYHOLD_PORT=tcp://…` and
/// `KEYHOLD_SERVICE_HOST` that Kubernetes gives every pod beside a Service named `keyhold`.
fn is_config_key(key: &figment::value::UncasedStr) -> bool {
    key.as_str().contains("__")
}

impl Config {
    /// Reads the configuration the way `keyhold serve` does: defaults, then the file (`path`, or
    /// `./config.toml` when it exists), then `KEYHOLD_*` variables; then [`Config::validate`].
    ///
    /// An explicitly named file that does not exist is an error (a typo should not silently
    /// start a server on defaults); the implicit `./config.toml` may be absent.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::file(path, "not found or not a file"));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.is_file() {
                    figment = figment.merge(Toml::file_exact(default));
                }
            }
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).filter(is_config_key).split("__"));
        Self::extract(figment)
    }

    /// The `KEYHOLD_*` variables that are not configuration (not `KEYHOLD_<SECTION>__<KEY>`),
    /// such as the service variables Kubernetes sets for a Service named `keyhold`.
    pub fn ignored_env_vars() -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| {
                name.strip_prefix(ENV_PREFIX)
                    .is_some_and(|key| !is_config_key(figment::value::UncasedStr::new(key)))
            })
            .collect()
    }

    /// Parses a TOML document on top of the defaults (no environment), then validates it.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Self::extract(Figment::from(Toml::string(toml)))
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: ranges and keys that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.server.public_url.scheme(), "https" | "http") {
            return Err(ConfigError::key(
                "server.public_url",
                "must be an https:// (or http://) URL",
            ));
        }
        positive("server.request_timeout", self.server.request_timeout)?;
        if self.storage.backend == StorageBackend::Postgres {
            let pg = &self.storage.postgres;
            if pg.url.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::key(
                    "storage.postgres.url",
                    "is needed with storage.backend = \"postgres\"",
                ));
            }
            if pg.password.is_some() && pg.password_file.is_some() {
                return Err(ConfigError::key(
                    "storage.postgres.password_file",
                    "give the password or its file, not both",
                ));
            }
            if pg.pool_size < 1 {
                return Err(ConfigError::key(
                    "storage.postgres.pool_size",
                    "must be at least 1",
                ));
            }
            positive("storage.postgres.connect_timeout", pg.connect_timeout)?;
        }
        positive("tokens.session_max_age", self.tokens.session_max_age)?;
        positive("tokens.jwks_refresh", self.tokens.jwks_refresh)?;
        positive("two_factor.failure_window", self.two_factor.failure_window)?;
        if self.tokens.max_sessions_per_user < 1 {
            return Err(ConfigError::key(
                "tokens.max_sessions_per_user",
                "must be at least 1",
            ));
        }
        if self.two_factor.max_pending_challenges < 1 {
            return Err(ConfigError::key(
                "two_factor.max_pending_challenges",
                "must be at least 1",
            ));
        }
        if self.two_factor.max_failures_per_account < 1 {
            return Err(ConfigError::key(
                "two_factor.max_failures_per_account",
                "must be at least 1",
            ));
        }
        if self.server.max_connections < 1 {
            return Err(ConfigError::key(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        if self.server.max_connections_per_ip < 1 {
            return Err(ConfigError::key(
                "server.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        positive(
            "server.tls_handshake_timeout",
            self.server.tls_handshake_timeout,
        )?;
        positive(
            "server.header_read_timeout",
            self.server.header_read_timeout,
        )?;
        positive("server.idle_timeout", self.server.idle_timeout)?;
        if self.server.http2_max_concurrent_streams < 1 {
            return Err(ConfigError::key(
                "server.http2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.server.max_header_bytes < 1024 {
            return Err(ConfigError::key(
                "server.max_header_bytes",
                "must be at least 1024",
            ));
        }
        if self.testing.expose_codes && !self.server.listen.ip().is_loopback() {
            return Err(ConfigError::key(
                "testing.expose_codes",
                "returns codes to any caller; it is refused unless server.listen is a loopback address",
            ));
        }
        if !(1..=128).contains(&self.limits.ipv6_prefix) {
            return Err(ConfigError::key(
                "limits.ipv6_prefix",
                "must be a prefix length from 1 to 128",
            ));
        }
        for origin in &self.server.cors_origins {
            origin_url("server.cors_origins", origin)?;
        }
        argon2::Params::new(
            self.passwords.argon2_memory_kib,
            self.passwords.argon2_iterations,
            self.passwords.argon2_parallelism,
            None,
        )
        .map_err(|e| ConfigError::key("passwords.argon2_memory_kib", e))?;
        if self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::key("storage.path", "must not be empty"));
        }
        positive("storage.sweep_interval", self.storage.sweep_interval)?;
        if let Some(recipient) = &self.storage.backup_recipient
            && recipient.trim().parse::<age::x25519::Recipient>().is_err()
        {
            return Err(ConfigError::key(
                "storage.backup_recipient",
                "must be an age X25519 recipient (age1…), as `keyhold backup-key` prints",
            ));
        }
        if self.storage.backup_keep < 1 {
            return Err(ConfigError::key(
                "storage.backup_keep",
                "must be at least 1",
            ));
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::key(
                    "tls.key_file",
                    "must be set when tls.cert_file is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::key(
                    "tls.cert_file",
                    "must be set when tls.key_file is set",
                ));
            }
            _ => {}
        }
        self.validate_mail()?;
        self.relying_party()?;
        positive("webauthn.ceremony_ttl", self.webauthn.ceremony_ttl)?;
        let p = &self.passwords;
        if !(1..=256).contains(&p.min_length) {
            return Err(ConfigError::key(
                "passwords.min_length",
                "must be between 1 and 256",
            ));
        }
        if !(1..=255).contains(&p.argon2_parallelism) {
            return Err(ConfigError::key(
                "passwords.argon2_parallelism",
                "must be between 1 and 255",
            ));
        }
        if p.argon2_iterations < 1 {
            return Err(ConfigError::key(
                "passwords.argon2_iterations",
                "must be at least 1",
            ));
        }
        if p.argon2_memory_kib < 8 * p.argon2_parallelism {
            return Err(ConfigError::key(
                "passwords.argon2_memory_kib",
                "must be at least 8 × passwords.argon2_parallelism",
            ));
        }
        positive("passwords.reset_ttl", p.reset_ttl)?;
        if p.max_concurrent_hashes == Some(0) {
            return Err(ConfigError::key(
                "passwords.max_concurrent_hashes",
                "must be at least 1",
            ));
        }
        let t = &self.tokens;
        non_empty("tokens.issuer", &t.issuer)?;
        non_empty("tokens.audience", &t.audience)?;
        positive("tokens.access_ttl", t.access_ttl)?;
        if t.refresh_ttl <= t.access_ttl {
            return Err(ConfigError::key(
                "tokens.refresh_ttl",
                "must be longer than tokens.access_ttl",
            ));
        }
        positive("two_factor.code_ttl", self.two_factor.code_ttl)?;
        non_empty("two_factor.totp_issuer", &self.two_factor.totp_issuer)?;
        if self.two_factor.totp_issuer.contains(':') {
            return Err(ConfigError::key(
                "two_factor.totp_issuer",
                "must not contain ':' (authenticator apps split on it)",
            ));
        }
        positive(
            "registration.verification_ttl",
            self.registration.verification_ttl,
        )?;
        if self.two_factor.max_attempts < 1 {
            return Err(ConfigError::key(
                "two_factor.max_attempts",
                "must be at least 1",
            ));
        }
        let g = &self.graphql;
        if g.max_body_bytes < 1024 {
            return Err(ConfigError::key(
                "graphql.max_body_bytes",
                "must be at least 1024",
            ));
        }
        for (key, value) in [
            ("graphql.max_depth", g.max_depth),
            ("graphql.max_complexity", g.max_complexity),
            ("graphql.max_batch", g.max_batch),
        ] {
            if value < 1 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        positive(
            "limits.login_failure_window",
            self.limits.login_failure_window,
        )?;
        positive("audit.retention", self.audit.retention)?;
        Ok(())
    }

    fn validate_mail(&self) -> Result<(), ConfigError> {
        let options = email_address::Options::default()
            .with_display_text()
            .with_no_minimum_sub_domains();
        email_address::EmailAddress::parse_with_options(&self.mail.from, options).map_err(|e| {
            ConfigError::key(
                "mail.from",
                format!("not an address such as \"Keyhold <no-reply@example.com>\": {e}"),
            )
        })?;
        if self.mail.max_attempts < 1 {
            return Err(ConfigError::key("mail.max_attempts", "must be at least 1"));
        }
        let smtp = &self.mail.smtp;
        if self.mail.transport == MailTransportKind::Smtp {
            match &smtp.host {
                Some(host) if !host.trim().is_empty() => {}
                _ => {
                    return Err(ConfigError::key(
                        "mail.smtp.host",
                        "must be set when mail.transport = \"smtp\"",
                    ));
                }
            }
            if smtp.port == 0 {
                return Err(ConfigError::key("mail.smtp.port", "must not be 0"));
            }
        }
        if smtp.username.is_some() != smtp.password.is_some() {
            let key = if smtp.username.is_some() {
                "mail.smtp.password"
            } else {
                "mail.smtp.username"
            };
            return Err(ConfigError::key(
                key,
                "mail.smtp.username and mail.smtp.password go together",
            ));
        }
        positive("mail.smtp.timeout", smtp.timeout)
    }

    /// Where the sled database lives.
    pub fn db_path(&self) -> PathBuf {
        self.storage.path.join("db")
    }

    /// Where a generated certificate is kept.
    pub fn generated_tls_dir(&self) -> PathBuf {
        self.storage.path.join("tls")
    }

    /// Where scheduled backups go.
    pub fn backups_dir(&self) -> PathBuf {
        self.storage.path.join("backups")
    }

    /// The key under which codes are hashed and queued mail sealed.
    pub fn keys_dir(&self) -> PathBuf {
        self.storage.path.join("keys")
    }

    /// The key file of `storage.hmac_key_file`, or its default in `keys_dir`.
    pub fn hmac_key_path(&self) -> PathBuf {
        self.storage
            .hmac_key_file
            .clone()
            .unwrap_or_else(|| self.keys_dir().join("hmac.key"))
    }

    /// The local socket the command line uses while the server runs.
    pub fn admin_socket(&self) -> PathBuf {
        self.storage.path.join("admin.sock")
    }

    /// Where the `log` mail transport writes `.eml` files.
    pub fn outbox_dir(&self) -> PathBuf {
        self.storage.path.join("outbox")
    }
}

impl Config {
    /// The WebAuthn relying party these settings describe: refused when an origin is not on
    /// the RP ID's domain (a browser would refuse every ceremony from it).
    pub fn relying_party(&self) -> Result<webauthn_rs::Webauthn, ConfigError> {
        let w = &self.webauthn;
        let rp_id = match &w.rp_id {
            Some(id) => id.trim().to_ascii_lowercase(),
            None => self
                .server
                .public_url
                .host_str()
                .unwrap_or_default()
                .to_ascii_lowercase(),
        };
        if rp_id.is_empty() || rp_id.contains(['/', ':']) {
            return Err(ConfigError::key(
                "webauthn.rp_id",
                format!("{rp_id:?} is not a domain such as \"example.com\""),
            ));
        }
        let origins = if w.origins.is_empty() {
            vec![self.server.public_url.origin().ascii_serialization()]
        } else {
            w.origins.clone()
        };
        let mut parsed = Vec::with_capacity(origins.len());
        for origin in &origins {
            let url = origin_url("webauthn.origins", origin)?;
            if url.query().is_some() {
                return Err(not_an_origin("webauthn.origins", origin));
            }
            let host = url.host_str().unwrap_or_default();
            if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
                return Err(ConfigError::key(
                    "webauthn.origins",
                    format!(
                        "{origin:?} is not on the relying party's domain {rp_id:?} \
                         (webauthn.rp_id): browsers refuse passkeys there"
                    ),
                ));
            }
            // Browsers allow WebAuthn over plain HTTP only on localhost.
            if url.scheme() == "http" && host != "localhost" {
                return Err(ConfigError::key(
                    "webauthn.origins",
                    format!("{origin:?}: passkeys need https:// (http:// only on localhost)"),
                ));
            }
            parsed.push(url);
        }
        let invalid = |e: webauthn_rs::prelude::WebauthnError| {
            ConfigError::key("webauthn.rp_id", format!("refused by WebAuthn: {e}"))
        };
        let mut builder = webauthn_rs::WebauthnBuilder::new(&rp_id, &parsed[0])
            .map_err(invalid)?
            .rp_name(&w.rp_name)
            .timeout(w.ceremony_ttl);
        for origin in &parsed[1..] {
            builder = builder.append_allowed_origin(origin);
        }
        builder.build().map_err(invalid)
    }
}

/// `text` as an origin (`https://app.example.com`, or `http://`): a scheme and a host, and
/// no path; the configuration key `key` is named when it is not one.
fn origin_url(key: &str, text: &str) -> Result<url::Url, ConfigError> {
    url::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.path() == "/")
        .filter(|_| !text.ends_with('/'))
        .ok_or_else(|| not_an_origin(key, text))
}

fn not_an_origin(key: &str, text: &str) -> ConfigError {
    ConfigError::key(
        key,
        format!("{text:?} is not an origin such as \"https://app.example.com\""),
    )
}

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::key(key, "must be longer than 0s"));
    }
    Ok(())
}

fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::key(key, "must not be empty"));
    }
    Ok(())
}

/// figment's own message puts the profile in front of the key (`default.server.listen`);
/// people write `server.listen`, so say that.
fn describe_figment_error(error: figment::Error) -> ConfigError {
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (from {s})"))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{origin}", e.kind)
            } else {
                format!("config key `{key}`: {}{origin}", e.kind)
            }
        })
        .collect();
    ConfigError(messages.join("; "))
}

/// Durations are written as `"30s"`, `"10m"`, `"2h"`, `"30d"` (anything `humantime` reads).
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration such as \"30s\", \"10m\", \"2h\" or \"30d\" ({e})"
            ))
        })
    }
}

/// A scalar as text: an environment variable such as `KEYHOLD_MAIL__SMTP__PASSWORD=1234` arrives
/// as a number, and must still be taken as the string it is.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Unsigned(u64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Unsigned(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_string))
}

fn lenient_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(lenient_string(d)?.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn an_empty_document_gives_the_contract_defaults() {
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(config.server.public_url.as_str(), "https://localhost:8443/");
        assert_eq!(config.storage.path, PathBuf::from("./data"));
        assert_eq!(config.mail.transport, MailTransportKind::Log);
        assert_eq!(config.mail.smtp.port, 587);
        assert_eq!(config.mail.smtp.security, SmtpSecurity::Starttls);
        assert_eq!(config.passwords.argon2_memory_kib, 19456);
        assert_eq!(config.passwords.reset_ttl, Duration::from_secs(1800));
        assert_eq!(config.tokens.refresh_ttl, Duration::from_secs(30 * 86400));
        assert_eq!(config.two_factor.max_attempts, 5);
        assert_eq!(config.graphql.max_body_bytes, 65536);
        assert!(config.limits.enabled);
        assert!(!config.testing.expose_codes);
    }

    #[test]
    fn the_shipped_config_toml_states_the_defaults() {
        let shipped = Config::from_toml_str(include_str!("../config.toml")).unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn passkey_origins_must_be_on_the_relying_partys_domain() {
        // Defaults: the RP ID and the origin come from server.public_url.
        assert!(Config::default().validate().is_ok());
        let ok = Config::from_toml_str(
            "[webauthn]\nrp_id = \"example.com\"\norigins = [\"https://example.com\", \"https://app.example.com:8443\"]",
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        for (toml, named) in [
            (
                "[webauthn]\nrp_id = \"example.com\"\norigins = [\"https://example.org\"]",
                "webauthn.origins",
            ),
            (
                "[webauthn]\nrp_id = \"example.com\"\norigins = [\"https://badexample.com\"]",
                "webauthn.origins",
            ),
            (
                "[webauthn]\nrp_id = \"example.com\"\norigins = [\"http://app.example.com\"]",
                "webauthn.origins",
            ),
            (
                "[webauthn]\nrp_id = \"example.com\"\norigins = [\"https://app.example.com/login\"]",
                "webauthn.origins",
            ),
            ("[webauthn]\nrp_id = \"example.com\"", "webauthn.origins"),
            (
                "[webauthn]\nrp_id = \"https://example.com\"",
                "webauthn.rp_id",
            ),
            ("[webauthn]\nceremony_ttl = \"0s\"", "webauthn.ceremony_ttl"),
        ] {
            let refused = Config::from_toml_str(toml).expect_err(toml).to_string();
            assert!(refused.contains(named), "{toml}: {refused}");
        }
    }

    #[test]
    fn durations_are_read_in_human_units() {
        let config = Config::from_toml_str(
            "[two_factor]\ncode_ttl = \"90s\"\nresend_cooldown = \"2m\"\n[tokens]\naccess_ttl = \"2h\"\nrefresh_ttl = \"7d\"",
        )
        .unwrap();
        assert_eq!(config.two_factor.code_ttl, Duration::from_secs(90));
        assert_eq!(config.two_factor.resend_cooldown, Duration::from_secs(120));
        assert_eq!(config.tokens.access_ttl, Duration::from_secs(7200));
        assert_eq!(config.tokens.refresh_ttl, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn expose_codes_is_refused_off_loopback() {
        let config = |listen: &str| {
            Config::from_toml_str(&format!(
                "[server]\nlisten = \"{listen}\"\n[testing]\nexpose_codes = true"
            ))
        };
        for listen in ["0.0.0.0:8443", "192.0.2.1:8443", "[::]:8443"] {
            let err = config(listen).unwrap_err().to_string();
            assert!(err.contains("testing.expose_codes"), "{listen}: {err}");
        }
        for listen in ["127.0.0.1:0", "[::1]:8443"] {
            config(listen).unwrap();
        }
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = Config::from_toml_str("[server]\nlisten_on = \"1.2.3.4:5\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen_on"), "{err}");
    }

    #[test]
    fn sled_is_the_default_backend_and_postgres_needs_its_url() {
        assert_eq!(Config::default().storage.backend, StorageBackend::Sled);
        let config = Config::from_toml_str("[storage]\nbackend = \"sled\"").unwrap();
        assert_eq!(config.storage.backend, StorageBackend::Sled);
        let err = Config::from_toml_str("[storage]\nbackend = \"mysql\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.backend"), "{err}");
        assert!(
            err.contains("sled") && err.contains("postgres"),
            "names what it takes: {err}"
        );
        let err = Config::from_toml_str("[storage]\nbackend = \"postgres\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.postgres.url"), "{err}");
        let config = Config::from_toml_str(
            "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"postgres://keyhold@db/keyhold\"\nsslmode = \"require\"",
        )
        .unwrap();
        assert_eq!(config.storage.postgres.sslmode, PostgresSslMode::Require);
        assert_eq!(config.storage.postgres.pool_size, 16);
        let err = Config::from_toml_str(
            "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"postgres://db/k\"\npassword = \"x\"\npassword_file = \"/p\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.postgres.password_file"), "{err}");
    }

    #[test]
    fn an_unknown_section_is_refused_by_name() {
        let err = Config::from_toml_str("[srever]\nlisten = \"1.2.3.4:5\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("srever"), "{err}");
    }

    #[test]
    fn a_bad_value_is_refused_by_key() {
        let err = Config::from_toml_str("[two_factor]\ncode_ttl = \"ten minutes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("two_factor.code_ttl"), "{err}");
        let err = Config::from_toml_str("[server]\nlisten = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
        let err = Config::from_toml_str("[mail]\ntransport = \"pigeon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mail.transport"), "{err}");
    }

    #[test]
    fn keys_that_depend_on_each_other_are_checked() {
        let err = Config::from_toml_str("[mail]\ntransport = \"smtp\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mail.smtp.host"), "{err}");
        let err = Config::from_toml_str("[tls]\ncert_file = \"a.pem\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.key_file"), "{err}");
        let err = Config::from_toml_str("[tokens]\naccess_ttl = \"40d\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokens.refresh_ttl"), "{err}");
    }

    #[test]
    fn the_smtp_password_never_shows_in_debug_output() {
        let config = Config::from_toml_str(
            "[mail.smtp]\nhost = \"smtp.example.com\"\nusername = \"robot\"\npassword = \"hunter2-very-secret\"",
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2-very-secret"), "{debug}");
        assert_eq!(
            config.mail.smtp.password.as_ref().unwrap().expose_secret(),
            "hunter2-very-secret"
        );
    }

    #[test]
    fn a_numeric_password_is_still_a_string() {
        let config = Config::from_toml_str(
            "[mail.smtp]\nhost = \"smtp.example.com\"\nusername = 42\npassword = 123456",
        )
        .unwrap();
        assert_eq!(config.mail.smtp.username.as_deref(), Some("42"));
        assert_eq!(
            config.mail.smtp.password.as_ref().unwrap().expose_secret(),
            "123456"
        );
    }
}
