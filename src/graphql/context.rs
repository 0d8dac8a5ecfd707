//! Who is calling: what the HTTP layer learned about the request, and the signed-in caller.

use std::net::IpAddr;
use std::sync::Arc;

use async_graphql::Context;

use super::error::ResultExt;
use crate::auth::{Auth, Caller, Origin};

/// What the HTTP layer knows about the request, attached to every GraphQL request.
#[derive(Clone, Default)]
pub struct RequestMeta {
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The token of `Authorization: Bearer …`; an `Authorization` header of another form
    /// is kept as an empty token, which never verifies.
    bearer: Option<String>,
}

impl RequestMeta {
    pub fn new(
        client_ip: Option<IpAddr>,
        user_agent: Option<String>,
        authorization: Option<&str>,
    ) -> Self {
        let bearer = authorization.map(|value| {
            let value = value.trim();
            match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    token.trim().to_string()
                }
                _ => String::new(),
            }
        });
        RequestMeta {
            client_ip,
            user_agent,
            bearer,
        }
    }

    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }

    /// Where the request came from, for the use cases.
    pub fn origin(&self) -> Origin {
        Origin {
            ip: self.client_ip,
            user_agent: self.user_agent.clone(),
        }
    }
}

impl std::fmt::Debug for RequestMeta {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMeta")
            .field("client_ip", &self.client_ip)
            .field("user_agent", &self.user_agent)
            .field("bearer", &self.bearer.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

pub fn auth<'a>(ctx: &Context<'a>) -> &'a Arc<Auth> {
    ctx.data_unchecked::<Arc<Auth>>()
}

pub fn meta<'a>(ctx: &Context<'a>) -> &'a RequestMeta {
    static NONE: std::sync::OnceLock<RequestMeta> = std::sync::OnceLock::new();
    ctx.data_opt::<RequestMeta>()
        .unwrap_or_else(|| NONE.get_or_init(RequestMeta::default))
}

/// The signed-in caller, or `UNAUTHENTICATED` / `INVALID_TOKEN`.
pub async fn caller(ctx: &Context<'_>) -> async_graphql::Result<Caller> {
    auth(ctx).authenticate(meta(ctx).bearer()).await.gql()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_the_header_and_never_printed() {
        let meta = RequestMeta::new(None, None, Some("Bearer abc.def.ghi"));
        assert_eq!(meta.bearer(), Some("abc.def.ghi"));
        assert!(!format!("{meta:?}").contains("abc.def"));
        let lower = RequestMeta::new(None, None, Some("bearer xyz"));
        assert_eq!(lower.bearer(), Some("xyz"));
        let basic = RequestMeta::new(None, None, Some("Basic dXNlcjpwYXNz"));
        assert_eq!(basic.bearer(), Some(""));
        assert_eq!(RequestMeta::new(None, None, None).bearer(), None);
    }
}
