//! Registration, e-mail verification and the profile.

use minijinja::context;
use uuid::Uuid;

use super::audit::{Event, Subject};
use super::limits::Limit;
use super::secrets::random_token;
use super::{Auth, Caller, Origin, StepUpReason, iso, passwords, seconds};
use crate::domain::profile::{ProfileFields, ProfileUpdate, Registration, username_from};
use crate::domain::records::{EmailCodeRecord, MailQueueRecord, PendingEmailRecord, UserRecord};
use crate::error::{Error, Result};
use crate::mail::Template;
use crate::store::{AccountChange, Changed, CreateOutcome, Ends, VerifyOutcome};

/// Purpose tag of e-mail verification codes in the keyed hash.
const EMAIL_CODE: &str = "email-verification";

/// What `register` tells the caller.
#[derive(Debug)]
pub struct Registered {
    /// None when the address already had an account (the caller cannot tell otherwise).
    pub user_id: Option<Uuid>,
    /// Only with `testing.expose_codes`.
    pub verification_code: Option<String>,
}

impl Auth {
    /// Creates an account from the contract's JSON document, and mails a verification code.
    /// An address that already has an account gets the same answer, and its owner a notice.
    pub async fn register(&self, data: &str, origin: &Origin) -> Result<Registered> {
        self.limit_ip(Limit::RegisterPerIp, origin.ip).await?;
        if !self.config.registration.open {
            return Err(Error::RegistrationClosed);
        }
        let doc = Registration::parse(data)?;
        let explicit_username = doc.profile.username.clone();
        let username = match &explicit_username {
            Some(name) => name.clone(),
            None => username_from(&doc.email),
        };
        passwords::check_policy(
            &doc.password,
            self.config.passwords.min_length,
            doc.email.as_str(),
            &username,
        )?;
        // Hashed before the address is looked up, so a known address answers no faster.
        let password_hash = self.passwords.hash(doc.password.clone()).await?;
        let now = self.now();
        let mut user = UserRecord::new(doc.email.as_str(), &username, password_hash, now);
        apply_profile(&mut user, &doc.profile);
        let code = random_token::<16>();
        let code_record = EmailCodeRecord {
            user_id: user.id,
            email: user.email.clone(),
            expires_at: now + seconds(self.config.registration.verification_ttl),
        };
        let hash = self.secrets.keyed_hash(EMAIL_CODE, &code);
        let welcome = self.verification_mail(&user.email, &code, code_record.expires_at)?;
        // A generated username may clash; try a few suffixes before giving up.
        let mut attempt = 0;
        loop {
            let outcome = self
                .store
                .create_user(&user, &hash, &code_record, welcome.as_slice())
                .await?;
            match outcome {
                CreateOutcome::Created => break,
                CreateOutcome::EmailTaken { existing } => {
                    self.not_queued(&welcome);
                    // The owner is told instead, a few times an hour at most: registering
                    // someone else's address over and over must not mail-bomb its owner.
                    if self
                        .store
                        .hit_limit(Limit::NoticesPerAddress, &user.email, now)
                        .await?
                        .is_ok()
                    {
                        let notice = self.queue_mail(
                            &user.email,
                            Template::AccountExists,
                            context! { reset_link => self.page("forgot-password").to_string() },
                        )?;
                        self.store.enqueue(notice.as_slice()).await?;
                    } else {
                        tracing::debug!(
                            "limits.notices_per_address_per_hour reached: no notice mailed"
                        );
                    }
                    self.audit(
                        Event::Registered,
                        Subject {
                            user_id: Some(existing),
                            email: Some(&user.email),
                            ip: origin.ip,
                            device: None,
                        },
                        "address_taken",
                    )
                    .await;
                    self.mail_queued();
                    return Ok(Registered {
                        user_id: None,
                        verification_code: None,
                    });
                }
                CreateOutcome::UsernameTaken if explicit_username.is_some() => {
                    return Err(Error::bad_input("username", "is already taken"));
                }
                CreateOutcome::UsernameTaken => {
                    attempt += 1;
                    user.username = another_username(&username_from(&doc.email), attempt);
                }
            }
        }
        self.mail_queued();
        self.audit(
            Event::Registered,
            Subject {
                user_id: Some(user.id),
                email: Some(&user.email),
                ip: origin.ip,
                device: None,
            },
            "ok",
        )
        .await;
        Ok(Registered {
            user_id: Some(user.id),
            verification_code: self.config.testing.expose_codes.then_some(code),
        })
    }

    fn verification_mail(
        &self,
        to: &str,
        code: &str,
        expires_at: i64,
    ) -> Result<Option<MailQueueRecord>> {
        self.queue_mail(
            to,
            Template::VerifyEmail,
            context! {
                link => self.link("verify-email", code),
                code => code,
                expires_at => iso(expires_at),
            },
        )
    }

    /// Marks the address the code was sent to verified. The code works once. A code mailed
    /// to a pending new address makes it the account's address, and ends the account's other
    /// device sessions, challenges and codes.
    pub async fn verify_email(&self, code: &str) -> Result<()> {
        let hash = self.secrets.keyed_hash(EMAIL_CODE, code.trim());
        let outcome = self.store.verify_email(&hash, self.now()).await?;
        let user_id = match outcome {
            VerifyOutcome::Verified { user_id } => user_id,
            VerifyOutcome::Changed {
                user_id,
                old_email,
                new_email,
                ended,
            } => {
                self.forget_sessions(&ended);
                let notice = self.queue_mail(
                    &old_email,
                    Template::EmailChanged,
                    context! { new_email => new_email, when => iso(self.now()) },
                )?;
                self.store.enqueue(notice.as_slice()).await?;
                self.mail_queued();
                self.audit(Event::EmailChanged, Subject::user(user_id), "ok")
                    .await;
                user_id
            }
            VerifyOutcome::Taken => {
                return Err(Error::bad_input(
                    "code",
                    "the new address has been taken by another account meanwhile",
                ));
            }
            VerifyOutcome::Expired => return Err(Error::CodeExpired),
            VerifyOutcome::Unknown => return Err(Error::InvalidCode),
        };
        self.audit(Event::Verified, Subject::user(user_id), "ok")
            .await;
        Ok(())
    }

