//! The process's monotonic clock, shared by live state and plugins.

use std::sync::OnceLock;
use std::time::Instant;

/// The clock's start: an `Instant`, and the same moment as nanoseconds of
/// the kernel's monotonic clock, which [`coarse_millis`] counts from.
fn origin() -> &'static (Instant, u64) {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let start = Instant::now();
        (start, sys::monotonic_ns(false))
    })
}

fn start() -> Instant {
    origin().0
}

/// Milliseconds since the process clock started.
pub fn millis() -> u64 {
    start().elapsed().as_millis() as u64
}

/// [`millis`] as of the kernel's last timer tick (1–10 ms ago, by its
/// `HZ`): never ahead of [`millis`], and several times cheaper to read,
/// since it needs no time-stamp counter. For millisecond deadlines that
/// may fire up to one tick late, such as a connection's idle limit.
pub fn coarse_millis() -> u64 {
    sys::monotonic_ns(true).saturating_sub(origin().1) / 1_000_000
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

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    /// The kernel's monotonic clock in nanoseconds: `CLOCK_MONOTONIC`, or
    /// its tick-granular `CLOCK_MONOTONIC_COARSE` when `coarse`. Both count
    /// from the same origin, which `Instant` uses too.
    pub fn monotonic_ns(coarse: bool) -> u64 {
        let id = if coarse {
            libc::CLOCK_MONOTONIC_COARSE
        } else {
            libc::CLOCK_MONOTONIC
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; both clock ids exist
        // on every Linux this builds for, and the call writes only `ts`.
        if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
            return 0;
        }
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    /// Without a coarse kernel clock, both readings are the fine clock.
    pub fn monotonic_ns(_coarse: bool) -> u64 {
        super::nanos_since_first_use()
    }
}

#[cfg(not(target_os = "linux"))]
fn nanos_since_first_use() -> u64 {
    static FIRST: OnceLock<Instant> = OnceLock::new();
    FIRST.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_trails_the_fine_one_by_at_most_a_tick() {
        let deadline = Instant::now() + std::time::Duration::from_millis(60);
        let mut samples = 0;
        while Instant::now() < deadline {
            let coarse = coarse_millis();
            let fine = millis();
            assert!(coarse <= fine, "coarse {coarse} ms ahead of fine {fine} ms");
            assert!(
                fine - coarse <= 20,
                "coarse {coarse} ms trails fine {fine} ms"
            );
            samples += 1;
        }
        assert!(samples > 100);
        // It moves: after a sleep longer than any tick it has advanced.
        let before = coarse_millis();
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(coarse_millis() >= before + 10);
    }
}
