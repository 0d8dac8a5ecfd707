use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use async_trait::async_trait;

use super::{Envelope, MailError, Transport};

/// The `log` transport: each message becomes an `.eml` file in the outbox folder (readable
/// by this user only, since messages carry codes), and a log line says so with the recipient
/// and subject, never the body.
///
/// The outbox holds at most `max_files` messages (`mail.max_queued`): past it a message is
/// refused with [`MailError::OutboxFull`] and dropped, not retried.
pub struct LogTransport {
    dir: PathBuf,
    max_files: usize,
}

impl LogTransport {
    pub fn new(dir: PathBuf, max_files: usize) -> LogTransport {
        LogTransport { dir, max_files }
    }
}

/// The `.eml` files in `dir` (none when it does not exist yet).
fn messages_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

#[async_trait]
impl Transport for LogTransport {
    async fn deliver(&self, envelope: &Envelope<'_>) -> Result<(), MailError> {
        let dir = self.dir.clone();
        // v7 ids sort by time, so `ls` lists the outbox oldest first.
        let path = dir.join(format!("{}.eml", uuid::Uuid::now_v7()));
        let message = envelope.message.to_vec();
        let target = path.clone();
        let max_files = self.max_files;
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            if messages_in(&dir) >= max_files {
                return Ok(false);
            }
            crate::files::create_private_dir(&dir).map_err(std::io::Error::other)?;
            let tmp = target.with_extension("tmp");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&message)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            Ok(true)
        })
        .await
        .map_err(|e| MailError::Transport(e.to_string()))?
        .map_err(|e| MailError::Transport(format!("cannot write {}: {e}", path.display())))?;
        if !written {
            return Err(MailError::OutboxFull(self.max_files));
        }
        tracing::info!(
            to = envelope.to,
            subject = envelope.subject,
            file = %path.display(),
            "mail written to the outbox (mail.transport = \"log\")"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_outbox_refuses_the_next_message() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = LogTransport::new(dir.path().join("outbox"), 2);
        let envelope = Envelope {
            from: "keyhold@localhost",
            to: "ada@example.com",
            subject: "Hello",
            message: b"Subject: Hello\r\n\r\nHi",
        };
        outbox.deliver(&envelope).await.unwrap();
        outbox.deliver(&envelope).await.unwrap();
        let third = outbox.deliver(&envelope).await.unwrap_err();
        assert!(matches!(third, MailError::OutboxFull(2)), "{third}");
        assert_eq!(messages_in(&dir.path().join("outbox")), 2);
    }
}
