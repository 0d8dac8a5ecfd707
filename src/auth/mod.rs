//! The use cases: accounts, sign-in and second factor, tokens, passwords. Nothing here knows
//! GraphQL or HTTP; resolvers call one function here and map its error.

pub mod accounts;
pub mod audit;
pub mod challenge;
pub mod factors;
pub use crate::limits;
pub mod operators;
pub mod passkey_login;
pub mod passkeys;
pub mod password_change;
pub mod passwords;
pub mod secrets;
pub mod sessions;
pub mod step_up;
pub mod tokens;
pub mod two_factor;
pub mod two_factor_settings;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::clock::{Clock, iso8601};
use crate::config::Config;
use base64::Engine;
use tokio::sync::Notify;

use crate::domain::records::{AccountState, UserRecord};
use crate::domain::records::{MailQueueRecord, QueuedMail};
use crate::mail::{Mailer, OutgoingMail, Template};
use crate::store::{Changed, Storage};

pub use passkeys::PasskeyChallenge;
pub use password_change::ChangeOutcome;
pub use passwords::PasswordHasher;
pub use secrets::Secrets;
pub use sessions::{DeviceInput, LogoutTarget, SignedIn};
pub use tokens::Tokens;
pub use two_factor::{CodeSent, Enabled, LoginOutcome, PendingSignIn, StepUpReason};

/// Everything the use cases need, shared by every request.
pub struct Auth {
    pub config: Arc<Config>,
    pub store: Arc<dyn Storage>,
    pub clock: Clock,
    pub mailer: Mailer,
    pub passwords: PasswordHasher,
    pub tokens: Tokens,
    pub secrets: Secrets,
    /// Background work (forgotten-password requests) that shutdown waits for.
    pub tasks: TaskTracker,
    /// Woken when mail is queued.
    pub mail_ready: Arc<Notify>,
    /// Messages in the mail queue: counted up as they are queued, and set to the stored
    /// count by the mail worker at each pass (so what a failed change queued is forgotten).
    pub mail_backlog: crate::mail::MailBacklog,
    /// What `GET /metrics` reports.
    pub metrics: crate::metrics::Metrics,
    /// The WebAuthn relying party (`webauthn.*`), for passkeys.
    pub webauthn: webauthn_rs::Webauthn,
    /// When each session was last used, kept in memory so that a request does not write.
    last_seen: Mutex<HashMap<Uuid, i64>>,
}

/// The label queued mail is sealed under.
const MAIL_LABEL: &[u8] = b"mail-queue";

/// A signed-in caller, proven by a valid access token of a live device session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

