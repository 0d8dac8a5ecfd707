//! The current time comes from here, never from `SystemTime::now()` deep in the logic, so
//! tests move time forward instead of sleeping.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

/// A source of the current UTC time. Cheap to clone; clones share the same time.
#[derive(Clone)]
pub struct Clock(Arc<Inner>);

enum Inner {
    System,
    /// The system clock plus an offset that only grows: time flows, and can be pushed forward.
    Shifted(Mutex<Duration>),
    /// Time stands still until it is moved.
    Manual(Mutex<OffsetDateTime>),
}

impl Clock {
    /// The real clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Inner::System))
    }

    /// The real clock, which [`Clock::advance`] can move forward.
    pub fn shifted() -> Clock {
        Clock(Arc::new(Inner::Shifted(Mutex::new(Duration::ZERO))))
    }

    /// A clock that stands at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: OffsetDateTime) -> Clock {
        Clock(Arc::new(Inner::Manual(Mutex::new(start))))
    }

    /// The current time in UTC.
    #[expect(
        clippy::disallowed_methods,
        reason = "the one place the wall clock is read"
    )]
    pub fn now(&self) -> OffsetDateTime {
        match &*self.0 {
            Inner::System => OffsetDateTime::now_utc(),
            Inner::Shifted(offset) => {
                OffsetDateTime::now_utc() + *offset.lock().unwrap_or_else(PoisonError::into_inner)
            }
            Inner::Manual(now) => *now.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Seconds since the Unix epoch, as JWT claims count them.
    pub fn unix_seconds(&self) -> i64 {
        self.now().unix_timestamp()
    }

    /// Moves a shifted or manual clock forward. Returns false (and does nothing) on the system
    /// clock, which nobody may move.
    pub fn advance(&self, by: Duration) -> bool {
        match &*self.0 {
            Inner::System => false,
            Inner::Shifted(offset) => {
                *offset.lock().unwrap_or_else(PoisonError::into_inner) += by;
                true
            }
            Inner::Manual(now) => {
                *now.lock().unwrap_or_else(PoisonError::into_inner) += by;
                true
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.0 {
            Inner::System => "system",
            Inner::Shifted(_) => "shifted",
            Inner::Manual(_) => "manual",
        };
        write!(f, "Clock({kind}, {})", self.now())
    }
}

/// `2026-11-25T09:30:00Z`: UTC ISO-8601 with `Z`, whole seconds, as the contract writes times.
pub fn iso8601(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_manual_clock_stands_still_until_moved() {
        let clock = Clock::manual(datetime!(2026-01-01 0:00 UTC));
        assert_eq!(clock.now(), datetime!(2026-01-01 0:00 UTC));
        assert!(clock.advance(Duration::from_secs(90)));
        assert_eq!(clock.now(), datetime!(2026-01-01 0:01:30 UTC));
        let clone = clock.clone();
        clone.advance(Duration::from_secs(30));
        assert_eq!(clock.now(), datetime!(2026-01-01 0:02 UTC));
    }

    #[test]
    fn the_system_clock_cannot_be_moved() {
        assert!(!Clock::system().advance(Duration::from_secs(1)));
    }

    #[test]
    fn a_shifted_clock_runs_ahead_by_what_it_was_moved() {
        let clock = Clock::shifted();
        clock.advance(Duration::from_secs(3600));
        let ahead = clock.now() - Clock::system().now();
        assert!(ahead >= time::Duration::seconds(3599), "{ahead}");
    }

    #[test]
    fn times_are_written_in_utc_with_z() {
        assert_eq!(
            iso8601(datetime!(2026-11-25 10:30:05.999 +01:00)),
            "2026-11-25T09:30:05Z"
        );
    }
}
