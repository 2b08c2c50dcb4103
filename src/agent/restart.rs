//! When to restart a crashed Envoy, and when to stop trying.
//!
//! Both are pure (time comes in as arguments) so that the schedule is unit-tested without
//! waiting for it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// First restart delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An Envoy that ran this long before it exited counts as having been healthy: the next
/// restart starts the backoff from [`INITIAL_BACKOFF`] again.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Exponential backoff: `initial`, doubling after each consecutive crash, capped at `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, next: initial.min(max) }
    }

    /// The delay before the next restart; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the initial delay (after a healthy run).
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF)
    }
}

/// What to do after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Restart; `crashes` is the number of crashes within the window, this one included.
    Restart { crashes: usize },
    /// More than `max_restarts` crashes within the window: stop supervising.
    GiveUp { crashes: usize },
}

/// A sliding window of crash times: at most `max_restarts` restarts within `window`; the
/// crash after that gives up.
#[derive(Clone, Debug)]
pub struct CrashWindow {
    max_restarts: usize,
    window: Duration,
    crashes: VecDeque<Instant>,
}

impl CrashWindow {
    pub fn new(max_restarts: usize, window: Duration) -> CrashWindow {
        CrashWindow { max_restarts, window, crashes: VecDeque::new() }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records a crash at `now` (times must not go backwards).
    pub fn record(&mut self, now: Instant) -> Verdict {
        while self.crashes.front().is_some_and(|&t| now.saturating_duration_since(t) >= self.window) {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        let crashes = self.crashes.len();
        if crashes > self.max_restarts { Verdict::GiveUp { crashes } } else { Verdict::Restart { crashes } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_100ms_up_to_10s_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        assert_eq!(b.next_delay(), ms(200));
    }

    #[test]
    fn backoff_never_exceeds_its_cap_even_when_the_start_does() {
        let mut b = Backoff::new(ms(500), ms(300));
        assert_eq!(b.next_delay(), ms(300));
        assert_eq!(b.next_delay(), ms(300));
        let mut huge = Backoff::new(Duration::MAX - Duration::from_secs(1), Duration::MAX);
        huge.next_delay();
        assert_eq!(huge.next_delay(), Duration::MAX, "doubling saturates instead of overflowing");
    }

    #[test]
    fn crash_window_gives_up_on_the_crash_after_max_restarts_within_the_window() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(3, Duration::from_secs(30));
        assert_eq!(w.record(t0), Verdict::Restart { crashes: 1 });
        assert_eq!(w.record(t0 + ms(100)), Verdict::Restart { crashes: 2 });
        assert_eq!(w.record(t0 + ms(300)), Verdict::Restart { crashes: 3 });
        assert_eq!(w.record(t0 + ms(700)), Verdict::GiveUp { crashes: 4 });
    }

    #[test]
    fn crashes_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(2, Duration::from_secs(60));
        assert_eq!(w.record(t0), Verdict::Restart { crashes: 1 });
        assert_eq!(w.record(t0 + Duration::from_secs(30)), Verdict::Restart { crashes: 2 });
        // The first crash is exactly one window old: out.
        assert_eq!(w.record(t0 + Duration::from_secs(60)), Verdict::Restart { crashes: 2 });
        assert_eq!(w.record(t0 + Duration::from_secs(61)), Verdict::GiveUp { crashes: 3 });
        // Far later, only this one counts.
        assert_eq!(w.record(t0 + Duration::from_secs(600)), Verdict::Restart { crashes: 1 });
    }

    #[test]
    fn zero_max_restarts_gives_up_on_the_first_crash() {
        let mut w = CrashWindow::new(0, Duration::from_secs(60));
        assert_eq!(w.record(Instant::now()), Verdict::GiveUp { crashes: 1 });
    }
}
