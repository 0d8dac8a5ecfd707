//! The second factor: sign-in challenges, mailed codes, TOTP, recovery codes and step-up
//! codes. A challenge is pending while it exists and has attempts left, dead once they are
//! used up, and gone once it succeeded; no token exists before success.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use minijinja::context;
use totp_rs::{Builder, Secret, Totp};
use uuid::Uuid;

use super::audit::{Event, Subject};
use super::challenge::ChallengeState;
use super::limits::Limit;
use super::secrets::{SEALED_PREFIX, random_bytes};
use super::sessions::SignedIn;
use super::{Auth, Caller, Origin, iso, seconds};
use crate::domain::Email;
use crate::error::{Error, Result};
use crate::mail::Template;
use crate::store::records::{
    ChallengePurpose, ChallengeRecord, PendingTotpRecord, QueuedMail, SecondFactor,
    TwoFactorRecord, UserRecord,
};
use crate::store::{
    AccountChange, ChallengeStore, Changed, Ends, MailQueueStore, UserStore, Versioned,
};

/// Purpose tag of mailed second-factor and step-up codes in the keyed hash.
const MAILED_CODE: &str = "two-factor-code";
/// Purpose tag of recovery codes in the keyed hash.
const RECOVERY_CODE: &str = "recovery-code";
/// Recovery codes handed out when two-factor sign-in is turned on.
pub const RECOVERY_CODES: usize = 10;
/// Letters and digits that cannot be mistaken for one another.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// What a step-up code authorises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUpReason {
    Generic,
    UpdateProfile,
    ChangeEmail,
    DisableTwoFactor,
}

impl StepUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StepUpReason::Generic => "GENERIC",
            StepUpReason::UpdateProfile => "UPDATE_PROFILE",
            StepUpReason::ChangeEmail => "CHANGE_EMAIL",
            StepUpReason::DisableTwoFactor => "DISABLE_TWO_FACTOR",
        }
    }

    /// What the mail says the code is for.
    fn purpose(self) -> &'static str {
        match self {
            StepUpReason::Generic => "confirm a sensitive operation",
            StepUpReason::UpdateProfile => "change your profile",
            StepUpReason::ChangeEmail => "change your e-mail address",
            StepUpReason::DisableTwoFactor => "turn off two-factor sign-in",
        }
    }
}

/// A sign-in waiting for its second factor.
#[derive(Debug)]
pub struct PendingSignIn {
    pub challenge_id: Uuid,
    pub user: UserRecord,
    pub method: SecondFactor,
    pub expires_at: i64,
}

/// The result of `login`.
#[derive(Debug)]
pub enum LoginOutcome {
    SignedIn(Box<SignedIn>),
    SecondFactor(Box<PendingSignIn>),
}

/// A code was (or, for TOTP, was not) sent.
#[derive(Debug)]
pub struct CodeSent {
    pub challenge_id: Uuid,
    pub expires_at: i64,
    /// Seconds before another code may be requested.
    pub retry_after: i64,
    /// False for a TOTP challenge: the code comes from the app, nothing was mailed.
    pub mailed: bool,
}

/// The result of `enable2Fa`.
#[derive(Debug)]
pub enum Enabled {
    /// On; recovery codes only when it was turned on by this call.
    On { recovery_codes: Option<Vec<String>> },
    /// A TOTP secret to put in the app, waiting for its first code.
    TotpPending { uri: String, qr_png_base64: String },
}

/// A code the caller typed: which kind it turned out to be.
pub(crate) enum Matched {
    Mailed,
    /// The time step of the app's code.
    Totp(u64),
    /// The keyed hash of the recovery code.
    Recovery([u8; 32]),
}

/// The label TOTP secrets are sealed under.
const TOTP_SECRET: &[u8] = b"totp-secret";

