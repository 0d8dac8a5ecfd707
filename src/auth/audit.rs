//! Writing security events to the audit log. Best effort: a failure to record is logged,
//! and never fails the operation it describes. Never a secret: ids, addresses, IPs, devices.

use std::net::IpAddr;

use uuid::Uuid;

use super::Auth;
use crate::store::AuditRecord;

/// The events Keyhold records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Registered,
    Verified,
    EmailChanged,
    SignedIn,
    SignInFailed,
    TwoFactorCodeSent,
    TwoFactorAccepted,
    TwoFactorRefused,
    TwoFactorEnabled,
    TwoFactorDisabled,
    PasswordChanged,
    PasswordReset,
    LoggedOut,
    RefreshTokenReuse,
    RateLimited,
    /// By an operator (`keyhold user …`).
    AccountDisabled,
    AccountEnabled,
    AccountDeleted,
    PasskeyAdded,
    PasskeyRemoved,
    /// A passkey answer whose signature counter went back: a cloned authenticator.
    PasskeyCloned,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Registered => "registered",
            Event::Verified => "verified",
            Event::EmailChanged => "email_changed",
            Event::SignedIn => "signed_in",
            Event::SignInFailed => "sign_in_failed",
            Event::TwoFactorCodeSent => "two_factor_code_sent",
            Event::TwoFactorAccepted => "two_factor_accepted",
            Event::TwoFactorRefused => "two_factor_refused",
            Event::TwoFactorEnabled => "two_factor_enabled",
            Event::TwoFactorDisabled => "two_factor_disabled",
            Event::PasswordChanged => "password_changed",
            Event::PasswordReset => "password_reset",
            Event::LoggedOut => "logged_out",
            Event::RefreshTokenReuse => "refresh_token_reuse",
            Event::RateLimited => "rate_limited",
            Event::AccountDisabled => "account_disabled",
            Event::AccountEnabled => "account_enabled",
            Event::AccountDeleted => "account_deleted",
            Event::PasskeyAdded => "passkey_added",
            Event::PasskeyRemoved => "passkey_removed",
            Event::PasskeyCloned => "passkey_cloned",
        }
    }
}

/// Who and where, as far as known.
#[derive(Debug, Default, Clone)]
pub struct Subject<'a> {
    pub user_id: Option<Uuid>,
    pub email: Option<&'a str>,
    pub ip: Option<IpAddr>,
    pub device: Option<&'a str>,
}

impl Subject<'_> {
    /// The account `id`, and nothing else known.
    pub fn user(id: Uuid) -> Subject<'static> {
        Subject {
            user_id: Some(id),
            ..Subject::default()
        }
    }
}

impl Auth {
    /// Records `event` about `who` with `outcome` (`ok`, or the refusal's code).
    pub(crate) async fn audit(&self, event: Event, who: Subject<'_>, outcome: &str) {
        self.count_event(event, outcome);
        let record = AuditRecord {
            at: self.now(),
            event: event.as_str().to_string(),
            user_id: who.user_id,
            email: who.email.map(str::to_string),
            ip: who.ip.map(|ip| ip.to_string()),
            device: who.device.map(str::to_string),
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.store.append_audit(&record).await {
            tracing::error!(error = %e, event = event.as_str(), "cannot write the audit log");
        }
    }

    /// The metrics of an audited event: every event by name and outcome, and the outcomes
    /// an operator watches on their own.
    fn count_event(&self, event: Event, outcome: &str) {
        let m = &self.metrics;
        m.count(
            "keyhold_auth_events_total",
            &[("event", event.as_str()), ("outcome", outcome)],
        );
        match event {
            Event::SignedIn => m.count("keyhold_sign_ins_total", &[("outcome", "ok")]),
            Event::SignInFailed => m.count("keyhold_sign_ins_total", &[("outcome", "failed")]),
            Event::TwoFactorCodeSent => {
                if outcome == "sign_in" {
                    m.count(
                        "keyhold_sign_ins_total",
                        &[("outcome", "second_factor_pending")],
                    );
                }
                m.count("keyhold_codes_total", &[("result", "sent")]);
            }
            Event::TwoFactorAccepted => m.count("keyhold_codes_total", &[("result", "accepted")]),
            Event::TwoFactorRefused => m.count("keyhold_codes_total", &[("result", "refused")]),
            Event::RateLimited => m.count("keyhold_rate_limited_total", &[("limit", outcome)]),
            _ => {}
        }
    }
}
