//! The audit log: security events in time order, never a secret, pruned after
//! `audit.retention`.

use crate::store::{AuditRecord, AuditStore};

use super::keys::AUDIT;
use super::records::{decode, encode};
use super::{Store, StoreError};

fn time_key(at: i64) -> [u8; 8] {
    u64::try_from(at.max(0)).unwrap_or(0).to_be_bytes()
}

#[async_trait::async_trait]
impl AuditStore for Store {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.durably(|| {
            let _writing = self.writing();
            // Time first (big-endian) so a range scan runs in time order; a unique id after it.
            let mut key = time_key(record.at).to_vec();
            key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
            self.audit.insert(key, encode(record))?;
            Ok(())
        })
        .await
    }

    async fn audit_since(
        &self,
        since: i64,
        email: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        use super::UserStore;
        let user_id = match email {
            Some(e) => self.user_by_email(e).await?.map(|u| u.id),
            None => None,
        };
        let mut found = Vec::new();
        for entry in self.audit.range(time_key(since)..) {
            let (_, value) = entry?;
            let record: AuditRecord = decode(AUDIT, &value)?;
            let wanted = email.is_none_or(|e| record.email.as_deref() == Some(e))
                || (user_id.is_some() && record.user_id == user_id);
            if wanted {
                found.push(record);
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    async fn prune_audit(&self, before: i64) -> Result<usize, StoreError> {
        let prune = || {
            let _writing = self.writing();
            let old: Vec<sled::IVec> = self
                .audit
                .range(..time_key(before))
                .keys()
                .collect::<Result<_, _>>()?;
            for key in &old {
                self.audit.remove(key)?;
            }
            Ok(old.len())
        };
        self.durably_if(prune, |pruned| *pruned > 0).await
    }
}