/// Where a request came from, as the transport saw it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl Auth {
    pub async fn new(
        config: Arc<Config>,
        store: Arc<dyn Storage>,
        clock: Clock,
        mailer: Mailer,
    ) -> anyhow::Result<Auth> {
        let passwords = PasswordHasher::new(&config.passwords)?;
        Self::with_hasher(config, store, clock, mailer, passwords).await
    }

    /// As `new`, with a password hasher made beforehand (start-up makes it while the store
    /// opens).
    pub async fn with_hasher(
        config: Arc<Config>,
        store: Arc<dyn Storage>,
        clock: Clock,
        mailer: Mailer,
        passwords: PasswordHasher,
    ) -> anyhow::Result<Auth> {
        let secrets = Secrets::load_or_create_file(&config.hmac_key_path())?;
        check_key(&*store, &secrets, &config).await?;
        let tokens =
            Tokens::load_or_create(&*store, &config.tokens, &secrets, clock.unix_seconds()).await?;
        let mail_backlog = crate::mail::MailBacklog::new(store.mail_queue_len().await?);
        let webauthn = config.relying_party()?;
        Ok(Auth {
            webauthn,
            mail_backlog,
            config,
            store,
            clock,
            mailer,
            passwords,
            tokens,
            secrets,
            tasks: TaskTracker::new(),
            mail_ready: Arc::new(Notify::new()),
            metrics: crate::metrics::Metrics::new(),
            last_seen: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.unix_seconds()
    }

    /// Counts one event of `limit` for the client's IP (`RATE_LIMITED` when over).
    pub async fn limit_ip(
        &self,
        limit: limits::Limit,
        ip: Option<IpAddr>,
    ) -> crate::error::Result<()> {
        match self.hit_network(limit, ip, self.now()).await? {
            Ok(()) => Ok(()),
            Err(refused) => {
                let who = audit::Subject {
                    ip,
                    ..audit::Subject::default()
                };
                Err(self.rate_limited(refused, who, &format!("{limit:?}")).await)
            }
        }
    }

    /// Counts one event of `limit` for the client's network (see
    /// [`limits::client_network`]), if the transport knew its address.
    pub(crate) async fn hit_network(
        &self,
        limit: limits::Limit,
        ip: Option<IpAddr>,
        now: i64,
    ) -> crate::error::Result<std::result::Result<(), limits::Refused>> {
        let Some(ip) = ip else {
            return Ok(Ok(()));
        };
        let network = limits::client_network(ip, self.config.limits.ipv6_prefix);
        Ok(self
            .store
            .hit_limit(limit, &network.to_string(), now)
            .await?)
    }

    /// Counts one event of `limit` for an address.
    pub async fn limit_address(
        &self,
        limit: limits::Limit,
        email: &str,
    ) -> crate::error::Result<()> {
        match self.store.hit_limit(limit, email, self.now()).await? {
            Ok(()) => Ok(()),
            Err(refused) => {
                let who = audit::Subject {
                    email: Some(email),
                    ..audit::Subject::default()
                };
                Err(self.rate_limited(refused, who, &format!("{limit:?}")).await)
            }
        }
    }

    /// A refusal of the limiter: counted every time, audited once per key and window (a
    /// flood of refusals writes one record, not one each).
    pub(crate) async fn rate_limited(
        &self,
        refused: limits::Refused,
        who: audit::Subject<'_>,
        limit: &str,
    ) -> crate::error::Error {
        if refused.first_in_window {
            self.audit(audit::Event::RateLimited, who, limit).await;
        } else {
            self.metrics
                .count("keyhold_rate_limited_total", &[("limit", limit)]);
        }
        refused.error
    }

    /// `ACTIVE`, `UNVERIFIED` or `DISABLED`.
    pub fn user_status(&self, user: &UserRecord) -> &'static str {
        match user.state {
            AccountState::Disabled => "DISABLED",
            AccountState::Active
                if !user.email_verified && self.config.registration.require_email_verification =>
            {
                "UNVERIFIED"
            }
            AccountState::Active => "ACTIVE",
        }
    }

    /// A page under `server.public_url`.
    pub(crate) fn page(&self, path: &str) -> url::Url {
        let mut url = self.config.server.public_url.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{path}"));
        url.set_query(None);
        url
    }

    /// A link under `server.public_url` carrying a code: `path?code=…`.
    pub(crate) fn link(&self, path: &str, code: &str) -> String {
        let mut url = self.page(path);
        url.query_pairs_mut().append_pair("code", code);
        url.to_string()
    }

    /// Renders a message and seals it for the mail queue. It is queued by the store
    /// operation it is handed to, in the same transaction as the change that causes it; the
    /// worker sends it after the answer, so an answer never waits on SMTP.
    ///
    /// `None` when the queue already holds `mail.max_queued` messages: the message is
    /// dropped (logged, and counted in `keyhold_mail_refused_total`) and the change that
    /// caused it goes ahead without it.
    pub(crate) fn queue_mail(
        &self,
        to: &str,
        template: Template,
        context: minijinja::Value,
    ) -> Result<Option<MailQueueRecord>, crate::error::Error> {
        let max = self.config.mail.max_queued;
        if !self.mail_backlog.reserve(max) {
            tracing::error!(
                template = template.name(),
                max_queued = max,
                "the mail queue is full (mail.max_queued); a message was dropped"
            );
            self.metrics
                .count("keyhold_mail_refused_total", &[("reason", "queue_full")]);
            return Ok(None);
        }
        let mail = self
            .mailer
            .render(to, template, context)
            .map_err(crate::error::Error::internal)?;
        let plain = serde_json::to_vec(&mail).map_err(crate::error::Error::internal)?;
        let now = self.now();
        Ok(Some(MailQueueRecord {
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            sealed: base64::engine::general_purpose::STANDARD
                .encode(self.secrets.seal(MAIL_LABEL, &plain)),
        }))
    }

    /// Gives back the place in the queue of a message made but not stored (a change that
    /// took another branch), before the mail worker's next count would.
    pub(crate) fn not_queued(&self, mail: &Option<MailQueueRecord>) {
        if mail.is_some() {
            self.mail_backlog.release(1);
        }
    }

    /// Like [`Auth::not_queued`], for several messages.
    pub(crate) fn none_queued(&self, mail: &[MailQueueRecord]) {
        self.mail_backlog.release(mail.len());
    }

    /// Tells the mail worker that something was queued.
    pub(crate) fn mail_queued(&self) {
        self.mail_ready.notify_one();
    }

    /// The message inside a queue entry; `None` if it cannot be read (altered, or sealed
    /// under another key).
    pub fn open_mail(&self, queued: &QueuedMail) -> Option<OutgoingMail> {
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&queued.record.sealed)
            .ok()?;
        let plain = self.secrets.open(MAIL_LABEL, &sealed)?;
        serde_json::from_slice(&plain).ok()
    }

    pub(crate) fn touch(&self, session_id: Uuid, now: i64) {
        self.last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session_id, now);
    }

    pub(crate) fn last_seen(&self, session_id: Uuid) -> Option<i64> {
        self.last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&session_id)
            .copied()
    }

    /// The account as a change left it (forgetting the sessions it ended), or why the change
    /// was not written.
    pub(crate) fn changed<T>(
        &self,
        changed: Changed<T, crate::error::Error>,
    ) -> crate::error::Result<(UserRecord, T)> {
        use crate::error::Error;
        match changed {
            Changed::Done { user, value, ended } => {
                self.forget_sessions(&ended);
                Ok((*user, value))
            }
            Changed::Refused(e) => Err(e),
            Changed::Missing => Err(Error::InvalidToken),
            Changed::EmailTaken => {
                Err(Error::bad_input("email", "cannot be used for this account"))
            }
            Changed::UsernameTaken => Err(Error::bad_input("username", "is already taken")),
        }
    }

    pub(crate) fn forget_sessions(&self, ids: &[Uuid]) {
        let mut seen = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            seen.remove(id);
        }
    }
}

/// A Unix time as the contract writes times.
pub fn iso(unix: i64) -> String {
    iso8601(OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

/// A configured lifetime in whole seconds.
pub(crate) fn seconds(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}

/// Refuses a key other than the one the storage was first used with: each instance sharing
/// a database must have the same `hmac.key`, or codes mailed by one fail on another.
pub(crate) async fn check_key(
    store: &dyn Storage,
    secrets: &Secrets,
    config: &Config,
) -> anyhow::Result<()> {
    let ours = secrets.fingerprint();
    match store.claim_key_fingerprint(&ours).await? {
        None => Ok(()),
        Some(theirs) => anyhow::bail!(
            "{} is not the key this storage was first used with (its fingerprint is {ours}, the storage's {theirs}): every instance on one database needs the same key file; copy it from the first instance",
            config.hmac_key_path().display()
        ),
    }
}
