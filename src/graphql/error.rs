//! The one place domain errors become GraphQL errors, and engine errors (syntax, validation,
//! limits, argument types) get a stable code too.

use async_graphql::{ErrorExtensions, Response, ServerError, Value};

use crate::error::Error;

/// The GraphQL form of a domain error: message, `extensions.code`, and `retryAfter` or
/// `field` where the code carries one. An internal error is logged with its cause chain and
/// reaches the client only as `INTERNAL`.
pub fn to_graphql(error: Error) -> async_graphql::Error {
    if let Error::Internal(cause) = &error {
        tracing::error!(error = format!("{cause:#}"), "internal error");
    }
    let code = error.code();
    let retry_after = error.retry_after();
    let field = error.field().map(str::to_string);
    async_graphql::Error::new(error.to_string()).extend_with(|_, ext| {
        ext.set("code", code);
        if let Some(seconds) = retry_after {
            ext.set("retryAfter", seconds);
        }
        if let Some(field) = &field {
            ext.set("field", field.as_str());
        }
    })
}

/// `result.gql()?` in a resolver: the domain error in its GraphQL form.
pub trait ResultExt<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> ResultExt<T> for Result<T, Error> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(to_graphql)
    }
}

/// Gives every error without a code one: errors of the request itself (syntax, validation,
/// depth and complexity limits, argument values) are `BAD_USER_INPUT` naming the argument
/// or `query`; anything else without a code is a resolver bug and becomes `INTERNAL`.
pub fn label_engine_errors(response: &mut Response) {
    for error in &mut response.errors {
        label(error);
    }
}

fn label(error: &mut ServerError) {
    if error
        .extensions
        .as_ref()
        .is_some_and(|ext| ext.get("code").is_some())
    {
        return;
    }
    if is_request_error(error) {
        let field = quoted_after(&error.message, "argument \"")
            .or_else(|| word_after(&error.message, "Variable "))
            .or_else(|| quoted_after(&error.message, "variable \"$"))
            .or_else(|| quoted_after(&error.message, "Variable \"$"))
            .unwrap_or_else(|| "query".to_string());
        let ext = error.extensions.get_or_insert_with(Default::default);
        ext.set("code", "BAD_USER_INPUT");
        ext.set("field", Value::from(field));
    } else {
        tracing::error!(message = %error.message, "resolver error without a code");
        error.message = "internal error".to_string();
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", "INTERNAL");
    }
}

/// An error without a path was raised before execution (syntax, validation, limits): the
/// request's fault. With a path, only a refused argument value is.
fn is_request_error(error: &ServerError) -> bool {
    error.path.is_empty()
        || error.message.starts_with("Invalid value for argument")
        || error.message.starts_with("Failed to parse")
        || error.message.starts_with("Expected input type")
        || error.message.starts_with("Variable ")
}

fn word_after(message: &str, marker: &str) -> Option<String> {
    let rest = message.strip_prefix(marker)?;
    let word: String = rest
        .trim_start_matches('$')
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

fn quoted_after(message: &str, marker: &str) -> Option<String> {
    let start = message.find(marker)? + marker.len();
    let rest = &message[start..];
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// A response for a request refused before it reached the schema (too big, not JSON, too
/// many operations, a mutation over GET).
pub fn request_error(message: impl Into<String>, field: &str) -> Response {
    Response::from_errors(vec![bad_input(message, field)])
}

/// `BAD_USER_INPUT` naming `field`, for an error of the request itself.
pub fn bad_input(message: impl Into<String>, field: &str) -> ServerError {
    let mut error = ServerError::new(message, None);
    let ext = error.extensions.get_or_insert_with(Default::default);
    ext.set("code", "BAD_USER_INPUT");
    ext.set("field", field);
    error
}

/// `BAD_USER_INPUT` for the document's shape (`field: "query"`).
pub fn bad_query(message: impl Into<String>) -> ServerError {
    bad_input(message, "query")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ext(error: &async_graphql::Error, key: &str) -> Option<Value> {
        error.extensions.as_ref().and_then(|e| e.get(key).cloned())
    }

    #[test]
    fn a_domain_error_carries_its_code_and_details() {
        let e = to_graphql(Error::RateLimited {
            retry_after: Duration::from_secs(30),
        });
        assert_eq!(ext(&e, "code"), Some(Value::from("RATE_LIMITED")));
        assert_eq!(ext(&e, "retryAfter"), Some(Value::from(30u64)));
        let e = to_graphql(Error::bad_input("password", "too long"));
        assert_eq!(ext(&e, "field"), Some(Value::from("password")));
        assert_eq!(e.message, "too long");
    }

    #[test]
    fn an_internal_error_shows_no_detail() {
        let e = to_graphql(Error::internal(anyhow::anyhow!("sled: /data/db corrupt")));
        assert_eq!(e.message, "internal error");
        assert_eq!(ext(&e, "code"), Some(Value::from("INTERNAL")));
    }

    #[test]
    fn a_resolver_error_without_a_code_becomes_internal() {
        let mut error = ServerError::new("connection refused to 10.0.0.5", None);
        error.path = vec![async_graphql::PathSegment::Field("userProfile".into())];
        let mut response = Response::from_errors(vec![error]);
        label_engine_errors(&mut response);
        assert_eq!(response.errors[0].message, "internal error");
        let code = response.errors[0].extensions.as_ref().unwrap().get("code");
        assert_eq!(code, Some(&Value::from("INTERNAL")));
    }

    #[test]
    fn a_request_error_is_bad_user_input_naming_the_argument() {
        let mut response = Response::from_errors(vec![ServerError::new(
            "Invalid value for argument \"email\", expected type \"EmailAddress\"",
            None,
        )]);
        label_engine_errors(&mut response);
        let ext = response.errors[0].extensions.as_ref().unwrap();
        assert_eq!(ext.get("code"), Some(&Value::from("BAD_USER_INPUT")));
        assert_eq!(ext.get("field"), Some(&Value::from("email")));
    }
}
