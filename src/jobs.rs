//! Background work: the sweep that reclaims expired records, run every
//! `storage.sweep_interval`, and the worker that sends queued mail; both until shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::Auth;
use crate::domain::records::QueuedMail;
use crate::store::{Storage, StoreError, SweepReport};

/// Index entries handled per batch: small enough that a batch never stalls requests for long.
pub const SWEEP_BATCH: usize = 256;

/// Removes everything due at `now`, and says what it removed: in batches of
/// [`SWEEP_BATCH`], each on a blocking thread, with a yield between, so that a long pass
/// never holds a runtime worker. The sweeper's pass, and what the tests call.
pub async fn sweep_once(store: &dyn Storage, now: i64) -> Result<SweepReport, StoreError> {
    let mut total = SweepReport::default();
    sweep_into(store, now, &mut total).await?;
    Ok(total)
}

/// [`sweep_once`], adding what each batch removed to `total` as it goes, so that a pass
/// that fails part way still counts what its earlier batches removed.
async fn sweep_into(
    store: &dyn Storage,
    now: i64,
    total: &mut SweepReport,
) -> Result<(), StoreError> {
    loop {
        let batch = store.sweep_expired(now, SWEEP_BATCH).await?;
        total.add(&batch);
        if batch.entries < SWEEP_BATCH as u64 {
            return Ok(());
        }
        tokio::task::yield_now().await;
    }
}

/// What the sweeper has done since start.
#[derive(Debug, Default)]
pub struct SweepStats {
    pub passes: AtomicU64,
    pub removed: AtomicU64,
    pub failures: AtomicU64,
}

/// The sweeper: a pass every `interval`, each batch on a blocking thread with a yield
/// between, until `stop` turns true. A failed pass is logged and the loop goes on.
pub async fn run_sweeper(
    auth: Arc<Auth>,
    interval: Duration,
    audit_retention: Duration,
    stats: Arc<SweepStats>,
    mut stop: watch::Receiver<bool>,
) {
    let (store, clock) = (auth.store.clone(), auth.clock.clone());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = clock.unix_seconds();
        let retention = i64::try_from(audit_retention.as_secs()).unwrap_or(i64::MAX);
        let old_events = store
            .prune_audit(now.saturating_sub(retention))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot prune the audit log");
                0
            });
        let old_keys = auth
            .tokens
            .drop_retired_keys(&*store, now)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot remove retired signing keys");
                0
            });
        let old_limits = store.prune_limits(now).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot prune the abuse limits");
            0
        });
        let pruned = old_limits + old_events + old_keys;
        stats
            .removed
            .fetch_add(u64::try_from(pruned).unwrap_or(0), Ordering::Relaxed);
        let mut pass = SweepReport::default();
        let outcome = sweep_into(&*store, now, &mut pass).await;
        stats.passes.fetch_add(1, Ordering::Relaxed);
        stats.removed.fetch_add(pass.removed(), Ordering::Relaxed);
        match outcome {
            Ok(()) if pass.removed() > 0 => tracing::info!(
                removed = pass.removed(),
                sessions = pass.sessions,
                refresh_tokens = pass.refresh_tokens,
                challenges = pass.challenges,
                email_codes = pass.email_codes,
                reset_codes = pass.reset_codes,
                "sweeper removed expired records"
            ),
            Ok(()) => {}
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "sweeper pass failed; trying again next interval");
            }
        }
    }
}

/// One pass of the key refresher: the signing keys read again from the storage, so that a
/// key rotated on another instance (or by `keyhold keys rotate` on a stopped one) is served
/// here too before it signs.
pub async fn refresh_keys_once(auth: &Auth) {
    if let Err(e) = auth.tokens.refresh_keys(&*auth.store).await {
        tracing::error!(error = %e, "cannot read the signing keys again; serving those known");
    }
}

/// Reads the signing keys again twice every `tokens.jwks_refresh`, until shutdown: a new
/// key signs only once it has been published that long, so every instance serves it by then.
pub async fn run_key_refresher(auth: Arc<Auth>, mut stop: watch::Receiver<bool>) {
    let every = (auth.config.tokens.jwks_refresh / 2).max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        refresh_keys_once(&auth).await;
    }
}

