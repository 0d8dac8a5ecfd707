//! Opening the PostgreSQL store: the connection settings, TLS (rustls), the pool, and the
//! migrations, which run before the store is handed out.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::{PostgresConfig, PostgresSslMode};

use super::Store;

/// Why the PostgreSQL store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("storage.postgres.url: {0}")]
    Url(String),
    #[error("storage.postgres.password_file {path}: {source}")]
    PasswordFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("storage.postgres.ca_file {path}: {what}")]
    CaFile {
        path: std::path::PathBuf,
        what: String,
    },
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(String),
    #[error(
        "the database's schema is version {found}, but this Keyhold knows version {known} at most: run a newer Keyhold"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("migrating the database schema: {0}")]
    Migrate(String),
}

/// The connection settings of `config`, with the password from where it is kept.
fn settings(config: &PostgresConfig) -> Result<tokio_postgres::Config, OpenError> {
    let url = config.url.as_deref().unwrap_or_default();
    let mut pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        // The parser's message never repeats the URL, so no password in it is shown.
        OpenError::Url(e.to_string())
    })?;
    if let Some(password) = &config.password {
        pg.password(password.expose_secret());
    }
    if let Some(path) = &config.password_file {
        let text = std::fs::read_to_string(path).map_err(|source| OpenError::PasswordFile {
            path: path.clone(),
            source,
        })?;
        pg.password(text.lines().next().unwrap_or_default());
    }
    pg.connect_timeout(config.connect_timeout);
    // A database that vanished from the network (no reset, no answer) fails a request after
    // this long instead of holding it until the kernel gives up, minutes later.
    pg.tcp_user_timeout(config.connect_timeout);
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(30));
    // A row held locked by a stuck transaction elsewhere fails the request that waits for
    // it after connect_timeout too, and no statement runs for more than a minute; options
    // the URL gives are kept, after these, so that they win.
    let limits = format!(
        "-c lock_timeout={}ms -c statement_timeout=60s -c idle_in_transaction_session_timeout=60s",
        config.connect_timeout.as_millis()
    );
    let options = match pg.get_options() {
        Some(given) => format!("{limits} {given}"),
        None => limits,
    };
    pg.options(options);
    pg.application_name("keyhold");
    pg.ssl_mode(match config.sslmode {
        PostgresSslMode::Disable => tokio_postgres::config::SslMode::Disable,
        PostgresSslMode::Require | PostgresSslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok(pg)
}

/// The rustls client configuration of `config`'s `sslmode`.
fn tls(config: &PostgresConfig) -> Result<rustls::ClientConfig, OpenError> {
    crate::tls::install_crypto_provider();
    let builder = rustls::ClientConfig::builder();
    let client = match config.sslmode {
        // Encrypted, but to whoever answers: what libpq's `require` does.
        PostgresSslMode::Disable | PostgresSslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer::new()))
            .with_no_client_auth(),
        PostgresSslMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match &config.ca_file {
                Some(path) => {
                    use rustls::pki_types::pem::PemObject;
                    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| OpenError::CaFile {
                            path: path.clone(),
                            what: e.to_string(),
                        })?;
                    for cert in certs {
                        roots.add(cert).map_err(|e| OpenError::CaFile {
                            path: path.clone(),
                            what: e.to_string(),
                        })?;
                    }
                }
                None => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        // A system root rustls cannot use is no root of this server's.
                        let _ = roots.add(cert);
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(client)
}

/// Opens the pool, checks that the database answers, and brings its schema up to date.
pub async fn open(
    config: &PostgresConfig,
    limits: &crate::config::LimitsConfig,
) -> Result<Store, OpenError> {
    let settings = settings(config)?;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls(config)?);
    let manager = deadpool_postgres::Manager::from_config(
        settings,
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let wait = config.connect_timeout;
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| OpenError::Connect(e.to_string()))?;
    let store = Store {
        pool,
        readers: Arc::new(super::Readers::for_pool(config.pool_size)),
        limits: Arc::new(crate::limits::Limits::new(limits)),
    };
    super::migrate::migrate(&store).await?;
    Ok(store)
}

/// Accepts any server certificate: `sslmode = "require"`, which encrypts without knowing
/// whom to. The handshake's signatures are still checked.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl AnyServer {
    fn new() -> AnyServer {
        AnyServer(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url() -> PostgresConfig {
        PostgresConfig {
            url: Some("postgres://keyhold@db.internal:5433/keyhold".into()),
            ..PostgresConfig::default()
        }
    }

    #[test]
    fn the_password_comes_from_its_file_or_the_setting_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg-password");
        std::fs::write(&file, "s3cret-from-file\nignored second line\n").unwrap();
        let mut config = with_url();
        config.password_file = Some(file);
        let pg = settings(&config).unwrap();
        assert_eq!(pg.get_password(), Some(b"s3cret-from-file".as_slice()));
        assert_eq!(pg.get_user(), Some("keyhold"));
        assert_eq!(pg.get_dbname(), Some("keyhold"));
        assert!(!format!("{pg:?}").contains("s3cret"), "redacted: {pg:?}");

        let mut config = with_url();
        config.password = Some("s3cret-setting".to_string().into());
        let pg = settings(&config).unwrap();
        assert_eq!(pg.get_password(), Some(b"s3cret-setting".as_slice()));
        assert_eq!(pg.get_connect_timeout(), Some(&config.connect_timeout));
        assert!(
            pg.get_options()
                .is_some_and(|o| o.contains("lock_timeout=5000ms")),
            "{:?}",
            pg.get_options()
        );
    }

    #[test]
    fn a_missing_password_file_or_a_bad_url_is_a_clear_error() {
        let mut config = with_url();
        config.password_file = Some("/nonexistent/pg-password".into());
        let err = settings(&config).unwrap_err().to_string();
        assert!(err.contains("storage.postgres.password_file"), "{err}");
        let config = PostgresConfig {
            url: Some("postgres://keyhold:hunter2@db:notaport/keyhold".into()),
            ..PostgresConfig::default()
        };
        let err = settings(&config).unwrap_err().to_string();
        assert!(err.contains("storage.postgres.url"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "no password in the message: {err}"
        );
    }
}
