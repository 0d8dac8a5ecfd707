//! The abuse limits, shared by every instance: one row per key, read locked, changed by the
//! same rules as the in-memory limiter ([`crate::limits::Limits::after_hit`] and friends),
//! written back in the same transaction. N instances do not multiply an attacker's budget.
//! Keys are SHA-256 digests of the limit and the address or network, not the text.

use crate::limits::{Failures, Limit, Refused, Window};
use crate::store::{LimitStore, StoreError};

use super::{Store, db_error, transaction};

/// The row key of `what` under `kind`.
fn key(kind: &str, what: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(kind.len() + 1 + what.len());
    input.extend_from_slice(kind.as_bytes());
    input.push(0);
    input.extend_from_slice(what.as_bytes());
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input)
        .as_ref()
        .to_vec()
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

const FAILURES: &str = "account";

#[async_trait::async_trait]
impl LimitStore for Store {
    async fn hit_limit(
        &self,
        limit: Limit,
        what: &str,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        if !self.limits.enabled() {
            return Ok(Ok(()));
        }
        let key = key(&format!("{limit:?}"), what);
        let limits = self.limits.clone();
        transaction!(self, |tx| {
            // The row exists before it is locked, so that racing first hits queue on it.
            let ensure = tx
                .prepare_cached(
                    "INSERT INTO limit_windows (key, window_start, count, refused, keep_until)
                     VALUES ($1, $2, 0, 0, $2) ON CONFLICT (key) DO NOTHING",
                )
                .await?;
            tx.execute(&ensure, &[&key, &now]).await?;
            let select = tx
                .prepare_cached(
                    "SELECT window_start, count, refused, keep_until FROM limit_windows
                     WHERE key = $1 FOR UPDATE",
                )
                .await?;
            let row = tx.query_one(&select, &[&key]).await?;
            let before = (row.get::<_, i64>(3) > now || row.get::<_, i64>(1) > 0).then(|| Window {
                start: row.get(0),
                count: count(row.get(1)),
                refused: count(row.get(2)),
            });
            let (window, until, outcome) = limits.after_hit(limit, before, now);
            let update = tx
                .prepare_cached(
                    "UPDATE limit_windows SET window_start = $2, count = $3, refused = $4,
                     keep_until = $5 WHERE key = $1",
                )
                .await?;
            tx.execute(
                &update,
                &[
                    &key,
                    &window.start,
                    &i64::from(window.count),
                    &i64::from(window.refused),
                    &until,
                ],
            )
            .await?;
            outcome
        })
    }

    async fn check_lockout(
        &self,
        email: &str,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        if !self.limits.enabled() {
            return Ok(Ok(()));
        }
        let key = key(FAILURES, email);
        let limits = self.limits.clone();
        transaction!(self, |tx| {
            let select = tx
                .prepare_cached(
                    "SELECT last_at, count, locked_until, refused FROM sign_in_failures
                     WHERE key = $1 AND locked_until > $2 FOR UPDATE",
                )
                .await?;
            let Some(row) = tx.query_opt(&select, &[&key, &now]).await? else {
                return Ok(Ok(()));
            };
            let before = Failures {
                last: row.get(0),
                count: count(row.get(1)),
                locked_until: row.get(2),
                refused: count(row.get(3)),
            };
            match limits.lockout(Some(before), now) {
                Some((after, until, refused)) => {
                    let update = tx
                        .prepare_cached(
                            "UPDATE sign_in_failures SET refused = $2, keep_until = $3
                             WHERE key = $1",
                        )
                        .await?;
                    tx.execute(&update, &[&key, &i64::from(after.refused), &until])
                        .await?;
                    Err(refused)
                }
                None => Ok(()),
            }
        })
    }

    async fn record_sign_in_failure(&self, email: &str, now: i64) -> Result<(), StoreError> {
        if !self.limits.enabled() {
            return Ok(());
        }
        let key = key(FAILURES, email);
        let limits = self.limits.clone();
        transaction!(self, |tx| {
            let ensure = tx
                .prepare_cached(
                    "INSERT INTO sign_in_failures
                     (key, last_at, count, locked_until, refused, keep_until)
                     VALUES ($1, $2, 0, 0, 0, $2) ON CONFLICT (key) DO NOTHING",
                )
                .await?;
            tx.execute(&ensure, &[&key, &now]).await?;
            let select = tx
                .prepare_cached(
                    "SELECT last_at, count, locked_until, refused, keep_until
                     FROM sign_in_failures WHERE key = $1 FOR UPDATE",
                )
                .await?;
            let row = tx.query_one(&select, &[&key]).await?;
            let before =
                (row.get::<_, i64>(4) > now && row.get::<_, i64>(1) > 0).then(|| Failures {
                    last: row.get(0),
                    count: count(row.get(1)),
                    locked_until: row.get(2),
                    refused: count(row.get(3)),
                });
            let (after, until) = limits.after_failure(before, now);
            let update = tx
                .prepare_cached(
                    "UPDATE sign_in_failures SET last_at = $2, count = $3, locked_until = $4,
                     refused = $5, keep_until = $6 WHERE key = $1",
                )
                .await?;
            tx.execute(
                &update,
                &[
                    &key,
                    &after.last,
                    &i64::from(after.count),
                    &after.locked_until,
                    &i64::from(after.refused),
                    &until,
                ],
            )
            .await?;
        })
    }

    async fn record_sign_in_success(&self, email: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let forget = client
            .prepare_cached("DELETE FROM sign_in_failures WHERE key = $1")
            .await
            .map_err(db_error)?;
        client
            .execute(&forget, &[&key(FAILURES, email)])
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn prune_limits(&self, now: i64) -> Result<usize, StoreError> {
        transaction!(self, |tx| {
            let windows = tx
                .execute("DELETE FROM limit_windows WHERE keep_until <= $1", &[&now])
                .await?;
            let failures = tx
                .execute(
                    "DELETE FROM sign_in_failures WHERE keep_until <= $1",
                    &[&now],
                )
                .await?;
            usize::try_from(windows + failures).unwrap_or(usize::MAX)
        })
    }
}
