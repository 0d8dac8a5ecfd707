//! A real SMTP server on loopback that keeps every message it is given: enough of RFC 5321
//! for mail-send's plain connection (EHLO, MAIL, RCPT, DATA with dot-stuffing, RSET, QUIT).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One delivered message.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
}

impl ReceivedMail {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a message that parses")
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_string()
    }

    pub fn text(&self) -> String {
        self.parsed()
            .body_text(0)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    pub fn html(&self) -> String {
        self.parsed()
            .body_html(0)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }
}

/// The messages the sink has taken, in order of arrival.
#[derive(Clone, Default)]
pub struct Mailbox {
    messages: Arc<Mutex<Vec<ReceivedMail>>>,
    arrived: Arc<Notify>,
}

impl Mailbox {
    pub fn all(&self) -> Vec<ReceivedMail> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (at most 10 s of real time: delivery is real I/O) for the first message to `to`.
    pub async fn wait_for(&self, to: &str) -> ReceivedMail {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            if let Some(mail) = self
                .all()
                .into_iter()
                .find(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            {
                return mail;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no message to {to} arrived");
            }
        }
    }

    fn push(&self, mail: ReceivedMail) {
        self.messages.lock().unwrap().push(mail);
        self.arrived.notify_waiters();
    }
}

pub struct SmtpSink {
    pub port: u16,
    pub mailbox: Mailbox,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mailbox = Mailbox::default();
        let inbox = mailbox.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    let _ = session(socket, inbox).await;
                });
            }
        });
        SmtpSink {
            port,
            mailbox,
            task,
        }
    }
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.find('>').unwrap_or(arg.len());
    arg[start..end].to_string()
}

async fn session(socket: tokio::net::TcpStream, inbox: Mailbox) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP ready\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => write.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?,
            "HELO" | "NOOP" => write.write_all(b"250 OK\r\n").await?,
            "RSET" => {
                (from, to) = (String::new(), Vec::new());
                write.write_all(b"250 OK\r\n").await?;
            }
            "MAIL" => {
                from = address(&command);
                write.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => {
                to.push(address(&command));
                write.write_all(b"250 OK\r\n").await?;
            }
            "DATA" => {
                write.write_all(b"354 end with .\r\n").await?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').filter(|_| line.starts_with(".."));
                    data.extend_from_slice(unstuffed.unwrap_or(&line).as_bytes());
                }
                inbox.push(ReceivedMail {
                    mail_from: std::mem::take(&mut from),
                    rcpt_to: std::mem::take(&mut to),
                    data,
                });
                write.write_all(b"250 OK queued\r\n").await?;
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"502 not implemented\r\n").await?,
        }
    }
}
