//! Integration tests: a real Keyhold over HTTPS on loopback, one file per area.

mod helpers;
mod smtp_sink;

mod accounts;
mod audit;
mod backups;
mod browser;
mod connections;
mod contract;
mod expiry;
mod graphql_endpoint;
mod hardening;
mod hostile;
mod hostile_traffic;
mod instances;
mod limits;
mod logs;
mod mail;
mod mail_queue;
mod operations;
mod passkeys;
mod passwords;
mod process;
mod properties;
mod races;
mod sessions;
mod storage;
mod transport;
mod two_factor;
