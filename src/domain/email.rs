use std::fmt;

use crate::error::Error;

/// The longest address SMTP can carry in a forward path (RFC 5321 §4.5.3.1.3).
const MAX_LEN: usize = 254;

/// A syntactically valid e-mail address, normalised to lower case so that it is stored and
/// compared case-insensitively.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    /// Accepts `local@domain.tld`: no display name, no domain literal, at least one dot in the
    /// domain, no surrounding white space, at most 254 characters.
    pub fn parse(field: &str, input: &str) -> Result<Email, Error> {
        let refuse =
            |why: &str| Error::bad_input(field, format!("not a valid e-mail address: {why}"));
        if input.len() > MAX_LEN {
            return Err(refuse("longer than 254 characters"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse("contains white space or control characters"));
        }
        let options = email_address::Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        email_address::EmailAddress::parse_with_options(input, options)
            .map_err(|e| refuse(&e.to_string()))?;
        Ok(Email(input.to_lowercase()))
    }

    /// Wraps an already-normalised address from storage without checking it again.
    pub(crate) fn unchecked(stored: &str) -> Email {
        Email(stored.to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(local, _)| local)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_normalised_to_lower_case() {
        let e = Email::parse("email", "Ada.Lovelace@Example.COM").unwrap();
        assert_eq!(e.as_str(), "ada.lovelace@example.com");
        assert_eq!(e.local_part(), "ada.lovelace");
    }

    #[test]
    fn malformed_addresses_are_refused_naming_the_field() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            " a@example.com",
            "a@example.com\n",
            "Ada <a@example.com>",
            "a@[127.0.0.1]",
            "a@@example.com",
            "a\u{0}@example.com",
        ] {
            let err = Email::parse("credentials.email", bad).unwrap_err();
            assert_eq!(err.code(), "BAD_USER_INPUT", "{bad:?}");
            assert_eq!(err.field(), Some("credentials.email"), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse("email", &long).is_err());
    }
}
