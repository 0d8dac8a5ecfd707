//! The contract's scalars.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};

use crate::domain::Email;

/// An e-mail address: validated on the way in, kept as the client wrote it (the contract
/// echoes "the address as given"), compared through [`EmailAddress::normalized`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailAddress {
    given: String,
    normalized: Email,
}

impl EmailAddress {
    pub fn normalized(&self) -> &Email {
        &self.normalized
    }

    pub fn as_given(&self) -> &str {
        &self.given
    }

    /// An address read back from storage that no longer passes today's rules: shown as is.
    pub(crate) fn unchecked(stored: &str) -> EmailAddress {
        EmailAddress {
            given: stored.to_string(),
            normalized: Email::unchecked(stored),
        }
    }
}

impl From<Email> for EmailAddress {
    fn from(email: Email) -> Self {
        EmailAddress {
            given: email.as_str().to_string(),
            normalized: email,
        }
    }
}

/// "An e-mail address. Malformed input is refused with BAD_USER_INPUT; stored and compared case-insensitively."
#[Scalar(name = "EmailAddress")]
impl ScalarType for EmailAddress {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(given) => match Email::parse("email", &given) {
                Ok(normalized) => Ok(EmailAddress { given, normalized }),
                Err(e) => Err(InputValueError::custom(e.to_string())),
            },
            other => Err(InputValueError::expected_type(other)),
        }
    }

    // Checked during validation too, so a bad literal is refused before anything runs, with
    // the argument's name in the message.
    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(s) if Email::parse("email", s).is_ok())
    }

    fn to_value(&self) -> Value {
        Value::String(self.given.clone())
    }
}

/// "An opaque unique identifier (a UUID in text form)."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RId(pub uuid::Uuid);

#[Scalar(name = "rID")]
impl ScalarType for RId {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => uuid::Uuid::parse_str(s)
                .map(RId)
                .map_err(|_| InputValueError::custom("not an id (a UUID in text form)")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(s) if uuid::Uuid::parse_str(s).is_ok())
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.hyphenated().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

    struct Query;

    #[Object]
    impl Query {
        async fn echo(&self, email: EmailAddress) -> EmailAddress {
            email
        }
        async fn id(&self, id: RId) -> RId {
            id
        }
    }

    async fn run(query: &str) -> async_graphql::Response {
        let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
        let mut response = schema.execute(query).await;
        crate::graphql::error::label_engine_errors(&mut response);
        response
    }

    #[tokio::test]
    async fn a_valid_address_comes_back_as_given() {
        let response = run(r#"{ echo(email: "Ada@Example.com") }"#).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        assert_eq!(
            response.data.into_json().unwrap()["echo"],
            "Ada@Example.com"
        );
    }

    #[tokio::test]
    async fn a_malformed_address_is_bad_user_input_naming_the_argument() {
        let response = run(r#"{ echo(email: "not-an-address") }"#).await;
        let error = &response.errors[0];
        let ext = error.extensions.as_ref().expect("extensions");
        assert_eq!(ext.get("code"), Some(&Value::from("BAD_USER_INPUT")));
        assert_eq!(ext.get("field"), Some(&Value::from("email")));
    }

    #[tokio::test]
    async fn an_id_must_be_a_uuid() {
        let ok = run(r#"{ id(id: "7f1d3c1e-8a0b-4b8e-9a59-3f3a9e3c2b11") }"#).await;
        assert!(ok.errors.is_empty(), "{:?}", ok.errors);
        let bad = run(r#"{ id(id: "42") }"#).await;
        let ext = bad.errors[0].extensions.as_ref().expect("extensions");
        assert_eq!(ext.get("code"), Some(&Value::from("BAD_USER_INPUT")));
    }
}
