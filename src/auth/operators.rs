//! What an operator does to accounts with `keyhold user …`: through the admin socket while
//! the server runs, or on the stopped server's storage. Every change is audited with the
//! outcome `operator`.

use serde::{Deserialize, Serialize};

use super::audit::{Event, Subject};
use super::{Auth, iso};
use crate::domain::Email;
use crate::domain::records::{AccountState, SecondFactor, SessionRecord, UserRecord};
use crate::error::{Error, Result};
use crate::mail::Template;
use crate::store::{AccountChange, Changed, CreateOutcome, Ends};

/// One account, as `keyhold user list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserSummary {
    pub id: String,
    pub email: String,
    pub username: String,
    pub email_verified: bool,
    /// `active` or `disabled`.
    pub state: String,
    /// `EMAIL`, `TOTP`, or none.
    pub two_factor: Option<String>,
    pub created_at: String,
    pub last_login_at: Option<String>,
    pub device_sessions: usize,
}

/// One signed-in device, as `keyhold user show` lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceSummary {
    pub device_id: String,
    pub name: Option<String>,
    pub ip_address: Option<String>,
    pub created_at: String,
    pub last_seen_at: String,
}

/// `keyhold user show`: the account and its devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: UserSummary,
    pub devices: Vec<DeviceSummary>,
}

const OPERATOR: &str = "operator";

impl Auth {
    fn summary(&self, user: &UserRecord, sessions: usize) -> UserSummary {
        UserSummary {
            id: user.id.to_string(),
            email: user.email.clone(),
            username: user.username.clone(),
            email_verified: user.email_verified,
            state: match user.state {
                AccountState::Active => "active",
                AccountState::Disabled => "disabled",
            }
            .to_string(),
            two_factor: user.two_factor.as_ref().map(|t| {
                match t.method {
                    SecondFactor::Email => "EMAIL",
                    SecondFactor::Totp => "TOTP",
                }
                .to_string()
            }),
            created_at: iso(user.created_at),
            last_login_at: user.current_login_at.map(iso),
            device_sessions: sessions,
        }
    }

    async fn account(&self, email: &str) -> Result<UserRecord> {
        let email = Email::parse("email", email)?;
        self.store
            .user_by_email(email.as_str())
            .await?
            .ok_or_else(|| Error::bad_input("email", "no account has this address"))
    }

    async fn operator_event(&self, event: Event, user: &UserRecord) {
        let who = Subject {
            email: Some(&user.email),
            ..Subject::user(user.id)
        };
        self.audit(event, who, OPERATOR).await;
    }

    /// Every account, or those whose address contains `email` (case-insensitive).
    pub async fn list_users(&self, email: Option<&str>) -> Result<Vec<UserSummary>> {
        let wanted = email.map(str::to_lowercase);
        let mut users = Vec::new();
        for user in self.store.all_users().await? {
            if wanted.as_deref().is_some_and(|w| !user.email.contains(w)) {
                continue;
            }
            let sessions = self.store.sessions_of(user.id).await?.len();
            users.push(self.summary(&user, sessions));
        }
        users.sort_by(|a, b| a.email.cmp(&b.email));
        Ok(users)
    }

    pub async fn show_user(&self, email: &str) -> Result<UserDetail> {
        let user = self.account(email).await?;
        let sessions = self.store.sessions_of(user.id).await?;
        let devices = sessions
            .iter()
            .map(|s: &SessionRecord| DeviceSummary {
                device_id: s.device_id.clone(),
                name: s.name.clone(),
                ip_address: s.ip_address.clone(),
                created_at: iso(s.created_at),
                last_seen_at: iso(self.last_seen(s.id).unwrap_or(0).max(s.last_seen_at)),
            })
            .collect();
        Ok(UserDetail {
            user: self.summary(&user, sessions.len()),
            devices,
        })
    }

