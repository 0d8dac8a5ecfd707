//! Forgotten-password codes. A new password is applied by `UserStore::change_user`, with
//! everything it ends.

use crate::store::PasswordStore;

use super::keys::{ExpiryKind, RESET_CODES};
use super::mail_queue::queue_in;
use super::records::{MailQueueRecord, ResetCodeRecord, decode, encode};
use super::{Store, StoreError, tx_result};
use sled::Transactional;

#[async_trait::async_trait]
impl PasswordStore for Store {
    async fn put_reset_code(
        &self,
        hash: &[u8; 32],
        record: &ResetCodeRecord,
        mail: &[MailQueueRecord],
    ) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            self.index_expiry(ExpiryKind::ResetCode, hash, record.expires_at)?;
            let bytes = encode(record);
            tx_result(
                (&self.reset_codes, &self.reset_by_user, &self.mail_queue).transaction(
                    |(codes, by_user, queue)| {
                        if let Some(old) = by_user.get(record.user_id.as_bytes())? {
                            codes.remove(old)?;
                        }
                        codes.insert(hash, bytes.as_slice())?;
                        by_user.insert(record.user_id.as_bytes(), hash)?;
                        queue_in(queue, mail)?;
                        Ok(())
                    },
                ),
            )
        })
        .await
    }

    async fn reset_code(&self, hash: &[u8; 32]) -> Result<Option<ResetCodeRecord>, StoreError> {
        self.reset_codes
            .get(hash)?
            .map(|bytes| decode(RESET_CODES, &bytes))
            .transpose()
    }
}
