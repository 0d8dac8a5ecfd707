//! The expiry index and the sweep that reclaims what has expired. Expiry is enforced where a
//! record is used; sweeping only frees the space.

use crate::store::SweepReport;

use super::keys::{
    CHALLENGES, EMAIL_CODES, ExpiryKind, REFRESH_TOKENS, RESET_CODES, SESSIONS, expiry_key,
    step_up_key,
};
use super::records::{
    ChallengePurpose, ChallengeRecord, EmailCodeRecord, RefreshRecord, ResetCodeRecord,
    SessionRecord, decode,
};
use super::{ExpiryStore, Store, StoreError};

#[async_trait::async_trait]
impl ExpiryStore for Store {
    /// [`Store::sweep_due`] on a blocking thread, so that a batch never holds a runtime
    /// worker, then made durable (when it removed any index entry: an idle pass writes
    /// nothing).
    async fn sweep_expired(&self, now: i64, limit: usize) -> Result<SweepReport, StoreError> {
        let store = self.clone();
        let report = tokio::task::spawn_blocking(move || store.sweep_due(now, limit))
            .await
            .map_err(|e| super::store::thread_failed("sweeping", &e))??;
        if report.entries > 0 {
            self.flush().await?;
        }
        Ok(report)
    }
}

impl Store {
    /// Records that `id` of `kind` falls due at `at`. Written before the record, as a write
    /// that a backup waits for (the guard is recursive, so a caller may hold it already).
    pub(super) fn index_expiry(
        &self,
        kind: ExpiryKind,
        id: &[u8],
        at: i64,
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.expiry.insert(expiry_key(at, kind, id), &[])?;
        Ok(())
    }

    /// Removes at most `limit` index entries that are due at `now`, with their records when
    /// those are still expired. Returns what it did; `entries < limit` means nothing more is due.
    pub fn sweep_due(&self, now: i64, limit: usize) -> Result<SweepReport, StoreError> {
        let _writing = self.writing();
        let end = expiry_key(now.saturating_add(1), ExpiryKind::EmailCode, &[]);
        let due: Vec<sled::IVec> = self
            .expiry
            .range(..end)
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()?;
        let mut report = SweepReport::default();
        for key in due {
            report.entries += 1;
            if key.len() > 9
                && let Some(kind) = ExpiryKind::from_byte(key[8])
            {
                self.sweep_one(kind, &key[9..], now, &mut report)?;
            }
            self.expiry.remove(key)?;
        }
        Ok(report)
    }

    fn sweep_one(
        &self,
        kind: ExpiryKind,
        id: &[u8],
        now: i64,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        match kind {
            ExpiryKind::EmailCode => {
                if let Some(bytes) = self.email_codes.get(id)? {
                    let code: EmailCodeRecord = decode(EMAIL_CODES, &bytes)?;
                    if code.expires_at <= now {
                        self.email_codes.remove(id)?;
                        report.email_codes += 1;
                    }
                }
            }
            ExpiryKind::ResetCode => {
                if let Some(bytes) = self.reset_codes.get(id)? {
                    let code: ResetCodeRecord = decode(RESET_CODES, &bytes)?;
                    if code.expires_at <= now {
                        self.reset_codes.remove(id)?;
                        let _ = self.reset_by_user.compare_and_swap(
                            code.user_id.as_bytes(),
                            Some(id),
                            None as Option<&[u8]>,
                        )?;
                        report.reset_codes += 1;
                    }
                }
            }
            ExpiryKind::RefreshToken => {
                if let Some(bytes) = self.refresh_tokens.get(id)? {
                    let token: RefreshRecord = decode(REFRESH_TOKENS, &bytes)?;
                    if token.expires_at <= now {
                        self.refresh_tokens.remove(id)?;
                        report.refresh_tokens += 1;
                    }
                }
            }
            ExpiryKind::Session => {
                if let Some(bytes) = self.sessions.get(id)? {
                    let session: SessionRecord = decode(SESSIONS, &bytes)?;
                    if session.refresh_expires_at <= now {
                        self.end_sessions_now(&[session.id])?;
                        report.sessions += 1;
                    } else {
                        // Refreshed since it was indexed: a rotation moves the expiry without
                        // writing the index, so the index follows it here.
                        self.index_expiry(ExpiryKind::Session, id, session.refresh_expires_at)?;
                    }
                }
            }
            ExpiryKind::Challenge => {
                if let Some(bytes) = self.challenges.get(id)? {
                    let challenge: ChallengeRecord = decode(CHALLENGES, &bytes)?;
                    if challenge.expires_at <= now {
                        self.remove_challenge(&challenge)?;
                        report.challenges += 1;
                    }
                }
            }
            ExpiryKind::Ceremony => {
                // A ceremony is not changed once stored: its index entry is its expiry.
                if self.ceremonies.remove(id)?.is_some() {
                    report.ceremonies += 1;
                }
            }
        }
        Ok(())
    }

    fn remove_challenge(&self, challenge: &ChallengeRecord) -> Result<(), StoreError> {
        let id = challenge.id.as_bytes();
        self.challenges.remove(id)?;
        self.challenges_by_user
            .remove(super::keys::challenge_by_user_key(
                &challenge.user_id,
                &challenge.id,
            ))?;
        let slot = match &challenge.purpose {
            ChallengePurpose::StepUp { reason } => Some(reason.as_str()),
            ChallengePurpose::PasswordChange { .. } => Some("PASSWORD_CHANGE"),
            ChallengePurpose::SignIn { .. } => None,
        };
        if let Some(reason) = slot {
            let key = step_up_key(&challenge.user_id, reason);
            let _ = self.step_ups_by_user.compare_and_swap(
                key,
                Some(id.as_slice()),
                None as Option<&[u8]>,
            )?;
        }
        Ok(())
    }

    /// How many entries the expiry index holds (for tests and metrics).
    pub fn expiry_entries(&self) -> usize {
        self.expiry.len()
    }
}
