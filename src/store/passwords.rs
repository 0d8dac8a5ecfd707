//! Password reset codes.

use super::*;
use crate::domain::records::*;

#[async_trait::async_trait]
pub trait PasswordStore: Send + Sync {
    /// Stores a reset code as the user's only one, replacing an earlier code.
    async fn put_reset_code(
        &self,
        hash: &[u8; 32],
        record: &ResetCodeRecord,
        mail: &[MailQueueRecord],
    ) -> Result<(), StoreError>;
    async fn reset_code(&self, hash: &[u8; 32]) -> Result<Option<ResetCodeRecord>, StoreError>;
}
