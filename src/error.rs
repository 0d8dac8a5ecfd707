//! The one domain error. Every variant has a stable code, which clients read as
//! `extensions.code`; the mapping to GraphQL lives in `graphql::error`.

use std::time::Duration;

/// An expected failure of a use case, or an internal one whose detail stays in the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("authentication required")]
    Unauthenticated,
    #[error("not allowed")]
    Forbidden,
    #[error("{message}")]
    BadUserInput {
        /// The argument or JSON key at fault, as the client wrote it.
        field: String,
        message: String,
    },
    #[error("wrong e-mail address or password")]
    InvalidCredentials,
    #[error("the code is wrong or was already used")]
    InvalidCode,
    #[error("the code has expired")]
    CodeExpired,
    #[error("too many wrong attempts")]
    TooManyAttempts { retry_after: Duration },
    #[error("too many requests; try again later")]
    RateLimited { retry_after: Duration },
    #[error("the password is too weak: {reason}")]
    WeakPassword { reason: String },
    #[error("the e-mail address has not been verified yet")]
    EmailNotVerified,
    #[error("the account is disabled")]
    AccountDisabled,
    #[error("the token is invalid or has expired")]
    InvalidToken,
    #[error("registration is closed")]
    RegistrationClosed,
    /// Anything unexpected. The cause is logged; clients see only `INTERNAL`.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// Every stable code, in the order of the contract.
    pub const CODES: [&'static str; 14] = [
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "BAD_USER_INPUT",
        "INVALID_CREDENTIALS",
        "INVALID_CODE",
        "CODE_EXPIRED",
        "TOO_MANY_ATTEMPTS",
        "RATE_LIMITED",
        "WEAK_PASSWORD",
        "EMAIL_NOT_VERIFIED",
        "ACCOUNT_DISABLED",
        "INVALID_TOKEN",
        "REGISTRATION_CLOSED",
        "INTERNAL",
    ];

    /// The stable code clients see as `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthenticated => "UNAUTHENTICATED",
            Error::Forbidden => "FORBIDDEN",
            Error::BadUserInput { .. } => "BAD_USER_INPUT",
            Error::InvalidCredentials => "INVALID_CREDENTIALS",
            Error::InvalidCode => "INVALID_CODE",
            Error::CodeExpired => "CODE_EXPIRED",
            Error::TooManyAttempts { .. } => "TOO_MANY_ATTEMPTS",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::WeakPassword { .. } => "WEAK_PASSWORD",
            Error::EmailNotVerified => "EMAIL_NOT_VERIFIED",
            Error::AccountDisabled => "ACCOUNT_DISABLED",
            Error::InvalidToken => "INVALID_TOKEN",
            Error::RegistrationClosed => "REGISTRATION_CLOSED",
            Error::Internal(_) => "INTERNAL",
        }
    }

    /// Seconds to wait before trying again, for the codes that carry one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::TooManyAttempts { retry_after } | Error::RateLimited { retry_after } => {
                // Round up: "retry after 0 s" would invite an immediate retry.
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            _ => None,
        }
    }

    /// The offending field, for `BAD_USER_INPUT`.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::BadUserInput { field, .. } => Some(field),
            _ => None,
        }
    }

    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::BadUserInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// `RATE_LIMITED`, to retry in `seconds` (0 when negative).
    pub fn rate_limited(seconds: i64) -> Error {
        Error::RateLimited {
            retry_after: Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        }
    }

    /// `TOO_MANY_ATTEMPTS`, to retry in `seconds` (0 when negative).
    pub fn too_many_attempts(seconds: i64) -> Error {
        Error::TooManyAttempts {
            retry_after: Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        }
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Error {
        Error::Internal(cause.into())
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Error::Internal(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_one_of_the_contracts_codes() {
        let all = [
            Error::Unauthenticated,
            Error::Forbidden,
            Error::bad_input("email", "bad"),
            Error::InvalidCredentials,
            Error::InvalidCode,
            Error::CodeExpired,
            Error::TooManyAttempts {
                retry_after: Duration::from_secs(1),
            },
            Error::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            Error::WeakPassword {
                reason: "short".into(),
            },
            Error::EmailNotVerified,
            Error::AccountDisabled,
            Error::InvalidToken,
            Error::RegistrationClosed,
            Error::internal(anyhow::anyhow!("disk on fire")),
        ];
        let codes: Vec<_> = all.iter().map(Error::code).collect();
        assert_eq!(codes, Error::CODES);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = Error::RateLimited {
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(e.retry_after(), Some(2));
        assert_eq!(Error::InvalidCode.retry_after(), None);
    }

    #[test]
    fn an_internal_error_does_not_show_its_cause() {
        let e = Error::internal(anyhow::anyhow!("/var/lib/keyhold/db: permission denied"));
        assert_eq!(e.to_string(), "internal error");
    }
}
