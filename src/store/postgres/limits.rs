//! The abuse limits, shared by every instance: one row per key. An event on a window is one
//! statement ([`HIT`], the rule of [`crate::limits::Limits::after_hit`] in SQL), so that a
//! flood on one key holds its row only while each statement runs; the sign-in failures of
//! an account are read locked, changed by the same rules as sled's
//! ([`crate::limits::Limits::after_failure`] and friends), and written back in the same
//! transaction. N instances do not multiply an attacker's budget.
//! Keys are SHA-256 digests of the limit and the address or network, not the text.

use crate::limits::{Failures, Limit, Refused, rate_limited};
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

/// One event on a key's window, in one statement: the row is locked only while it runs.
/// The rule is [`crate::limits::Limits::after_hit`]'s: within the window (`$4` seconds from
/// its start) an event is counted while fewer than `$3` were, and refused (counted in
/// `refused`) after; past it, a new window starts with this event. `$2` is now.
const HIT: &str = "INSERT INTO limit_windows AS w (key, window_start, count, refused, keep_until)
     VALUES ($1, $2::bigint, CASE WHEN $3::bigint > 0 THEN 1 ELSE 0 END,
             CASE WHEN $3::bigint > 0 THEN 0 ELSE 1 END, $2::bigint + $4::bigint)
     ON CONFLICT (key) DO UPDATE SET
         window_start = CASE WHEN w.window_start + $4 > $2 THEN w.window_start
                             ELSE EXCLUDED.window_start END,
         count = CASE WHEN w.window_start + $4 <= $2 THEN EXCLUDED.count
                      WHEN w.count >= $3 THEN w.count
                      ELSE w.count + 1 END,
         refused = CASE WHEN w.window_start + $4 <= $2 THEN EXCLUDED.refused
                        WHEN w.count >= $3 THEN w.refused + 1
                        ELSE w.refused END,
         keep_until = CASE WHEN w.window_start + $4 > $2 THEN w.window_start + $4
                           ELSE EXCLUDED.keep_until END
     RETURNING window_start, count, refused";

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
        let (max, span) = self.limits.rule(limit);
        let key = key(&format!("{limit:?}"), what);
        let client = self.client().await?;
        let hit = client.prepare_cached(HIT).await.map_err(db_error)?;
        let row = client
            .query_one(&hit, &[&key, &now, &i64::from(max), &span])
            .await
            .map_err(db_error)?;
        let (start, count, refused): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        // Counted past the budget: this event was refused (an event that reaches the budget
        // leaves `refused` at 0; only a refusal moves it).
        if count >= i64::from(max) && refused > 0 {
            return Ok(Err(Refused {
                error: rate_limited(start + span - now),
                first_in_window: refused == 1,
            }));
        }
        Ok(Ok(()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement counts as `Limits::after_hit` does, event by event, across window ends,
    /// for a budget of none, one and three.
    #[tokio::test]
    async fn one_statement_counts_as_the_rule_does() {
        let Some(url) = super::super::test_cluster::fresh_database().await else {
            return;
        };
        let times = [
            1_000, 1_000, 1_001, 1_002, 1_002, 1_059, 1_060, 1_060, 1_061, 1_200, 1_200, 1_259,
            1_260, 1_260,
        ];
        for max in [0, 1, 3] {
            let config = crate::config::LimitsConfig {
                enabled: true,
                login_per_ip_per_minute: max,
                ..Default::default()
            };
            let store = super::super::open(&super::super::test_cluster::config_for(&url), &config)
                .await
                .unwrap();
            let rule = crate::limits::Limits::new(&config);
            let what = format!("192.0.2.{max}");
            let mut window = None;
            for now in times {
                let (after, _, want) = rule.after_hit(Limit::LoginPerIp, window, now);
                window = Some(after);
                let got = store
                    .hit_limit(Limit::LoginPerIp, &what, now)
                    .await
                    .unwrap();
                let seen = |r: &Result<(), Refused>| {
                    r.as_ref()
                        .err()
                        .map(|r| (r.first_in_window, r.error.retry_after()))
                };
                assert_eq!(seen(&got), seen(&want), "budget {max}, at {now}");
            }
        }
    }
}