/// Six decimal digits, uniform, from the CSPRNG.
pub fn six_digits() -> String {
    loop {
        let n = u32::from_be_bytes(random_bytes::<4>());
        // Reject the top sliver so that every code is equally likely.
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

fn recovery_code() -> String {
    let bytes = random_bytes::<10>();
    let letters: String = bytes
        .iter()
        .map(|b| char::from(RECOVERY_ALPHABET[usize::from(*b) % RECOVERY_ALPHABET.len()]))
        .collect();
    format!("{}-{}", &letters[..5], &letters[5..])
}

fn normalize_recovery(code: &str) -> String {
    code.trim().to_lowercase().replace(['-', ' '], "")
}

impl Auth {
    /// The TOTP generator of a stored secret: sealed (`Secrets::seal_text`), or in clear
    /// as an older Keyhold stored it until [`Auth::seal_clear_secrets`] ran.
    fn totp(&self, stored: &str, account: &str) -> Result<Totp> {
        let opened;
        let secret_base32 = if stored.starts_with(SEALED_PREFIX) {
            opened = self
                .secrets
                .open_text(TOTP_SECRET, stored)
                .ok_or_else(|| Error::internal(anyhow::anyhow!("a TOTP secret does not open")))?;
            opened.as_str()
        } else {
            stored
        };
        let secret = Secret::try_from_base32(secret_base32)
            .map_err(|e| Error::internal(anyhow::anyhow!("stored TOTP secret: {e:?}")))?;
        Builder::new()
            .with_secret(secret)
            .with_account_name(account)
            .with_issuer(Some(self.config.two_factor.totp_issuer.as_str()))
            .build()
            .map_err(|e| Error::internal(anyhow::anyhow!("TOTP: {e:?}")))
    }

    /// The step of a valid TOTP code newer than the last one used, if it is one.
    fn totp_step(&self, user: &UserRecord, code: &str) -> Result<Option<u64>> {
        let Some(tf) = &user.two_factor else {
            return Ok(None);
        };
        let Some(secret) = &tf.totp_secret else {
            return Ok(None);
        };
        let now = u64::try_from(self.now()).unwrap_or(0);
        let step = self.totp(secret, &user.email)?.check(code.trim(), now);
        Ok(step.filter(|s| tf.totp_last_step.is_none_or(|last| *s > last)))
    }

    /// The keyed hash of `code` if it is one of the account's unused recovery codes.
    fn recovery_match(&self, user: &UserRecord, code: &str) -> Option<[u8; 32]> {
        let tf = user.two_factor.as_ref()?;
        let hash = self
            .secrets
            .keyed_hash(RECOVERY_CODE, &normalize_recovery(code));
        tf.recovery_codes
            .iter()
            .any(|h| verify_slices_are_equal(h, &hash).is_ok())
            .then_some(hash)
    }

    fn mailed_code_matches(&self, challenge: &ChallengeRecord, code: &str) -> bool {
        let hash = self.secrets.keyed_hash(MAILED_CODE, code.trim());
        challenge
            .code_hash
            .is_some_and(|h| verify_slices_are_equal(&h, &hash).is_ok())
    }

    /// Uses up what a matched code spends, on the account as it is inside the transaction
    /// that makes the session or applies the change: a TOTP step no newer than the last one
    /// used, or a recovery code already gone, is refused, so one code never counts twice
    /// however the requests race.
    pub(crate) fn spend(user: &mut UserRecord, matched: &Matched) -> Result<()> {
        if let Matched::Mailed = matched {
            // The challenge holding it was removed by compare-and-swap already.
            return Ok(());
        }
        let tf = user.two_factor.as_mut().ok_or(Error::InvalidCode)?;
        match matched {
            Matched::Totp(step) => {
                if tf.totp_last_step.is_some_and(|last| *step <= last) {
                    return Err(Error::InvalidCode);
                }
                tf.totp_last_step = Some(*step);
            }
            Matched::Recovery(hash) => {
                let index = tf
                    .recovery_codes
                    .iter()
                    .position(|h| verify_slices_are_equal(h, hash).is_ok())
                    .ok_or(Error::InvalidCode)?;
                tf.recovery_codes.remove(index);
            }
            Matched::Mailed => {}
        }
        Ok(())
    }

    /// A new challenge with a fresh mailed code (EMAIL) or none (TOTP).
    pub(crate) fn new_challenge(
        &self,
        user: &UserRecord,
        purpose: ChallengePurpose,
        method: SecondFactor,
    ) -> (ChallengeRecord, Option<String>) {
        let now = self.now();
        let code = (method == SecondFactor::Email).then(six_digits);
        let record = ChallengeRecord {
            id: Uuid::new_v4(),
            user_id: user.id,
            purpose,
            method,
            code_hash: code
                .as_ref()
                .map(|c| self.secrets.keyed_hash(MAILED_CODE, c)),
            attempts: 0,
            resends: 0,
            last_sent_at: now,
            expires_at: now + seconds(self.config.two_factor.code_ttl),
            stamp: user.stamp,
        };
        (record, code)
    }

    /// The mail carrying a code, if there is one (TOTP challenges have none).
    pub(crate) fn code_mail(
        &self,
        to: &str,
        code: Option<&str>,
        purpose: &str,
        expires_at: i64,
    ) -> Result<Vec<QueuedMail>> {
        let Some(code) = code else {
            return Ok(Vec::new());
        };
        let mail = self.queue_mail(
            to,
            Template::TwoFactorCode,
            context! { code => code, purpose => purpose, expires_at => iso(expires_at) },
        )?;
        Ok(mail.into_iter().collect())
    }

    /// Starts the second step of a sign-in whose password was right.
    pub(crate) async fn challenge_sign_in(
        &self,
        user: UserRecord,
        device_id: String,
        device_name: Option<String>,
        origin: &Origin,
    ) -> Result<PendingSignIn> {
        let method = user
            .two_factor
            .as_ref()
            .map_or(SecondFactor::Email, |tf| tf.method);
        let purpose = ChallengePurpose::SignIn {
            device_id,
            device_name,
            ip_address: origin.ip.map(|ip| ip.to_string()),
            user_agent: origin.user_agent.clone(),
        };
        let (challenge, code) = self.new_challenge(&user, purpose, method);
        let mail = self.code_mail(
            &user.email,
            code.as_deref(),
            "sign in",
            challenge.expires_at,
        )?;
        let ended = self.store.put_challenge(
            &challenge,
            self.config.two_factor.max_pending_challenges,
            &mail,
        )?;
        if ended > 0 {
            tracing::debug!(user = %user.id, ended, "the oldest pending sign-ins gave way to a new one");
        }
        self.store.flush().await?;
        self.mail_queued();
        Ok(PendingSignIn {
            challenge_id: challenge.id,
            user,
            method,
            expires_at: challenge.expires_at,
        })
    }

    /// A live sign-in challenge of the account with this address.
    fn sign_in_challenge(
        &self,
        challenge_id: &str,
        email: &Email,
    ) -> Result<(Versioned<ChallengeRecord>, UserRecord)> {
        let id = Uuid::parse_str(challenge_id.trim()).map_err(|_| Error::InvalidCode)?;
        let current = self.store.challenge(id)?.ok_or(Error::InvalidCode)?;
        if !matches!(current.record.purpose, ChallengePurpose::SignIn { .. }) {
            return Err(Error::InvalidCode);
        }
        let user = self
            .store
            .user(current.record.user_id)?
            .filter(|u| u.email == email.as_str())
            .ok_or(Error::InvalidCode)?;
        Ok((current, user))
    }

    /// Checks `code` against a challenge: counts a wrong try, kills the challenge at the
    /// limit, and removes it on success, all by compare-and-swap so it succeeds once.
    pub(crate) async fn attempt(
        &self,
        current: &Versioned<ChallengeRecord>,
        user: &UserRecord,
        code: &str,
    ) -> Result<Matched> {
        let c = &current.record;
        let now = self.now();
        match c.state(now, self.config.two_factor.max_attempts) {
            ChallengeState::Pending => {}
            ChallengeState::Dead { retry_after } => {
                return Err(Error::too_many_attempts(retry_after));
            }
            ChallengeState::Expired => {
                self.store.swap_challenge(current, None, &[])?;
                return Err(Error::CodeExpired);
            }
        }
        self.factor_budget(user, now)?;
        let matched = if c.method == SecondFactor::Email && self.mailed_code_matches(c, code) {
            Some(Matched::Mailed)
        } else if let Some(step) = self.totp_step(user, code)? {
            Some(Matched::Totp(step))
        } else {
            self.recovery_match(user, code).map(Matched::Recovery)
        };
        let next = c.after_guess(matched.is_some());
        if !self.store.swap_challenge(current, next.as_ref(), &[])? {
            // Another try changed the challenge in between. This one neither counts nor
            // succeeds, so racing guesses gain nothing.
            return Err(Error::InvalidCode);
        }
        if matched.is_none() {
            self.factor_failed(user, now)?;
        }
        self.store.flush().await?;
        matched.ok_or(Error::InvalidCode)
    }

    /// `TOO_MANY_ATTEMPTS` while the account's second-factor budget is spent: every code on
    /// every path, even a right one, until its window ends.
    pub(crate) fn factor_budget(&self, user: &UserRecord, now: i64) -> Result<()> {
        let window = seconds(self.config.two_factor.failure_window);
        let max = self.config.two_factor.max_failures_per_account;
        match self.store.factor_failures(user.id)? {
            Some(f) if f.window_start + window > now && f.failures >= max => {
                Err(Error::too_many_attempts(f.window_start + window - now))
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong code against the account (stored: a restart does not forget it). The
    /// failure that spends the budget mails the owner. The caller flushes.
    pub(crate) fn factor_failed(&self, user: &UserRecord, now: i64) -> Result<()> {
        let window = seconds(self.config.two_factor.failure_window);
        let max = self.config.two_factor.max_failures_per_account;
        let f = self.store.record_factor_failure(user.id, now, window)?;
        if f.failures == max {
            let notice = self.queue_mail(
                &user.email,
                Template::SecondFactorLocked,
                context! {
                    failures => f.failures,
                    until => iso(f.window_start + window),
                    reset_link => self.page("forgot-password").to_string(),
                },
            )?;
            self.store.enqueue(notice.as_slice())?;
            self.mail_queued();
            self.audit(
                Event::TwoFactorRefused,
                Subject::user(user.id),
                "budget_spent",
            );
        }
        Ok(())
    }

    /// Finishes a sign-in with the second factor: the mailed code, the app's code, or a
    /// recovery code.
    pub async fn confirm_2fa(
        &self,
        code: &str,
        challenge_id: &str,
        email: &Email,
    ) -> Result<SignedIn> {
        let (current, user) = self.sign_in_challenge(challenge_id, email)?;
        // Disabled while the challenge waited: no code signs it in.
        if user.state == crate::store::records::AccountState::Disabled {
            return Err(Error::AccountDisabled);
        }
        let ip = match &current.record.purpose {
            ChallengePurpose::SignIn { ip_address, .. } => {
                ip_address.as_deref().and_then(|ip| ip.parse().ok())
            }
            _ => None,
        };
        let who = Subject {
            user_id: Some(user.id),
            email: Some(email.as_str()),
            ip,
            device: None,
        };
        let matched = match self.attempt(&current, &user, code).await {
            Ok(matched) => matched,
            Err(e) => {
                self.audit(Event::TwoFactorRefused, who, e.code());
                return Err(e);
            }
        };
        self.audit(Event::TwoFactorAccepted, who.clone(), "ok");
        let stamp = current.record.stamp;
        let ChallengePurpose::SignIn {
            device_id,
            device_name,
            ip_address,
            user_agent,
        } = current.record.purpose
        else {
            return Err(Error::InvalidCode);
        };
        let origin = Origin {
            ip: ip_address.and_then(|ip| ip.parse().ok()),
            user_agent,
        };
        let address = email.as_str();
        let signed_in = self
            .open_session(user.id, device_id, device_name, &origin, |u| {
                // Changed since the challenge was made (a new password, a new address, 2FA
                // off and on): the challenge signs nobody in.
                if u.stamp != stamp || u.email != address {
                    return Err(Error::InvalidCode);
                }
                Self::spend(u, &matched)
            })
            .await;
        match &signed_in {
            Ok(_) => self.audit(Event::SignedIn, who, "ok"),
            Err(e) => self.audit(Event::SignInFailed, who, e.code()),
        }
        signed_in
    }

    /// Mails a fresh code for a pending sign-in, replacing the old one, within the cooldown
    /// and the per-challenge cap. A TOTP challenge mails nothing.
    pub async fn resend_2fa(
        &self,
        challenge_id: &str,
        email: &Email,
        origin: &Origin,
    ) -> Result<CodeSent> {
        self.limit_ip(Limit::CodeSendsPerIp, origin.ip)?;
        let (current, user) = self.sign_in_challenge(challenge_id, email)?;
        self.resend_challenge(&current, &user, "sign in").await
    }

    /// Mails a fresh code for a live challenge, replacing the old one, within the cooldown
    /// and the per-challenge cap. A TOTP challenge mails nothing.
    pub(crate) async fn resend_challenge(
        &self,
        current: &Versioned<ChallengeRecord>,
        user: &UserRecord,
        purpose: &str,
    ) -> Result<CodeSent> {
        let c = &current.record;
        let now = self.now();
        match c.state(now, self.config.two_factor.max_attempts) {
            ChallengeState::Pending => {}
            ChallengeState::Dead { retry_after } => {
                return Err(Error::too_many_attempts(retry_after));
            }
            ChallengeState::Expired => return Err(Error::CodeExpired),
        }
        if c.method == SecondFactor::Totp {
            return Ok(CodeSent {
                challenge_id: c.id,
                expires_at: c.expires_at,
                retry_after: 0,
                mailed: false,
            });
        }
        let tf = &self.config.two_factor;
        c.may_resend(now, seconds(tf.resend_cooldown), tf.max_resends)
            .map_err(Error::rate_limited)?;
        let code = six_digits();
        let next = c.resent(
            self.secrets.keyed_hash(MAILED_CODE, &code),
            now,
            seconds(tf.code_ttl),
        );
        let mail = self.code_mail(&user.email, Some(&code), purpose, next.expires_at)?;
        if !self.store.swap_challenge(current, Some(&next), &mail)? {
            return Err(Error::rate_limited(1));
        }
        self.store.flush().await?;
        self.mail_queued();
        Ok(CodeSent {
            challenge_id: c.id,
            expires_at: next.expires_at,
            retry_after: seconds(self.config.two_factor.resend_cooldown),
            mailed: true,
        })
    }

    /// The password of a signed-in caller, checked like a sign-in: refused while the account
    /// waits after failed sign-ins (even when right), and a wrong or missing one counts as a
    /// failed sign-in. Aliases in one request run one after another, so each is counted.
    pub(crate) async fn check_password(
        &self,
        user: &UserRecord,
        password: Option<String>,
    ) -> Result<()> {
        let now = self.now();
        self.limits.check_account(&user.email, now)?;
        let matches = match password {
            Some(password) => {
                self.passwords
                    .verify(password, Some(user.password_hash.clone()))
                    .await?
                    .matches
            }
            None => false,
        };
        if matches {
            Ok(())
        } else {
            self.limits.record_failure(&user.email, now);
            Err(Error::InvalidCredentials)
        }
    }

    fn new_recovery_codes(&self) -> (Vec<String>, Vec<[u8; 32]>) {
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let hashes = codes
            .iter()
            .map(|c| {
                self.secrets
                    .keyed_hash(RECOVERY_CODE, &normalize_recovery(c))
            })
            .collect();
        (codes, hashes)
    }

    /// Turns two-factor sign-in on; both methods need a verified address. TOTP first hands
    /// out a secret, and is on once a code from the app comes back. Already on: changes
    /// nothing.
    pub async fn enable_2fa(
        &self,
        caller: &Caller,
        password: Option<String>,
        method: SecondFactor,
        code: Option<String>,
    ) -> Result<Enabled> {
        let user = self.profile(caller)?;
        self.check_password(&user, password).await?;
        if user.two_factor.is_some() {
            return Ok(Enabled::On {
                recovery_codes: None,
            });
        }
        // No second factor is tied to an address nobody has shown to be theirs.
        if !user.email_verified {
            return Err(Error::EmailNotVerified);
        }
        let now = self.now();
        let (totp_secret, last_step) = match method {
            SecondFactor::Email => (None, None),
            SecondFactor::Totp => {
                let code = code.as_deref().map(str::trim).filter(|c| !c.is_empty());
                match (code, &user.pending_totp) {
                    (Some(code), Some(pending)) => {
                        self.factor_budget(&user, now)?;
                        let totp = self.totp(&pending.secret, &user.email)?;
                        let now_u = u64::try_from(now).unwrap_or(0);
                        let Some(step) = totp.check(code, now_u) else {
                            self.factor_failed(&user, now)?;
                            self.store.flush().await?;
                            return Err(Error::InvalidCode);
                        };
                        (Some(pending.secret.clone()), Some(step))
                    }
                    (Some(_), None) => {
                        return Err(Error::bad_input(
                            "code",
                            "start the TOTP set-up first: call enable2Fa without a code",
                        ));
                    }
                    (None, _) => return self.start_totp(&user, now).await,
                }
            }
        };
        let (codes, hashes) = self.new_recovery_codes();
        let two_factor = TwoFactorRecord {
            method,
            totp_secret,
            // The code that completed the set-up may not sign anyone in again.
            totp_last_step: last_step,
            recovery_codes: hashes,
            enabled_at: now,
        };
        let changed = self.store.change_user(
            user.id,
            AccountChange::ending(Ends::Sessions {
                keep: Some(caller.session_id),
            }),
            |u| {
                if u.two_factor.is_some() {
                    // Turned on meanwhile, by another request: that one's codes stand.
                    return Err(None);
                }
                // The set-up that this code completes must be the one still pending.
                if two_factor.totp_secret.is_some()
                    && u.pending_totp.as_ref().map(|p| &p.secret) != two_factor.totp_secret.as_ref()
                {
                    return Err(Some(Error::InvalidCode));
                }
                if !u.email_verified {
                    return Err(Some(Error::EmailNotVerified));
                }
                u.two_factor = Some(two_factor.clone());
                u.pending_totp = None;
                Ok(())
            },
        )?;
        match changed {
            Changed::Refused(None) => {
                return Ok(Enabled::On {
                    recovery_codes: None,
                });
            }
            other => {
                self.changed(refused_into(other))?;
            }
        }
        self.store.flush().await?;
        self.audit(Event::TwoFactorEnabled, Subject::user(user.id), "ok");
        Ok(Enabled::On {
            recovery_codes: Some(codes),
        })
    }

    /// Seals every TOTP secret that an older Keyhold stored in clear. Run at start, once per
    /// database (a mark in `meta` says it has run); each account is changed in its own
    /// transaction. Returns how many were sealed.
    pub fn seal_clear_secrets(&self) -> Result<usize> {
        if self.store.secrets_sealed()? {
            return Ok(0);
        }
        let clear = |s: &String| !s.starts_with(SEALED_PREFIX);
        let mut sealed = 0;
        for user in self.store.all_users()? {
            let has_clear = user
                .two_factor
                .as_ref()
                .and_then(|tf| tf.totp_secret.as_ref())
                .is_some_and(clear)
                || user.pending_totp.as_ref().is_some_and(|p| clear(&p.secret));
            if !has_clear {
                continue;
            }
            let changed =
                self.store
                    .change_user(user.id, AccountChange::ending(Ends::Nothing), |u| {
                        if let Some(secret) =
                            u.two_factor.as_mut().and_then(|tf| tf.totp_secret.as_mut())
                            && clear(secret)
                        {
                            *secret = self.secrets.seal_text(TOTP_SECRET, secret);
                        }
                        if let Some(p) = u.pending_totp.as_mut()
                            && clear(&p.secret)
                        {
                            p.secret = self.secrets.seal_text(TOTP_SECRET, &p.secret);
                        }
                        Ok::<_, Error>(())
                    })?;
            if let Changed::Done { .. } = changed {
                sealed += 1;
            }
        }
        if sealed > 0 {
            tracing::info!(accounts = sealed, "sealed TOTP secrets stored in clear");
        }
        self.store.mark_secrets_sealed()?;
        Ok(sealed)
    }

    /// Hands out a new TOTP secret, pending until a code from the app comes back.
    async fn start_totp(&self, user: &UserRecord, now: i64) -> Result<Enabled> {
        let secret = Secret::from(&random_bytes::<20>()[..]).to_base32();
        let totp = self.totp(&secret, &user.email)?;
        let uri = totp
            .to_url()
            .map_err(|e| Error::internal(anyhow::anyhow!("TOTP URI: {e:?}")))?;
        let qr_png_base64 = totp
            .to_qr_base64()
            .map_err(|e| Error::internal(anyhow::anyhow!("TOTP QR: {e:?}")))?;
        let pending = PendingTotpRecord {
            secret: self.secrets.seal_text(TOTP_SECRET, &secret),
            created_at: now,
        };
        let changed =
            self.store
                .change_user(user.id, AccountChange::ending(Ends::Nothing), |u| {
                    u.pending_totp = Some(pending.clone());
                    Ok(())
                })?;
        self.changed(changed)?;
        self.store.flush().await?;
        Ok(Enabled::TotpPending { uri, qr_png_base64 })
    }

    /// Turns two-factor sign-in off with the password and a DISABLE_TWO_FACTOR step-up code
    /// (or a current TOTP code, or a recovery code). Already off: changes nothing.
    pub async fn disable_2fa(
        &self,
        caller: &Caller,
        password: Option<String>,
        code: Option<String>,
    ) -> Result<()> {
        let user = self.profile(caller)?;
        if user.two_factor.is_none() {
            return Ok(());
        }
        self.check_password(&user, password).await?;
        let matched = self
            .use_step_up(&user, StepUpReason::DisableTwoFactor, code.as_deref())
            .await?;
        let changed = self.store.change_user(
            user.id,
            AccountChange::ending(Ends::Sessions {
                keep: Some(caller.session_id),
            }),
            |u| {
                Self::spend(u, &matched)?;
                u.two_factor = None;
                u.pending_totp = None;
                Ok(())
            },
        )?;
        self.changed(changed)?;
        self.store.flush().await?;
        self.audit(Event::TwoFactorDisabled, Subject::user(user.id), "ok");
        Ok(())
    }

    /// Mails a step-up code for one operation of `reason`.
    pub async fn send_2fa(
        &self,
        caller: &Caller,
        reason: StepUpReason,
        origin: &Origin,
    ) -> Result<CodeSent> {
        self.limit_ip(Limit::CodeSendsPerIp, origin.ip)?;
        let user = self.profile(caller)?;
        let now = self.now();
        if let Some(previous) = self.store.step_up(user.id, reason.as_str())? {
            let wait = previous.record.last_sent_at
                + seconds(self.config.two_factor.resend_cooldown)
                - now;
            if wait > 0 && previous.record.expires_at > now {
                return Err(Error::rate_limited(wait));
            }
        }
        let purpose = ChallengePurpose::StepUp {
            reason: reason.as_str().to_string(),
        };
        let (challenge, code) = self.new_challenge(&user, purpose, SecondFactor::Email);
        let mail = self.code_mail(
            &user.email,
            code.as_deref(),
            reason.purpose(),
            challenge.expires_at,
        )?;
        self.store.put_step_up(&challenge, reason.as_str(), &mail)?;
        self.store.flush().await?;
        self.mail_queued();
        self.audit(
            Event::TwoFactorCodeSent,
            Subject::user(user.id),
            reason.as_str(),
        );
        Ok(CodeSent {
            challenge_id: challenge.id,
            expires_at: challenge.expires_at,
            retry_after: seconds(self.config.two_factor.resend_cooldown),
            mailed: true,
        })
    }

    /// Checks a proof for one operation of `reason`: that reason's step-up code (used up
    /// here), a current TOTP code, or a recovery code. Returns what matched; the caller
    /// spends it ([`Auth::spend`]) in the transaction that makes the change.
    pub(crate) async fn use_step_up(
        &self,
        user: &UserRecord,
        reason: StepUpReason,
        code: Option<&str>,
    ) -> Result<Matched> {
        let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
            return Err(Error::Forbidden);
        };
        let now = self.now();
        self.factor_budget(user, now)?;
        if let Some(step) = self.totp_step(user, code)? {
            return Ok(Matched::Totp(step));
        }
        if let Some(hash) = self.recovery_match(user, code) {
            return Ok(Matched::Recovery(hash));
        }
        match self.store.step_up(user.id, reason.as_str())? {
            // The mailed code's own check counts a failure there.
            Some(current) => self.attempt(&current, user, code).await,
            None => {
                self.factor_failed(user, now)?;
                self.store.flush().await?;
                Err(Error::InvalidCode)
            }
        }
    }
}

/// A change refused with `Some(error)` as one refused with that error.
fn refused_into<T>(changed: Changed<T, Option<Error>>) -> Changed<T, Error> {
    match changed {
        Changed::Done { user, value, ended } => Changed::Done { user, value, ended },
        Changed::Refused(e) => Changed::Refused(e.unwrap_or(Error::InvalidCode)),
        Changed::Missing => Changed::Missing,
        Changed::EmailTaken => Changed::EmailTaken,
        Changed::UsernameTaken => Changed::UsernameTaken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_digit_codes_are_six_digits() {
        for _ in 0..1000 {
            let code = six_digits();
            assert_eq!(code.len(), 6);
            assert!(code.chars().all(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn recovery_codes_are_readable_and_normalised() {
        let code = recovery_code();
        assert_eq!(code.len(), 11);
        assert_eq!(&code[5..6], "-");
        assert_eq!(
            normalize_recovery(&code.to_uppercase()),
            code.replace('-', "")
        );
    }
}
