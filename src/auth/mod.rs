//! The use cases: accounts, sign-in and second factor, tokens, passwords. Nothing here knows
//! GraphQL or HTTP; resolvers call one function here and map its error.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mail::Mailer;
use crate::store::Store;

/// Everything the use cases need, shared by every request.
#[derive(Clone)]
pub struct Auth {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub mailer: Mailer,
}

/// A signed-in caller, proven by a valid access token.
///
/// No access token can be issued yet (sign-in arrives with the accounts work), so there is no
/// way to build one: the type has no values, and every authenticated operation refuses.
#[derive(Debug)]
pub enum Caller {}

impl Auth {
    /// Who holds `bearer`: `UNAUTHENTICATED` without a token, `INVALID_TOKEN` for one that
    /// does not verify.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Caller> {
        match bearer {
            None => Err(Error::Unauthenticated),
            Some(_) => Err(Error::InvalidToken),
        }
    }
}
