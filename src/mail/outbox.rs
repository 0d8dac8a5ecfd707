use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use async_trait::async_trait;

use super::{Envelope, MailError, Transport};

/// The `log` transport: each message becomes an `.eml` file in the outbox folder (readable
/// by this user only, since messages carry codes), and a log line says so with the recipient
/// and subject, never the body.
pub struct LogTransport {
    dir: PathBuf,
}

impl LogTransport {
    pub fn new(dir: PathBuf) -> LogTransport {
        LogTransport { dir }
    }
}

#[async_trait]
impl Transport for LogTransport {
    async fn deliver(&self, envelope: &Envelope<'_>) -> Result<(), MailError> {
        let dir = self.dir.clone();
        // v7 ids sort by time, so `ls` lists the outbox oldest first.
        let path = dir.join(format!("{}.eml", uuid::Uuid::now_v7()));
        let message = envelope.message.to_vec();
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            crate::store::create_private_dir(&dir).map_err(std::io::Error::other)?;
            let tmp = target.with_extension("tmp");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&message)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &target)
        })
        .await
        .map_err(|e| MailError::Transport(e.to_string()))?
        .map_err(|e| MailError::Transport(format!("cannot write {}: {e}", path.display())))?;
        tracing::info!(
            to = envelope.to,
            subject = envelope.subject,
            file = %path.display(),
            "mail written to the outbox (mail.transport = \"log\")"
        );
        Ok(())
    }
}
