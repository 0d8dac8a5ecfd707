use std::time::Duration;

use async_trait::async_trait;
use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Message;
use secrecy::{ExposeSecret, SecretString};

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
}

impl SmtpTransport {
    pub fn from_config(config: &SmtpConfig) -> Result<SmtpTransport, ConfigError> {
        let host = config.host.clone().ok_or_else(|| {
            ConfigError::key("mail.smtp.host", "must be set for the smtp transport")
        })?;
        Ok(SmtpTransport {
            host,
            port: config.port,
            security: config.security,
            credentials: config.username.clone().zip(config.password.clone()),
            timeout: config.timeout,
        })
    }

    async fn send(&self, envelope: &Envelope<'_>) -> Result<(), mail_send::Error> {
        let mut builder = SmtpClientBuilder::new(self.host.as_str(), self.port)
            .map_err(|_| mail_send::Error::InvalidTLSName)?
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
