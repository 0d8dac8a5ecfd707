//! The GraphQL API of `shared/api/schema.graphql`: the schema with its limits, one module per
//! area adding its resolvers to the merged root types, and the mapping of errors.

pub mod account;
pub mod context;
pub mod error;
pub mod guard;
mod metrics;
pub mod passkeys;
pub mod password;
pub mod scalars;
pub mod session;
pub mod two_factor;
pub mod types;

use std::sync::Arc;

use async_graphql::{EmptySubscription, MergedObject, Schema};

use crate::auth::Auth;
use crate::config::GraphqlConfig;

pub use context::RequestMeta;

/// The query root: each area's queries, merged.
#[derive(MergedObject, Default)]
#[graphql(name = "RootQueryType")]
pub struct RootQuery(
    account::AccountQuery,
    session::SessionQuery,
    passkeys::PasskeyQuery,
);

/// The mutation root: each area's mutations, merged.
#[derive(MergedObject, Default)]
#[graphql(name = "RootMutationType")]
pub struct RootMutation(
    account::AccountMutation,
    session::SessionMutation,
    two_factor::TwoFactorMutation,
    password::PasswordMutation,
    passkeys::PasskeyMutation,
);

pub type KeyholdSchema = Schema<RootQuery, RootMutation, EmptySubscription>;

/// The schema with the contract's limits: depth, complexity, and introspection on or off.
/// Depth is [`guard::check_depth`]'s, which lets introspection reach as deep as GraphQL
/// tools send it; async-graphql's own check stays behind it at the larger of the two.
pub fn build_schema(config: &GraphqlConfig, auth: Arc<Auth>) -> KeyholdSchema {
    let depths = guard::DepthLimits::new(config.max_depth, config.introspection);
    let mut builder = Schema::build(
        RootQuery::default(),
        RootMutation::default(),
        EmptySubscription,
    )
    .limit_depth(depths.deepest())
    .limit_complexity(config.max_complexity)
    .extension(metrics::RequestMetrics::new(auth.clone(), depths))
    .data(auth);
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The SDL the server serves.
pub fn sdl() -> String {
    Schema::build(
        RootQuery::default(),
        RootMutation::default(),
        EmptySubscription,
    )
    .finish()
    .sdl()
}