    /// Makes an account for `email` with no usable password and mails it a link to choose
    /// one (valid for `registration.verification_ttl`). Using the link verifies the address.
    pub async fn invite_user(&self, email: &str) -> Result<UserSummary> {
        let email = Email::parse("email", email)?;
        // Nobody knows this password: the account opens only through the mailed link.
        let unusable = self
            .passwords
            .hash(super::secrets::random_token::<32>())
            .await?;
        let base = crate::domain::profile::username_from(&email);
        let mut user = UserRecord::new(email.as_str(), &base, unusable, self.now());
        let mut attempt = 0u32;
        loop {
            match self.store.insert_user(&user).await? {
                CreateOutcome::Created => break,
                CreateOutcome::EmailTaken { .. } => {
                    return Err(Error::bad_input(
                        "email",
                        "an account has this address already",
                    ));
                }
                CreateOutcome::UsernameTaken => {
                    attempt += 1;
                    user.username = super::accounts::another_username(&base, attempt);
                }
            }
        }
        let ttl = self.config.registration.verification_ttl;
        self.mail_reset_code(&user, Template::Invite, ttl).await?;
        self.audit(
            Event::Registered,
            Subject {
                email: Some(&user.email),
                ..Subject::user(user.id)
            },
            "invited",
        )
        .await;
        Ok(self.summary(&user, 0))
    }

    /// Disables (in one transaction, every device session, pending challenge, step-up code
    /// and reset code ends; sign-in answers `ACCOUNT_DISABLED`) or enables.
    pub async fn set_disabled(&self, email: &str, disabled: bool) -> Result<UserSummary> {
        let id = self.account(email).await?.id;
        let (state, ends) = if disabled {
            (AccountState::Disabled, Ends::Everything { keep: None })
        } else {
            (AccountState::Active, Ends::Nothing)
        };
        let changed = self
            .store
            .change_user(id, AccountChange::ending(ends), |u| {
                u.state = state;
                Ok(())
            })
            .await?;
        let (user, ()) = self.operator_change(changed)?;
        let event = if disabled {
            Event::AccountDisabled
        } else {
            Event::AccountEnabled
        };
        self.operator_event(event, &user).await;
        Ok(self.summary(&user, 0))
    }

    /// Removes the account with its device sessions, challenges and codes, in one
    /// transaction.
    pub async fn delete_user(&self, email: &str) -> Result<()> {
        let id = self.account(email).await?.id;
        let (user, ended) = self.store.delete_user(id).await?.ok_or_else(gone)?;
        self.forget_sessions(&ended);
        self.operator_event(Event::AccountDeleted, &user).await;
        Ok(())
    }

    /// Turns two-factor sign-in off (a lost phone): the next sign-in needs the password only.
    /// Every device session ends with it (one may be the lost phone).
    pub async fn reset_two_factor(&self, email: &str) -> Result<UserSummary> {
        let id = self.account(email).await?.id;
        let changed = self
            .store
            .change_user(
                id,
                AccountChange::ending(Ends::Everything { keep: None }),
                |u| {
                    u.two_factor = None;
                    u.pending_totp = None;
                    Ok(())
                },
            )
            .await?;
        let (user, ()) = self.operator_change(changed)?;
        self.operator_event(Event::TwoFactorDisabled, &user).await;
        Ok(self.summary(&user, 0))
    }

    /// An operator's change, where a vanished account is `NOT_FOUND`.
    fn operator_change(&self, changed: Changed<(), Error>) -> Result<(UserRecord, ())> {
        match changed {
            Changed::Missing => Err(gone()),
            other => self.changed(other),
        }
    }

    /// Ends every device session of the account. Returns how many.
    pub async fn logout_everywhere(&self, email: &str) -> Result<usize> {
        let user = self.account(email).await?;
        let ended = self.end_every_session(&user).await?;
        self.operator_event(Event::LoggedOut, &user).await;
        Ok(ended)
    }

    async fn end_every_session(&self, user: &UserRecord) -> Result<usize> {
        let ids: Vec<_> = self
            .store
            .sessions_of(user.id)
            .await?
            .iter()
            .map(|s| s.id)
            .collect();
        self.store.end_sessions(&ids).await?;
        self.forget_sessions(&ids);
        Ok(ids.len())
    }
}

/// An account that went away while an operator changed it.
fn gone() -> Error {
    Error::bad_input("email", "no account has this address")
}
