//! How many messages the mail queue holds, as far as this process knows: a soft bound
//! (`mail.max_queued`) that a flood of requests cannot push the queue past.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The count of queued messages: a place is taken before a message is made, given back
/// when it is not stored after all, and the mail worker sets the count to what the store
/// holds at each pass. A give-back may follow a recount that already left its message out,
/// so giving back stops at zero: the count may run a few under for a moment, never wrap
/// round to a queue that looks full for good.
#[derive(Debug, Default)]
pub struct MailBacklog(AtomicUsize);

impl MailBacklog {
    pub fn new(queued: usize) -> MailBacklog {
        MailBacklog(AtomicUsize::new(queued))
    }

    /// Takes a place for one more message; `false` when `max` are already queued.
    pub fn reserve(&self, max: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back `places` taken for messages that were not stored.
    pub fn release(&self, places: usize) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(places))
            });
    }

    /// Sets the count to what the store holds.
    pub fn recount(&self, stored: usize) {
        self.0.store(stored, Ordering::Relaxed);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_given_back_after_a_recount_does_not_fill_the_queue() {
        // A request takes a place, the worker counts the (empty) store, the request's
        // change takes another branch and gives its place back.
        let backlog = MailBacklog::new(0);
        assert!(backlog.reserve(10));
        backlog.recount(0);
        backlog.release(1);
        assert_eq!(backlog.get(), 0);
        assert!(backlog.reserve(10));
    }

    #[test]
    fn the_bound_holds_and_places_come_back() {
        let backlog = MailBacklog::new(8);
        assert!(backlog.reserve(10));
        assert!(backlog.reserve(10));
        assert!(!backlog.reserve(10));
        assert_eq!(backlog.get(), 10);
        backlog.release(3);
        assert!(backlog.reserve(10));
        assert_eq!(backlog.get(), 8);
    }

    #[test]
    fn recounts_racing_reservations_never_leave_the_queue_looking_full() {
        // Many requests take and give back places while the worker recounts an empty
        // store over and over; once all is quiet, a place is always to be had.
        for _ in 0..50 {
            let backlog = MailBacklog::new(0);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..1000 {
                            if backlog.reserve(100) {
                                backlog.release(1);
                            }
                        }
                    });
                }
                s.spawn(|| {
                    for _ in 0..1000 {
                        backlog.recount(0);
                    }
                });
            });
            assert_eq!(backlog.get(), 0);
            assert!(backlog.reserve(100));
        }
    }
}