/// What the mail worker has done since start.
#[derive(Debug, Default)]
pub struct MailStats {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

/// Messages taken from the queue per round.
const MAIL_BATCH: usize = 32;
/// How long a claimed message is this worker's (seconds): a worker that dies holding claims
/// leaves them to be sent again this long after.
const MAIL_LEASE: i64 = 60;
/// At shutdown, how long the last round may take.
const FINAL_DRAIN: Duration = Duration::from_secs(5);

/// Seconds to wait after the `attempts`-th failure: 10 s, doubling, at most an hour.
pub fn mail_backoff(attempts: u32) -> i64 {
    let exp = attempts.saturating_sub(1).min(16);
    (10i64 << exp).min(3600)
}

/// The mail worker: sends what is due whenever mail is queued (and every second, for
/// retries), one message at a time, so a message is sent once. On `stop` it makes one last
/// bounded round and returns; what is left is sent after the next start.
pub async fn run_mail_worker(
    auth: Arc<Auth>,
    stats: Arc<MailStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        send_due(&auth, &stats, &stop).await;
        let stopping = tokio::select! {
            _ = auth.mail_ready.notified() => false,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        if stopping {
            let (_, idle) = watch::channel(false);
            let _ = tokio::time::timeout(FINAL_DRAIN, send_due(&auth, &stats, &idle)).await;
            return;
        }
    }
}

async fn send_due(auth: &Auth, stats: &MailStats, stop: &watch::Receiver<bool>) {
    loop {
        match auth.store.mail_queue_len().await {
            Ok(queued) => auth.mail_backlog.recount(queued),
            Err(e) => tracing::error!(error = %e, "cannot count the mail queue"),
        }
        let now = auth.clock.unix_seconds();
        let due = match auth.store.claim_mail(now, MAIL_LEASE, MAIL_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the mail queue");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let mut due = due.into_iter();
        while let Some(queued) = due.next() {
            if *stop.borrow() {
                // Stopping: what this pass claimed and did not send is due again at once,
                // for the final drain (or the next start), rather than when the lease ends.
                for mut unsent in std::iter::once(queued).chain(due) {
                    unsent.record.next_attempt_at = now;
                    if let Err(e) = auth.store.reschedule_mail(&unsent).await {
                        tracing::error!(error = %e, "cannot hand back a claimed message");
                    }
                }
                return;
            }
            deliver(auth, stats, queued, now).await;
        }
    }
}

async fn deliver(auth: &Auth, stats: &MailStats, mut queued: QueuedMail, now: i64) {
    tracing::debug!(
        id = queued.id,
        attempts = queued.record.attempts,
        "sending queued mail"
    );
    let Some(mail) = auth.open_mail(&queued) else {
        tracing::error!(id = queued.id, "a queued message cannot be opened; dropped");
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        let _ = auth.store.remove_mail(queued.id).await;
        return;
    };
    match auth.mailer.send(&mail).await {
        Ok(()) => {
            // Off the queue on disk before it counts as sent: a crash after this point does
            // not send it again.
            if let Err(e) = auth.store.remove_mail(queued.id).await {
                tracing::error!(error = %e, id = queued.id, "sent, but cannot take it off the queue");
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e @ crate::mail::MailError::OutboxFull(_)) => {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, subject = %mail.subject, "mail dropped");
            let _ = auth.store.remove_mail(queued.id).await;
        }
        Err(e) => {
            queued.record.attempts += 1;
            let attempts = queued.record.attempts;
            if attempts >= auth.config.mail.max_attempts {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    to = %mail.to,
                    subject = %mail.subject,
                    attempts,
                    "mail dropped after its last attempt"
                );
                let _ = auth.store.remove_mail(queued.id).await;
            } else {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                queued.record.next_attempt_at = now + mail_backoff(attempts);
                tracing::warn!(
                    error = %e,
                    to = %mail.to,
                    subject = %mail.subject,
                    attempts,
                    retry_in_seconds = mail_backoff(attempts),
                    "mail not sent; will retry"
                );
                if let Err(e) = auth.store.reschedule_mail(&queued).await {
                    tracing::error!(error = %e, "cannot reschedule queued mail");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::{
        ChallengePurpose, ChallengeRecord, EmailCodeRecord, RefreshRecord, ResetCodeRecord,
        SecondFactor, SessionRecord, UserRecord,
    };
    use crate::store::sled::Store;
    use crate::store::{ChallengeStore, PasswordStore, RotateOutcome, SessionStore, UserStore};
    use uuid::Uuid;

    fn user() -> UserRecord {
        UserRecord {
            email_verified: true,
            ..UserRecord::new("ada@example.com", "ada", "$argon2id$stub".into(), 0)
        }
    }

    fn session(user: &UserRecord, device: &str, expires_at: i64, hash: u8) -> SessionRecord {
        SessionRecord {
            id: Uuid::new_v4(),
            user_id: user.id,
            device_id: device.into(),
            name: None,
            ip_address: None,
            user_agent: None,
            created_at: 0,
            last_seen_at: 0,
            refresh_hash: [hash; 32],
            refresh_expires_at: expires_at,
            refresh_generation: 0,
        }
    }

    #[test]
    fn mail_backs_off_from_ten_seconds_to_an_hour() {
        let delays: Vec<i64> = (1..=10).map(mail_backoff).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]);
    }

    #[tokio::test]
    async fn sweep_once_removes_what_is_due_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let ada = user();
        let code = EmailCodeRecord {
            user_id: ada.id,
            email: ada.email.clone(),
            expires_at: 100,
        };
        store.create_user(&ada, &[1; 32], &code, &[]).await.unwrap();
        let old = session(&ada, "old-phone", 200, 2);
        let fresh = session(&ada, "laptop", 10_000, 3);
        store.start_session_unchecked(&old).unwrap();
        store.start_session_unchecked(&fresh).unwrap();
        // Left from storage format 1: refresh tokens had records of their own.
        for (hash, session) in [(2, &old), (3, &fresh)] {
            let record = RefreshRecord {
                session_id: session.id,
                expires_at: session.refresh_expires_at,
            };
            store
                .put_format_1_refresh_token(&[hash; 32], &record)
                .unwrap();
        }
        let challenge = ChallengeRecord {
            id: Uuid::new_v4(),
            user_id: ada.id,
            purpose: ChallengePurpose::StepUp {
                reason: "GENERIC".into(),
            },
            method: SecondFactor::Email,
            code_hash: Some([4; 32]),
            attempts: 0,
            resends: 0,
            last_sent_at: 0,
            expires_at: 150,
            stamp: 0,
        };
        store.put_step_up(&challenge, "GENERIC", &[]).await.unwrap();
        store
            .put_reset_code(
                &[5; 32],
                &ResetCodeRecord {
                    user_id: ada.id,
                    email: ada.email.clone(),
                    expires_at: 120,
                },
                &[],
            )
            .await
            .unwrap();

        assert_eq!(
            sweep_once(&store, 99).await.unwrap().removed(),
            0,
            "nothing due yet"
        );
        let report = sweep_once(&store, 300).await.unwrap();
        assert_eq!(report.email_codes, 1);
        assert_eq!(report.reset_codes, 1);
        assert_eq!(report.challenges, 1);
        assert_eq!(report.sessions, 1);
        assert_eq!(report.refresh_tokens, 1);
        assert!(store.session(old.id).await.unwrap().is_none());
        assert!(
            store.session(fresh.id).await.unwrap().is_some(),
            "a live session stays"
        );
        assert_eq!(store.sessions_of(ada.id).await.unwrap().len(), 1);
        assert!(store.step_up(ada.id, "GENERIC").await.unwrap().is_none());
        assert!(store.reset_code(&[5; 32]).await.unwrap().is_none());
        assert!(
            store.user(ada.id).await.unwrap().is_some(),
            "accounts never expire"
        );
        // What is left in the index is the live session and its format 1 token.
        assert_eq!(store.expiry_entries(), 2);
        let later = sweep_once(&store, 10_000).await.unwrap();
        assert_eq!((later.sessions, later.refresh_tokens), (1, 1));
        assert_eq!(store.expiry_entries(), 0);
    }

    #[tokio::test]
    async fn a_record_given_a_later_expiry_is_not_swept_at_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let ada = user();
        store.insert_user(&ada).await.unwrap();
        let s = session(&ada, "phone", 100, 7);
        store.start_session_unchecked(&s).unwrap();
        // A refresh moves the session's expiry to 500.
        let rotated = store
            .rotate_refresh(s.id, 0, &[7; 32], &[8; 32], 500, i64::MAX, 50)
            .await
            .unwrap();
        assert!(
            matches!(rotated, RotateOutcome::Rotated { .. }),
            "{rotated:?}"
        );
        let report = sweep_once(&store, 200).await.unwrap();
        assert_eq!(report.sessions, 0);
        assert!(store.session(s.id).await.unwrap().is_some());
        assert_eq!(sweep_once(&store, 500).await.unwrap().sessions, 1);
    }
}
