//! Abuse limits (`[limits]`): fixed-window counters per client IP and per address, and
//! growing delays after repeated failed sign-ins to one account. In memory, bounded, pruned
//! by the sweeper; a restart forgets them (a deliberate trade: nothing to write per request).

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

use crate::config::LimitsConfig;
use crate::error::{Error, Result};

/// Entries kept per table at most; past it expired ones are dropped first, then any.
const MAX_ENTRIES: usize = 100_000;

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
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    count: u32,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    last: i64,
    count: u32,
    locked_until: i64,
}

/// The limiter. With `limits.enabled = false` every check passes.
pub struct Limits {
    config: LimitsConfig,
    windows: Mutex<HashMap<(Limit, String), Window>>,
    failures: Mutex<HashMap<String, Failures>>,
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
fn rate_limited(seconds: i64) -> Error {
    Error::rate_limited(seconds.max(1))
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            config: config.clone(),
            windows: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn rule(&self, limit: Limit) -> (u32, i64) {
        let c = &self.config;
        match limit {
            Limit::LoginPerIp => (c.login_per_ip_per_minute, 60),
            Limit::CodeSendsPerIp => (c.code_sends_per_ip_per_minute, 60),
            Limit::RegisterPerIp => (c.register_per_ip_per_hour, 3600),
            Limit::ForgotPasswordPerIp => (c.forgot_password_per_ip_per_hour, 3600),
            Limit::ForgotPasswordPerAddress => (c.forgot_password_per_address_per_hour, 3600),
        }
    }

    /// Counts one event for `key` (an IP or an address); `RATE_LIMITED` once over the limit.
    pub fn hit(&self, limit: Limit, key: &str, now: i64) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let (max, span) = self.rule(limit);
        let mut windows = self.windows.lock();
        if windows.len() >= MAX_ENTRIES {
            windows.retain(|(l, _), w| w.start + self.rule(*l).1 > now);
            if windows.len() >= MAX_ENTRIES
                && let Some(any) = windows.keys().next().cloned()
            {
                windows.remove(&any);
            }
        }
        let window = windows.entry((limit, key.to_string())).or_insert(Window {
            start: now,
            count: 0,
        });
        if window.start + span <= now {
            *window = Window {
                start: now,
                count: 0,
            };
        }
        if window.count >= max {
            return Err(rate_limited(window.start + span - now));
        }
        window.count += 1;
        Ok(())
    }

    /// Counts one event for a client IP, if the transport knew it.
    pub fn hit_ip(&self, limit: Limit, ip: Option<IpAddr>, now: i64) -> Result<()> {
        match ip {
            Some(ip) => {
                let network = client_network(ip, self.config.ipv6_prefix);
                self.hit(limit, &network.to_string(), now)
            }
            None => Ok(()),
        }
    }

    /// `RATE_LIMITED` while the account of `email` waits after failed sign-ins, whatever the
    /// password this time.
    pub fn check_account(&self, email: &str, now: i64) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        match self.failures.lock().get(email) {
            Some(f) if f.locked_until > now => Err(rate_limited(f.locked_until - now)),
            _ => Ok(()),
        }
    }

    /// A failed sign-in for `email`. From the `login_failures_per_account`-th failure within
    /// `login_failure_window` on, the account waits 1 s, then 2 s, 4 s … (at most the window).
    pub fn record_failure(&self, email: &str, now: i64) {
        if !self.config.enabled {
            return;
        }
        let window = i64::try_from(self.config.login_failure_window.as_secs()).unwrap_or(i64::MAX);
        let threshold = self.config.login_failures_per_account.max(1);
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_ENTRIES {
            failures.retain(|_, f| f.last + window > now || f.locked_until > now);
            if failures.len() >= MAX_ENTRIES
                && let Some(any) = failures.keys().next().cloned()
            {
                failures.remove(&any);
            }
        }
        let f = failures.entry(email.to_string()).or_insert(Failures {
            last: now,
            count: 0,
            locked_until: 0,
        });
        if f.last + window <= now {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count >= threshold {
            let doublings = (f.count - threshold).min(20);
            let delay = (1i64 << doublings).min(window);
            f.locked_until = now + delay;
        }
    }

    /// A successful sign-in: the count starts again.
    pub fn record_success(&self, email: &str) {
        self.failures.lock().remove(email);
    }

    /// Drops what no longer limits anyone; returns how many entries went.
    pub fn prune(&self, now: i64) -> usize {
        let window = i64::try_from(self.config.login_failure_window.as_secs()).unwrap_or(i64::MAX);
        let mut windows = self.windows.lock();
        let before = windows.len();
        windows.retain(|(l, _), w| w.start + self.rule(*l).1 > now);
        let mut removed = before - windows.len();
        drop(windows);
        let mut failures = self.failures.lock();
        let before = failures.len();
        failures.retain(|_, f| f.last + window > now || f.locked_until > now);
        removed += before - failures.len();
        removed
    }

    /// Entries held (for metrics and tests).
    pub fn entries(&self) -> usize {
        self.windows.lock().len() + self.failures.lock().len()
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
        let err = l.hit(Limit::LoginPerIp, "1.2.3.4", 1010).unwrap_err();
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
                .retry_after(),
            Some(1)
        );
        l.record_failure("ada@example.com", 101);
        assert_eq!(
            l.check_account("ada@example.com", 101)
                .unwrap_err()
                .retry_after(),
            Some(2)
        );
        l.record_failure("ada@example.com", 103);
        assert_eq!(
            l.check_account("ada@example.com", 103)
                .unwrap_err()
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
        for i in 0..30 {
            let addr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            l.hit_ip(Limit::LoginPerIp, Some(addr), 1000).unwrap();
        }
        assert!(
            l.hit_ip(Limit::LoginPerIp, Some(ip("2001:db8:1:2:dead::beef")), 1000)
                .is_err(),
            "a new address in the same /64 shares its limit"
        );
        l.hit_ip(Limit::LoginPerIp, Some(ip("2001:db8:1:3::1")), 1000)
            .unwrap();
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
