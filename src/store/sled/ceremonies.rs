//! Passkey sign-in ceremonies: one record each, removed by the finish that takes it.

use uuid::Uuid;

use crate::store::CeremonyStore;

use super::keys::{CEREMONIES, ExpiryKind};
use super::records::{CeremonyRecord, decode, encode};
use super::{Store, StoreError};

#[async_trait::async_trait]
impl CeremonyStore for Store {
    async fn put_ceremony(&self, ceremony: &CeremonyRecord) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            let id = ceremony.id.as_bytes();
            self.index_expiry(ExpiryKind::Ceremony, id, ceremony.expires_at)?;
            self.ceremonies.insert(id, encode(ceremony))?;
            Ok(())
        })
        .await
    }

    async fn take_ceremony(&self, id: Uuid) -> Result<Option<CeremonyRecord>, StoreError> {
        // One atomic removal: of two finishes racing, one gets the record and one nothing.
        // Durable before it answers, so that a crash cannot bring a used ceremony back.
        let taken = self
            .durably_if(
                || {
                    let _writing = self.writing();
                    Ok(self.ceremonies.remove(id.as_bytes())?)
                },
                Option::is_some,
            )
            .await?;
        taken.map(|bytes| decode(CEREMONIES, &bytes)).transpose()
    }
}
