//! Abuse limits (`[limits]`): fixed-window counters per client network and per address, and
//! growing delays after repeated failed sign-ins to one account. In memory and bounded; a
//! restart forgets them (a deliberate trade: nothing to write per request).
//!
//! Each table keeps its entries in order of expiry, so the expired ones go first and in
//! order, with no walk of the table per request. A table holds at most [`MAX_ENTRIES`]
//! (about 150 bytes each: keys are 64-bit hashes under a per-process random key, not the
//! text), so the limiter never holds more than `3 × MAX_ENTRIES` entries, about 45 MB. A full
//! table gives up the entry that would expire soonest. Accounts that reached the failure
//! threshold live in a table of their own, so a flood of new addresses or IPs, which only
//! ever fills the others, cannot push an account under attack out of its lockout.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

use parking_lot::Mutex;

use crate::config::LimitsConfig;
use crate::error::Error;

/// Entries kept per table at most.
pub const MAX_ENTRIES: usize = 100_000;

/// What is being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Sign-in attempts per client IP per minute.
    LoginPerIp,
    /// Codes mailed per client IP per minute.
    CodeSendsPerIp,
    /// Registrations per client IP per hour.
    RegisterPerIp,
    /// forgotPassword calls per client IP per hour.
    ForgotPasswordPerIp,
    /// forgotPassword calls per address per hour.
    ForgotPasswordPerAddress,
    /// Mail nobody asked for, per address per hour.
    NoticesPerAddress,
}

/// A refused event: the error for the caller, and whether it is the first refusal of its
/// key in this window (the one worth an audit record; the rest are only counted).
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    pub first_in_window: bool,
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Error {
        refused.error
    }
}

/// One key's count in its window: what a backend keeps per key (this process's tables, or a
/// shared database's rows), changed only by [`Limits::after_hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub count: u32,
    pub refused: u32,
}

/// One account's failed sign-ins: what a backend keeps per address, changed only by
/// [`Limits::after_failure`] and [`Limits::lockout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub last: i64,
    pub count: u32,
    pub locked_until: i64,
    /// Attempts refused during the current wait.
    pub refused: u32,
}

/// Values by key, kept in order of expiry.
struct Table<V> {
    entries: HashMap<u64, (V, i64, u64)>,
    by_expiry: BTreeMap<(i64, u64), u64>,
    sequence: u64,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            sequence: 0,
        }
    }
}

impl<V: Copy> Table<V> {
    /// Drops the entries expired at `now`, soonest first; returns how many.
    fn expire(&mut self, now: i64) -> usize {
        let mut removed = 0;
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
            removed += 1;
        }
        removed
    }

    fn get(&self, key: u64) -> Option<V> {
        self.entries.get(&key).map(|(v, _, _)| *v)
    }

    /// Sets `key` to `value` until `expires`; a full table first gives up the entry that
    /// would expire soonest.
    fn put(&mut self, key: u64, value: V, expires: i64) {
        if let Some((_, old_expiry, old_sequence)) = self.entries.remove(&key) {
            self.by_expiry.remove(&(old_expiry, old_sequence));
        } else if self.entries.len() >= MAX_ENTRIES
            && let Some((_, soonest)) = self.by_expiry.pop_first()
        {
            self.entries.remove(&soonest);
        }
        self.sequence += 1;
        self.entries.insert(key, (value, expires, self.sequence));
        self.by_expiry.insert((expires, self.sequence), key);
    }

    fn remove(&mut self, key: u64) {
        if let Some((_, expiry, sequence)) = self.entries.remove(&key) {
            self.by_expiry.remove(&(expiry, sequence));
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The failure tables: accounts below the threshold, and those at or past it.
#[derive(Default)]
struct Accounts {
    counting: Table<Failures>,
    locked: Table<Failures>,
}

/// The limiter. With `limits.enabled = false` every check passes.
pub struct Limits {
    config: LimitsConfig,
    keys: std::collections::hash_map::RandomState,
    windows: Mutex<Table<Window>>,
    accounts: Mutex<Accounts>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("enabled", &self.config.enabled)
            .finish_non_exhaustive()
    }
}

/// The network a client address stands for in per-IP limits: an IPv4 address itself (an
/// IPv4-mapped IPv6 address counts as its IPv4 address), an IPv6 address its first
/// `ipv6_prefix` bits, since one subscriber routinely holds a whole /64.
pub fn client_network(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let keep = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        },
    }
}

