//! Passkey sign-in ceremonies: a row each, taken by `DELETE … RETURNING`.

use uuid::Uuid;

use crate::domain::records::CeremonyRecord;
use crate::store::{CeremonyStore, StoreError};

use super::{Store, db_error, json, record};

#[async_trait::async_trait]
impl CeremonyStore for Store {
    async fn put_ceremony(&self, ceremony: &CeremonyRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let insert = client
            .prepare_cached("INSERT INTO ceremonies (id, expires_at, data) VALUES ($1, $2, $3)")
            .await
            .map_err(db_error)?;
        client
            .execute(
                &insert,
                &[&ceremony.id, &ceremony.expires_at, &json(ceremony)],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn take_ceremony(&self, id: Uuid) -> Result<Option<CeremonyRecord>, StoreError> {
        let client = self.client().await?;
        let take = client
            .prepare_cached("DELETE FROM ceremonies WHERE id = $1 RETURNING data")
            .await
            .map_err(db_error)?;
        let row = client.query_opt(&take, &[&id]).await.map_err(db_error)?;
        row.map(|row| record(&row, 0, "ceremonies")).transpose()
    }
}
