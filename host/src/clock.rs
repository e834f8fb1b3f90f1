//! The process's monotonic clock, shared by live state and plugins.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process clock started.
pub fn millis() -> u64 {
    start().elapsed().as_millis() as u64
}

/// [`millis`] at `now`, for a caller that has read the clock already.
pub fn millis_at(now: Instant) -> u64 {
    now.saturating_duration_since(start()).as_millis() as u64
}

/// Nanoseconds since the process clock started.
pub fn nanos() -> u64 {
    start().elapsed().as_nanos() as u64
}

/// Wall-clock milliseconds since the Unix epoch, for time windows that
/// replicas must agree on.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
