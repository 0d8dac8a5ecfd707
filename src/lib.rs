//! Keyhold: a self-contained authentication server. One binary serves a GraphQL API over TLS
//! and keeps users, device sessions and pending codes in an embedded sled database.
//!
//! Start it in-process with [`Application::build`]; see the README.
// `unsafe_code` is forbidden for every target by the `[lints]` table of Cargo.toml.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod config;
pub mod connections;
pub mod domain;
pub mod error;
pub mod files;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod migrate;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use app::Application;
pub use clock::Clock;
pub use config::Config;
pub use error::Error;

/// The README's Rust example compiles (it is the copy-paste start of `keyhold::testing`).
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
