//! Counts over the last seconds, lock-free, for error rates and the retry
//! budget.

use crate::clock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Seconds covered by the rolling error window.
pub const WINDOW_SECS: u64 = 10;

/// One second of a rolling window.
#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    total: AtomicU32,
    marked: AtomicU32,
}

/// Two counts (all events, and marked ones such as errors or retries) over
/// the last [`WINDOW_SECS`] seconds, lock-free: one bucket per second,
/// reset by whichever thread first enters a new second.
#[derive(Default)]
pub struct RollingWindow {
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl RollingWindow {
    /// Counts one event, `marked` or not.
    pub fn add(&self, total: u32, marked: u32) {
        self.add_at(total, marked, clock::millis());
    }

    /// [`RollingWindow::add`] at `now_ms` (`clock::millis()`).
    pub fn add_at(&self, total: u32, marked: u32, now_ms: u64) {
        let now = now_ms / 1000;
        let bucket = &self.buckets[(now % WINDOW_SECS) as usize];
        let seen = bucket.second.load(Relaxed);
        if seen != now
            && bucket
                .second
                .compare_exchange(seen, now, Relaxed, Relaxed)
                .is_ok()
        {
            bucket.total.store(0, Relaxed);
            bucket.marked.store(0, Relaxed);
        }
        if total != 0 {
            bucket.total.fetch_add(total, Relaxed);
        }
        if marked != 0 {
            bucket.marked.fetch_add(marked, Relaxed);
        }
    }

    /// `(total, marked)` over the window.
    pub fn sums(&self) -> (u64, u64) {
        self.sums_at(clock::millis())
    }

    /// [`RollingWindow::sums`] at `now_ms` (`clock::millis()`).
    pub fn sums_at(&self, now_ms: u64) -> (u64, u64) {
        let now = now_ms / 1000;
        let (mut total, mut marked) = (0u64, 0u64);
        for b in &self.buckets {
            if now.saturating_sub(b.second.load(Relaxed)) < WINDOW_SECS {
                total += u64::from(b.total.load(Relaxed));
                marked += u64::from(b.marked.load(Relaxed));
            }
        }
        (total, marked)
    }

    /// Seconds the window covers.
    pub const SECONDS: u64 = WINDOW_SECS;
}
