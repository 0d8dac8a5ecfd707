//! Passkey sign-in ceremonies between their two calls.

use super::*;
use crate::domain::records::CeremonyRecord;
use uuid::Uuid;

#[async_trait::async_trait]
pub trait CeremonyStore: Send + Sync {
    /// Stores a new ceremony.
    async fn put_ceremony(&self, ceremony: &CeremonyRecord) -> Result<(), StoreError>;
    /// Removes the ceremony `id` and returns it, expired or not: of finishes racing for one
    /// ceremony, exactly one gets it.
    async fn take_ceremony(&self, id: Uuid) -> Result<Option<CeremonyRecord>, StoreError>;
}