    /// The caller's account.
    pub async fn profile(&self, caller: &Caller) -> Result<UserRecord> {
        self.store
            .user(caller.user_id)
            .await?
            .ok_or(Error::InvalidToken)
    }

    /// Applies the fields of the document. A new address needs the current `password` (a
    /// wrong one counts like a failed sign-in) and, with two-factor sign-in on, `code`: a
    /// CHANGE_EMAIL step-up code, a current TOTP code or a recovery code. It stays pending
    /// until the code mailed to it is used (`verify_email`); the old address is told. The
    /// answer is the same whether or not the new address is taken: its holder is told instead,
    /// and no code is mailed.
    pub async fn update_profile(
        &self,
        caller: &Caller,
        data: &str,
        code: Option<&str>,
        password: Option<String>,
    ) -> Result<UserRecord> {
        let update = ProfileUpdate::parse(data)?;
        let before = self.profile(caller).await?;
        if update.is_empty() {
            return Ok(before);
        }
        let new_email = update
            .email
            .as_ref()
            .filter(|e| e.as_str() != before.email)
            .map(|e| e.as_str().to_string());
        let mut matched = None;
        if new_email.is_some() {
            self.check_password(&before, password).await?;
            if before.two_factor.is_some() {
                matched = Some(
                    self.use_step_up(&before, StepUpReason::ChangeEmail, code)
                        .await?,
                );
            }
        }
        let now = self.now();
        let mut new_code = None;
        let mut mail = Vec::new();
        if let Some(email) = &new_email {
            let taken = self
                .store
                .user_by_email(email)
                .await?
                .is_some_and(|u| u.id != before.id);
            if taken {
                // Told to the holder, at most a few times an hour.
                if self
                    .store
                    .hit_limit(Limit::NoticesPerAddress, email, now)
                    .await?
                    .is_ok()
                {
                    mail.extend(self.queue_mail(
                        email,
                        Template::AddressInUse,
                        context! { reset_link => self.page("forgot-password").to_string() },
                    )?);
                }
            } else {
                let code = random_token::<16>();
                let record = EmailCodeRecord {
                    user_id: before.id,
                    email: email.clone(),
                    expires_at: now + seconds(self.config.registration.verification_ttl),
                };
                mail.extend(self.verification_mail(email, &code, record.expires_at)?);
                new_code = Some((self.secrets.keyed_hash(EMAIL_CODE, &code), record));
            }
            mail.extend(self.queue_mail(
                &before.email,
                Template::EmailChangeRequested,
                context! {
                    new_email => email.clone(),
                    when => iso(now),
                    reset_link => self.page("forgot-password").to_string(),
                },
            )?);
        }
        let how = AccountChange {
            email_code: new_code.as_ref().map(|(hash, record)| (hash, record)),
            mail: &mail,
            ..AccountChange::ending(Ends::Nothing)
        };
        let changed = self.store.change_user(before.id, how, |u| {
            if let Some(matched) = &matched {
                Self::spend(u, matched)?;
            }
            apply_profile(u, &update.profile);
            if let Some(name) = &update.profile.username {
                u.username = name.clone();
            }
            if let Some(email) = &new_email {
                u.pending_email = Some(PendingEmailRecord {
                    email: email.clone(),
                    session_id: Some(caller.session_id),
                    requested_at: now,
                });
            }
            Ok(())
        });
        let (after, ()) = match changed.await? {
            Changed::Done { user, value, ended } => {
                self.forget_sessions(&ended);
                (*user, value)
            }
            refused => {
                self.none_queued(&mail);
                self.changed(refused)?
            }
        };
        self.mail_queued();
        Ok(after)
    }
}

/// Copies the fields present in a document onto the account.
fn apply_profile(user: &mut UserRecord, fields: &ProfileFields) {
    let p = &mut user.profile;
    if let Some(v) = &fields.first_name {
        p.first_name = v.clone();
    }
    if let Some(v) = &fields.last_name {
        p.last_name = v.clone();
    }
    let optional = [
        (&fields.middle_name, &mut p.middle_name),
        (&fields.preferred_name, &mut p.preferred_name),
        (&fields.date_of_birth, &mut p.date_of_birth),
        (&fields.phone_number, &mut p.phone_number),
        (&fields.country_code, &mut p.country_code),
        (&fields.address1, &mut p.address1),
        (&fields.address2, &mut p.address2),
        (&fields.city, &mut p.city),
        (&fields.state, &mut p.state),
        (&fields.zip_code, &mut p.zip_code),
        (&fields.country, &mut p.country),
    ];
    for (given, target) in optional {
        if let Some(value) = given {
            *target = value.clone();
        }
    }
    if let Some(value) = fields.opt_in_marketing {
        p.opt_in_marketing = value;
    }
}

/// A generated username after `attempt` clashes: `base-NNNN` with a random suffix, and past
/// eight tries one that cannot clash.
pub(crate) fn another_username(base: &str, attempt: u32) -> String {
    if attempt > 8 {
        format!("user-{}", Uuid::new_v4().simple())
    } else {
        let suffix = u32::from_be_bytes(super::secrets::random_bytes::<4>()) % 10_000;
        format!("{base}-{suffix:04}")
    }
}
