//! A real SMTP server on loopback that keeps every message it is given: enough of RFC 5321
//! for mail-send (EHLO, STARTTLS, MAIL, RCPT, DATA with dot-stuffing, RSET, QUIT), in plain
//! text, with STARTTLS, or with TLS from the first byte.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
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

    /// The `Date:` header, in Unix seconds: Keyhold dates mail by its own clock.
    pub fn date(&self) -> i64 {
        self.parsed().date().map_or(0, |d| d.to_timestamp())
    }

    /// The six-digit code standing alone on a line of the text body.
    pub fn six_digit_code(&self) -> String {
        self.as_message()
            .six_digit_code()
            .expect("a six-digit code")
    }

    /// The long code of a `?code=` link in the text body.
    pub fn link_code(&self) -> String {
        self.as_message().link_code().expect("a link with a code")
    }

    /// The same message as `keyhold::testing` captures it, whose helpers read the codes.
    fn as_message(&self) -> keyhold::testing::Message {
        keyhold::testing::Message {
            to: self.rcpt_to.first().cloned().unwrap_or_default(),
            subject: self.subject(),
            text: self.text(),
            html: self.html(),
        }
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
        self.wait_for_where(to, |_| true).await
    }

    /// Waits for the first message to `to` whose subject contains `subject`.
    pub async fn wait_for_subject(&self, to: &str, subject: &str) -> ReceivedMail {
        self.wait_for_where(to, |m| m.subject().contains(subject))
            .await
    }

    /// Waits for the `n`th (1-based) message to `to` whose subject contains `subject`.
    pub async fn wait_for_nth(&self, to: &str, subject: &str, n: usize) -> ReceivedMail {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            let matching: Vec<_> = self
                .to(to)
                .into_iter()
                .filter(|m| m.subject().contains(subject))
                .collect();
            if matching.len() >= n {
                return matching[n - 1].clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("message {n} to {to} about {subject:?} did not arrive");
            }
        }
    }

    /// Every message to `to`.
    pub fn to(&self, to: &str) -> Vec<ReceivedMail> {
        self.all()
            .into_iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            .collect()
    }

    pub async fn wait_for_where(
        &self,
        to: &str,
        matches: impl Fn(&ReceivedMail) -> bool,
    ) -> ReceivedMail {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            if let Some(mail) = self.to(to).into_iter().find(|m| matches(m)) {
                return mail;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no matching message to {to} arrived; got {:?}",
                    self.to(to)
                        .iter()
                        .map(ReceivedMail::subject)
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    fn push(&self, mail: ReceivedMail) {
        self.messages.lock().unwrap().push(mail);
        self.arrived.notify_waiters();
    }
}

/// How the sink speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkTls {
    /// Plain text throughout.
    None,
    /// Plain, offering STARTTLS.
    StartTls,
    /// TLS from the first byte.
    Implicit,
}

pub struct SmtpSink {
    pub port: u16,
    pub mailbox: Mailbox,
    /// The sink's certificate (for 127.0.0.1), for clients to trust.
    pub certificate_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        Self::start_with(SinkTls::None).await
    }

    pub async fn start_with(mode: SinkTls) -> SmtpSink {
        Self::start_on(mode, 0).await
    }

    /// A sink on a given loopback port (0: any free one).
    pub async fn start_on(mode: SinkTls, port: u16) -> SmtpSink {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let certificate_pem = made.cert.pem();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mailbox = Mailbox::default();
        let inbox = mailbox.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let inbox = inbox.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = match mode {
                        SinkTls::Implicit => match acceptor.accept(socket).await {
                            Ok(tls) => session(tls, inbox, None).await,
                            Err(_) => Ok(()),
                        },
                        SinkTls::StartTls => session(socket, inbox, Some(acceptor)).await,
                        SinkTls::None => session(socket, inbox, None).await,
                    };
                });
            }
        });
        SmtpSink {
            port,
            mailbox,
            certificate_pem,
            task,
        }
    }
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.find('>').unwrap_or(arg.len());
    arg[start..end].to_string()
}

/// One SMTP conversation. With `starttls`, EHLO offers STARTTLS and the conversation goes on
/// over TLS after it.
async fn session<S>(
    stream: S,
    inbox: Mailbox,
    starttls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut conn = BufReader::new(stream);
    conn.get_mut()
        .write_all(b"220 sink ESMTP ready\r\n")
        .await?;
    match converse(&mut conn, &inbox, starttls.is_some()).await? {
        Next::Closed => Ok(()),
        Next::StartTls => {
            let Some(acceptor) = starttls else {
                return Ok(());
            };
            let tls = acceptor.accept(conn.into_inner()).await?;
            let mut conn = BufReader::new(tls);
            converse(&mut conn, &inbox, false).await.map(|_| ())
        }
    }
}

enum Next {
    Closed,
    StartTls,
}

async fn converse<S>(
    conn: &mut BufReader<S>,
    inbox: &Mailbox,
    offer_starttls: bool,
) -> std::io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(Next::Closed);
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if offer_starttls => b"250-sink\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
            "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
            "STARTTLS" if offer_starttls => {
                conn.get_mut().write_all(b"220 go ahead\r\n").await?;
                return Ok(Next::StartTls);
            }
            "HELO" | "NOOP" => b"250 OK\r\n",
            "RSET" => {
                (from, to) = (String::new(), Vec::new());
                b"250 OK\r\n"
            }
            "MAIL" => {
                from = address(&command);
                b"250 OK\r\n"
            }
            "RCPT" => {
                to.push(address(&command));
                b"250 OK\r\n"
            }
            "DATA" => {
                conn.get_mut().write_all(b"354 end with .\r\n").await?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if conn.read_line(&mut line).await? == 0 {
                        return Ok(Next::Closed);
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
                b"250 OK queued\r\n"
            }
            "QUIT" => {
                conn.get_mut().write_all(b"221 bye\r\n").await?;
                return Ok(Next::Closed);
            }
            _ => b"502 not implemented\r\n",
        };
        conn.get_mut().write_all(reply).await?;
    }
}
