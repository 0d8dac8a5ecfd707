//! Outgoing mail: templates rendered to a message, and a transport that delivers it
//! (SMTP through mail-send, or the `log` transport that writes an outbox folder).

mod backlog;
mod outbox;
mod smtp;
mod templates;

use std::sync::Arc;

use async_trait::async_trait;

pub use backlog::MailBacklog;
pub use outbox::LogTransport;
pub use smtp::SmtpTransport;
pub use templates::{Template, Templates};

use crate::clock::Clock;
use crate::config::{Config, ConfigError, MailTransportKind};

/// Why a message could not be rendered or delivered.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail template {name}: {message}")]
    Template { name: String, message: String },
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("cannot deliver the message: {0}")]
    Transport(String),
    #[error("the outbox already holds {0} messages (mail.max_queued)")]
    OutboxFull(usize),
}

/// A rendered message, ready to send.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

impl std::fmt::Debug for OutgoingMail {
    // The bodies carry codes and links: keep them out of any debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// The envelope and the finished RFC 5322 bytes of one message.
pub struct Envelope<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub message: &'a [u8],
}

/// Moves a finished message somewhere.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn deliver(&self, envelope: &Envelope<'_>) -> Result<(), MailError>;
}

/// The transport `mail.transport` names.
pub fn transport_from_config(config: &Config) -> Result<Arc<dyn Transport>, ConfigError> {
    Ok(match config.mail.transport {
        MailTransportKind::Log => Arc::new(LogTransport::new(
            config.outbox_dir(),
            config.mail.max_queued,
        )),
        MailTransportKind::Smtp => Arc::new(SmtpTransport::from_config(&config.mail.smtp)?),
    })
}

/// Renders templates and hands the messages to the configured transport.
#[derive(Clone)]
pub struct Mailer {
    from_name: Option<String>,
    from_address: String,
    transport: Arc<dyn Transport>,
    templates: Arc<Templates>,
    clock: Clock,
}

impl Mailer {
    /// The mailer `mail.*` describes.
    pub fn from_config(config: &Config, clock: Clock) -> Result<Mailer, ConfigError> {
        Self::with_transport(config, clock, transport_from_config(config)?)
    }

    /// The mailer `mail.*` describes, but handing messages to `transport`.
    pub fn with_transport(
        config: &Config,
        clock: Clock,
        transport: Arc<dyn Transport>,
    ) -> Result<Mailer, ConfigError> {
        let templates = Templates::load(config.mail.templates_dir.as_deref())?;
        Ok(Mailer::new(&config.mail.from, transport, templates, clock))
    }

    /// `from` is `Name <address>` or a bare address (already validated by the config).
    pub fn new(
        from: &str,
        transport: Arc<dyn Transport>,
        templates: Templates,
        clock: Clock,
    ) -> Mailer {
        let (from_name, from_address) = split_mailbox(from);
        Mailer {
            from_name,
            from_address,
            transport,
            templates: Arc::new(templates),
            clock,
        }
    }

    /// Renders `template` for `to` with the values in `context`.
    pub fn render(
        &self,
        to: &str,
        template: Template,
        context: minijinja::Value,
    ) -> Result<OutgoingMail, MailError> {
        let (subject, text, html) = self.templates.render(template, context)?;
        Ok(OutgoingMail {
            to: to.to_string(),
            subject,
            text,
            html: Some(html),
        })
    }

    /// Builds the message and delivers it.
    pub async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = self.build(mail)?;
        self.transport
            .deliver(&Envelope {
                from: &self.from_address,
                to: &mail.to,
                subject: &mail.subject,
                message: &message,
            })
            .await
    }

    /// The RFC 5322 bytes of `mail`, dated by Keyhold's clock.
    pub fn build(&self, mail: &OutgoingMail) -> Result<Vec<u8>, MailError> {
        use mail_send::mail_builder::MessageBuilder;
        let from = match &self.from_name {
            Some(name) => MessageBuilder::new().from((name.as_str(), self.from_address.as_str())),
            None => MessageBuilder::new().from(self.from_address.as_str()),
        };
        let mut builder = from
            .to(mail.to.as_str())
            .subject(mail.subject.as_str())
            .date(self.clock.unix_seconds())
            .text_body(mail.text.as_str());
        if let Some(html) = &mail.html {
            builder = builder.html_body(html.as_str());
        }
        builder
            .write_to_vec()
            .map_err(|e| MailError::Build(e.to_string()))
    }
}

/// `Keyhold <no-reply@example.com>` → (`Keyhold`, `no-reply@example.com`).
fn split_mailbox(from: &str) -> (Option<String>, String) {
    match (from.find('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => {
            let name = from[..open].trim().trim_matches('"').trim();
            let address = from[open + 1..close].trim().to_string();
            ((!name.is_empty()).then(|| name.to_string()), address)
        }
        _ => (None, from.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_splits_into_name_and_address() {
        assert_eq!(
            split_mailbox("Keyhold <no-reply@localhost>"),
            (Some("Keyhold".into()), "no-reply@localhost".into())
        );
        assert_eq!(
            split_mailbox("\"Ops Team\" <ops@example.com>"),
            (Some("Ops Team".into()), "ops@example.com".into())
        );
        assert_eq!(
            split_mailbox("ops@example.com"),
            (None, "ops@example.com".into())
        );
    }
}
