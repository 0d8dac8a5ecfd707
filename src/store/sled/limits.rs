//! The abuse limits of the sled backend: in this process's memory, since one process opens
//! the store ([`crate::limits::Limits`]). They start afresh with the process.

use crate::limits::{Limit, Refused};
use crate::store::LimitStore;

use super::{Store, StoreError};

#[async_trait::async_trait]
impl LimitStore for Store {
    async fn hit_limit(
        &self,
        limit: Limit,
        key: &str,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        Ok(self.limits.hit(limit, key, now))
    }

    async fn check_lockout(
        &self,
        email: &str,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        Ok(self.limits.check_account(email, now))
    }

    async fn record_sign_in_failure(&self, email: &str, now: i64) -> Result<(), StoreError> {
        self.limits.record_failure(email, now);
        Ok(())
    }

    async fn record_sign_in_success(&self, email: &str) -> Result<(), StoreError> {
        self.limits.record_success(email);
        Ok(())
    }

    async fn prune_limits(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self.limits.prune(now))
    }
}
