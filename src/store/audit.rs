//! The audit log: security events, kept for `storage.audit_retention`.

#[allow(unused_imports)]
use super::*;
#[allow(unused_imports)]
use crate::domain::records::*;
use serde::{Deserialize, Serialize};
#[allow(unused_imports)]
use uuid::Uuid;

/// One security event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Unix seconds.
    pub at: i64,
    /// `registered`, `signed_in`, `sign_in_failed`, `rate_limited` … (see `auth::audit`).
    pub event: String,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// Events at or after `since`, oldest first, at most `limit`; with `email`, only those
    /// naming that address or the account that has it.
    async fn audit_since(
        &self,
        since: i64,
        email: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Removes events older than `before`; returns how many.
    async fn prune_audit(&self, before: i64) -> Result<usize, StoreError>;
}