/// Never "retry in 0 s": that would invite an immediate retry.
pub(crate) fn rate_limited(seconds: i64) -> Error {
    Error::rate_limited(seconds.max(1))
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            config: config.clone(),
            keys: std::collections::hash_map::RandomState::new(),
            windows: Mutex::default(),
            accounts: Mutex::default(),
        }
    }

    /// The most events of `limit` in one window, and the window's length in seconds.
    pub fn rule(&self, limit: Limit) -> (u32, i64) {
        let c = &self.config;
        match limit {
            Limit::LoginPerIp => (c.login_per_ip_per_minute, 60),
            Limit::CodeSendsPerIp => (c.code_sends_per_ip_per_minute, 60),
            Limit::RegisterPerIp => (c.register_per_ip_per_hour, 3600),
            Limit::ForgotPasswordPerIp => (c.forgot_password_per_ip_per_hour, 3600),
            Limit::ForgotPasswordPerAddress => (c.forgot_password_per_address_per_hour, 3600),
            Limit::NoticesPerAddress => (c.notices_per_address_per_hour, 3600),
        }
    }

    fn key(&self, value: impl Hash) -> u64 {
        self.keys.hash_one(value)
    }

    fn failure_window(&self) -> i64 {
        i64::try_from(self.config.login_failure_window.as_secs()).unwrap_or(i64::MAX / 4)
    }

    /// Whether the limits are on at all (`limits.enabled`).
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// One more event of `limit` on a key whose window was `before` (`None`: no count yet):
    /// the window to keep, until when to keep it, and whether the event passes. sled counts
    /// through this; PostgreSQL states the same rule as one statement
    /// (`store::postgres::limits`), held to it by a test that runs both side by side.
    pub fn after_hit(
        &self,
        limit: Limit,
        before: Option<Window>,
        now: i64,
    ) -> (Window, i64, std::result::Result<(), Refused>) {
        let (max, span) = self.rule(limit);
        let mut window = match before {
            Some(w) if w.start + span > now => w,
            _ => Window {
                start: now,
                count: 0,
                refused: 0,
            },
        };
        let refused = window.count >= max;
        if refused {
            window.refused = window.refused.saturating_add(1);
        } else {
            window.count += 1;
        }
        let outcome = if refused {
            Err(Refused {
                error: rate_limited(window.start + span - now),
                first_in_window: window.refused == 1,
            })
        } else {
            Ok(())
        };
        (window, window.start + span, outcome)
    }

    /// Whether an account whose failures are `before` waits at `now`: if it does, the
    /// failures to keep (one more refusal counted), until when, and the refusal.
    pub fn lockout(&self, before: Option<Failures>, now: i64) -> Option<(Failures, i64, Refused)> {
        match before {
            Some(mut f) if f.locked_until > now => {
                f.refused = f.refused.saturating_add(1);
                let refused = Refused {
                    error: rate_limited(f.locked_until - now),
                    first_in_window: f.refused == 1,
                };
                Some((f, f.locked_until + self.failure_window(), refused))
            }
            _ => None,
        }
    }

    /// One more failed sign-in of an account whose failures were `before`: the failures to
    /// keep and until when. From the `login_failures_per_account`-th failure within
    /// `login_failure_window` on, the account waits 1 s, then 2 s, 4 s … (at most the window).
    /// The count is kept while the account waits and for a window after, so the delays keep
    /// growing rather than starting over when the longest one ends.
    pub fn after_failure(&self, before: Option<Failures>, now: i64) -> (Failures, i64) {
        let window = self.failure_window();
        let threshold = self.config.login_failures_per_account.max(1);
        let mut f = match before {
            Some(f) if f.last.max(f.locked_until) + window > now => f,
            _ => Failures {
                last: now,
                count: 0,
                locked_until: 0,
                refused: 0,
            },
        };
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count < threshold {
            return (f, now + window);
        }
        let doublings = (f.count - threshold).min(20);
        f.locked_until = now + (1i64 << doublings).min(window);
        f.refused = 0;
        (f, f.locked_until + window)
    }

    /// Counts one event for `key` (an IP or an address); `RATE_LIMITED` once over the limit.
    pub fn hit(&self, limit: Limit, key: &str, now: i64) -> std::result::Result<(), Refused> {
        if !self.config.enabled {
            return Ok(());
        }
        let id = self.key((limit, key));
        let mut windows = self.windows.lock();
        windows.expire(now);
        let (window, until, outcome) = self.after_hit(limit, windows.get(id), now);
        windows.put(id, window, until);
        outcome
    }

    /// `RATE_LIMITED` while the account of `email` waits after failed sign-ins, whatever the
    /// password this time.
    pub fn check_account(&self, email: &str, now: i64) -> std::result::Result<(), Refused> {
        if !self.config.enabled {
            return Ok(());
        }
        let id = self.key(email);
        let mut accounts = self.accounts.lock();
        match self.lockout(accounts.locked.get(id), now) {
            Some((f, until, refused)) => {
                accounts.locked.put(id, f, until);
                Err(refused)
            }
            None => Ok(()),
        }
    }

    /// A failed sign-in for `email` (see [`Limits::after_failure`]).
    pub fn record_failure(&self, email: &str, now: i64) {
        if !self.config.enabled {
            return;
        }
        let threshold = self.config.login_failures_per_account.max(1);
        let id = self.key(email);
        let mut accounts = self.accounts.lock();
        accounts.counting.expire(now);
        accounts.locked.expire(now);
        let known = accounts
            .locked
            .get(id)
            .or_else(|| accounts.counting.get(id));
        let (f, until) = self.after_failure(known, now);
        if f.count < threshold {
            accounts.counting.put(id, f, until);
        } else {
            accounts.counting.remove(id);
            accounts.locked.put(id, f, until);
        }
    }

    /// A successful sign-in: the count starts again.
    pub fn record_success(&self, email: &str) {
        let id = self.key(email);
        let mut accounts = self.accounts.lock();
        accounts.counting.remove(id);
        accounts.locked.remove(id);
    }

    /// Drops what no longer limits anyone; returns how many entries went.
    pub fn prune(&self, now: i64) -> usize {
        let removed = self.windows.lock().expire(now);
        let mut accounts = self.accounts.lock();
        removed + accounts.counting.expire(now) + accounts.locked.expire(now)
    }

    /// Entries held (for metrics and tests).
    pub fn entries(&self) -> usize {
        let accounts = self.accounts.lock();
        self.windows.lock().len() + accounts.counting.len() + accounts.locked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(&LimitsConfig::default())
    }

    #[test]
    fn a_window_allows_its_count_then_says_when_to_retry() {
        let l = limits();
        for _ in 0..30 {
            l.hit(Limit::LoginPerIp, "1.2.3.4", 1000).unwrap();
        }
        let err = l.hit(Limit::LoginPerIp, "1.2.3.4", 1010).unwrap_err().error;
        assert_eq!(err.code(), "RATE_LIMITED");
        assert_eq!(err.retry_after(), Some(50));
        assert!(l.hit(Limit::LoginPerIp, "5.6.7.8", 1010).is_ok(), "per IP");
        assert!(
            l.hit(Limit::LoginPerIp, "1.2.3.4", 1060).is_ok(),
            "a new window"
        );
    }

    #[test]
    fn failed_sign_ins_make_an_account_wait_longer_and_longer() {
        let l = limits();
        for _ in 0..4 {
            l.record_failure("ada@example.com", 100);
        }
        assert!(
            l.check_account("ada@example.com", 100).is_ok(),
            "four are free"
        );
        l.record_failure("ada@example.com", 100);
        assert_eq!(
            l.check_account("ada@example.com", 100)
                .unwrap_err()
                .error
                .retry_after(),
            Some(1)
        );
        l.record_failure("ada@example.com", 101);
        assert_eq!(
            l.check_account("ada@example.com", 101)
                .unwrap_err()
                .error
                .retry_after(),
            Some(2)
        );
        l.record_failure("ada@example.com", 103);
        assert_eq!(
            l.check_account("ada@example.com", 103)
                .unwrap_err()
                .error
                .retry_after(),
            Some(4)
        );
        assert!(l.check_account("ada@example.com", 107).is_ok());
        l.record_success("ada@example.com");
        l.record_failure("ada@example.com", 108);
        assert!(
            l.check_account("ada@example.com", 108).is_ok(),
            "success reset the count"
        );
    }

    #[test]
    fn the_delay_never_exceeds_the_window_and_everything_is_pruned() {
        let l = limits();
        for i in 0..40 {
            l.record_failure("bob@example.com", 1000 + i);
        }
        let wait = l
            .check_account("bob@example.com", 1039)
            .unwrap_err()
            .error
            .retry_after()
            .unwrap();
        assert!(wait <= 15 * 60, "{wait}");
        l.hit(Limit::RegisterPerIp, "1.2.3.4", 1000).unwrap();
        assert_eq!(l.entries(), 2);
        assert_eq!(l.prune(1039 + 15 * 60 + 3600), 2);
        assert_eq!(l.entries(), 0);
    }

    #[test]
    fn an_ipv6_network_is_one_client_and_a_mapped_ipv4_address_is_itself() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_network(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_network(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            client_network(ip("2001:db8:1:3::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_network(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_network(ip("2001:db8::1"), 1), ip("::"));
        assert_eq!(client_network(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(client_network(ip("192.0.2.7"), 64), ip("192.0.2.7"));
        let l = limits();
        let hit = |addr: IpAddr| {
            l.hit(
                Limit::LoginPerIp,
                &client_network(addr, 64).to_string(),
                1000,
            )
        };
        for i in 0..30 {
            hit(format!("2001:db8:1:2::{i:x}").parse().unwrap()).unwrap();
        }
        assert!(
            hit(ip("2001:db8:1:2:dead::beef")).is_err(),
            "a new address in the same /64 shares its limit"
        );
        hit(ip("2001:db8:1:3::1")).unwrap();
    }

    #[test]
    fn a_flood_of_a_million_new_keys_stays_bounded_and_keeps_a_lockout() {
        let l = limits();
        for _ in 0..5 {
            l.record_failure("victim@example.com", 1000);
        }
        assert!(l.check_account("victim@example.com", 1000).is_err());
        for i in 0..1_000_000u32 {
            let now = 1000 + i64::from(i / 10_000);
            l.record_failure(&format!("flood{i}@example.com"), now);
            let _ = l.hit(
                Limit::LoginPerIp,
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                now,
            );
        }
        let now = 1000 + 100;
        assert!(l.entries() <= 3 * MAX_ENTRIES, "{}", l.entries());
        assert!(l.windows.lock().len() <= MAX_ENTRIES);
        assert!(l.accounts.lock().counting.len() <= MAX_ENTRIES);
        // The lockout is still there, and its count with it: the next failure waits longer.
        l.record_failure("victim@example.com", now);
        let wait = l
            .check_account("victim@example.com", now)
            .unwrap_err()
            .error
            .retry_after();
        assert_eq!(wait, Some(2), "the sixth failure waits 2 s");
    }

    #[test]
    fn a_locked_account_keeps_its_count_while_it_waits() {
        let l = limits();
        // An attacker who tries again the moment each wait ends, for three hours.
        let mut now = 0;
        let mut tries_in_third_hour = 0;
        while now < 3 * 3600 {
            match l.check_account("ada@example.com", now) {
                Ok(()) => {
                    l.record_failure("ada@example.com", now);
                    if now >= 2 * 3600 {
                        tries_in_third_hour += 1;
                    }
                }
                Err(refused) => now += refused.error.retry_after().unwrap() as i64,
            }
        }
        // The delays grew to the window (15 min) and stayed there: 4 guesses an hour.
        assert!(tries_in_third_hour <= 4, "{tries_in_third_hour}");
    }

    #[test]
    fn only_the_first_refusal_of_a_window_is_reported() {
        let l = Limits::new(&LimitsConfig {
            register_per_ip_per_hour: 1,
            ..LimitsConfig::default()
        });
        l.hit(Limit::RegisterPerIp, "1.2.3.4", 0).unwrap();
        assert!(
            l.hit(Limit::RegisterPerIp, "1.2.3.4", 1)
                .unwrap_err()
                .first_in_window
        );
        for t in 2..100 {
            assert!(
                !l.hit(Limit::RegisterPerIp, "1.2.3.4", t)
                    .unwrap_err()
                    .first_in_window
            );
        }
        l.hit(Limit::RegisterPerIp, "1.2.3.4", 3600).unwrap();
        assert!(
            l.hit(Limit::RegisterPerIp, "1.2.3.4", 3601)
                .unwrap_err()
                .first_in_window
        );
    }

    #[test]
    fn switched_off_nothing_is_limited() {
        let l = Limits::new(&LimitsConfig {
            enabled: false,
            ..LimitsConfig::default()
        });
        for _ in 0..100 {
            l.hit(Limit::LoginPerIp, "1.2.3.4", 0).unwrap();
            l.record_failure("ada@example.com", 0);
        }
        assert!(l.check_account("ada@example.com", 0).is_ok());
        assert_eq!(l.entries(), 0);
    }
}
