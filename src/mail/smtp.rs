use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Message;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use tokio_rustls::TlsConnector;

use super::{Envelope, MailError, Transport};
use crate::config::{ConfigError, SmtpConfig, SmtpSecurity};

/// The `smtp` transport: one connection per message through mail-send, with STARTTLS,
/// implicit TLS, or (for a relay on the same host) none; optional login.
pub struct SmtpTransport {
    host: String,
    port: u16,
    security: SmtpSecurity,
    credentials: Option<(String, SecretString)>,
    timeout: Duration,
    tls: TlsConnector,
}

impl SmtpTransport {
    pub fn from_config(config: &SmtpConfig) -> Result<SmtpTransport, ConfigError> {
        let host = config.host.clone().ok_or_else(|| {
            ConfigError::key("mail.smtp.host", "must be set for the smtp transport")
        })?;
        let tls = match &config.ca_file {
            Some(path) => connector_trusting(path)?,
            None => {
                crate::tls::install_crypto_provider();
                mail_send::smtp::tls::build_tls_connector(false).map_err(|e| {
                    ConfigError::key("mail.smtp.security", format!("no TLS roots: {e}"))
                })?
            }
        };
        Ok(SmtpTransport {
            host,
            port: config.port,
            security: config.security,
            credentials: config.username.clone().zip(config.password.clone()),
            timeout: config.timeout,
            tls,
        })
    }

    async fn send(&self, envelope: &Envelope<'_>) -> Result<(), mail_send::Error> {
        let mut builder = SmtpClientBuilder::new_with_tls_connector(
            self.host.as_str(),
            self.port,
            self.tls.clone(),
        )
        .implicit_tls(self.security == SmtpSecurity::Tls)
        .timeout(self.timeout);
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials((user.as_str(), password.expose_secret()));
        }
        let message = Message::new(envelope.from, [envelope.to], envelope.message);
        match self.security {
            SmtpSecurity::None => {
                let mut client = builder.connect_plain().await?;
                client.send(message).await?;
                // The message is accepted once DATA is answered; a failed QUIT changes nothing.
                let _ = client.quit().await;
            }
            SmtpSecurity::Starttls | SmtpSecurity::Tls => {
                let mut client = builder.connect().await?;
                client.send(message).await?;
                let _ = client.quit().await;
            }
        }
        Ok(())
    }
}

/// A TLS client that trusts exactly the certificates in `path`.
fn connector_trusting(path: &Path) -> Result<TlsConnector, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read mail.smtp.ca_file: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ConfigError::file(path, format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ConfigError::file(path, format!("not a usable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ConfigError::file(path, "holds no PEM certificate"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::file(path, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[async_trait]
impl Transport for SmtpTransport {
    async fn deliver(&self, envelope: &Envelope<'_>) -> Result<(), MailError> {
        self.send(envelope)
            .await
            .map_err(|e| MailError::Transport(format!("SMTP {}:{}: {e}", self.host, self.port)))?;
        tracing::info!(
            to = envelope.to,
            subject = envelope.subject,
            "mail sent over SMTP"
        );
        Ok(())
    }
}
