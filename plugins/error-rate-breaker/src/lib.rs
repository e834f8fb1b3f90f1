//! Error-rate circuit breaker: trips a backend whose share of failed
//! requests (no answer, or 5xx) over a rolling `window` exceeds `threshold`
//! (default 5 %), once at least `min_requests` were seen. An open backend
//! cools down for `cool_down`, doubled on each trip in a row up to
//! `max_cool_down`; then `trial_requests` requests go through half-open.
//! All succeed: closed, counts cleared. One fails: open again, longer.
//!
//! With `cool_down_on_429` (default on), a 429 also opens the backend for
//! its `retry-after` (or `cool_down`), then closes it directly: a rate
//! limit is the backend asking for less traffic, not a fault.
//!
//! With `share_trips = true`, a trip is published in the shared store
//! (Redis, with several replicas) until its cool-down ends, and a replica
//! that still sees the backend closed opens it too, checking at most once
//! a second per backend as its outcomes arrive. Replicas then agree that a
//! failing backend is out instead of each finding out on its own traffic.
//! A store that cannot be reached only loses the sharing.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::policy::is_failure;
use switchyard_sdk::prelude::*;

/// Longest window, in one-second buckets.
const MAX_WINDOW_SECS: u64 = 300;

pub struct ErrorRateBreaker {
    threshold: f64,
    window_secs: u64,
    min_requests: u64,
    cool_down_ms: u64,
    max_cool_down_ms: u64,
    trial_requests: u32,
    cool_down_on_429: bool,
    /// Key prefix of shared trips (`breaker:<pool>`), when shared.
    share: Option<String>,
    backends: Vec<Backend>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Closed,
    /// Tripped by errors.
    Open,
    /// Cooling down after a 429; closes directly afterwards.
    RateLimited,
    HalfOpen {
        successes: u32,
    },
}

#[derive(Clone)]
struct Backend {
    mode: Mode,
    /// Trips in a row, for the exponential cool-down.
    trips: u32,
    /// `(second, total, failed)` per bucket.
    buckets: Vec<(u64, u32, u32)>,
    name: String,
    /// When the shared store was last asked about this backend, in
    /// seconds; `u64::MAX` before the first time.
    checked: u64,
}

impl CircuitBreaker for ErrorRateBreaker {
    fn init(pool: &str, config: &Config) -> Result<Self, String> {
        let window_ms = config.millis("window")?.unwrap_or(10_000);
        let breaker = ErrorRateBreaker {
            threshold: config.parse("threshold")?.unwrap_or(0.05),
            window_secs: window_ms.div_ceil(1000),
            min_requests: config.parse("min_requests")?.unwrap_or(20),
            cool_down_ms: config.millis("cool_down")?.unwrap_or(5_000),
            max_cool_down_ms: config.millis("max_cool_down")?.unwrap_or(60_000),
            trial_requests: config.parse("trial_requests")?.unwrap_or(3),
            cool_down_on_429: config.parse("cool_down_on_429")?.unwrap_or(true),
            share: config
                .parse::<bool>("share_trips")?
                .unwrap_or(false)
                .then(|| format!("breaker:{pool}")),
            backends: Vec::new(),
        };
        if !(0.0..1.0).contains(&breaker.threshold) {
            return Err("threshold must be in 0..1 (a share, 0.05 = 5 %)".into());
        }
        if !(1..=MAX_WINDOW_SECS).contains(&breaker.window_secs) {
            return Err(format!("window must be 1s..={MAX_WINDOW_SECS}s"));
        }
        if breaker.trial_requests == 0 || breaker.cool_down_ms == 0 {
            return Err("trial_requests and cool_down must be above zero".into());
        }
        Ok(breaker)
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        let fresh = Backend {
            mode: Mode::Closed,
            trips: 0,
            buckets: vec![(0, 0, 0); self.window_secs as usize],
            name: String::new(),
            checked: u64::MAX,
        };
        self.backends.resize(backends.len(), fresh);
        for (b, info) in self.backends.iter_mut().zip(backends) {
            b.name.clone_from(&info.name);
        }
    }

    fn record(&mut self, outcome: &Outcome) -> Option<BreakerUpdate> {
        let second = host::now() / 1_000_000_000;
        if let Some(open) = self.tripped_elsewhere(outcome.backend, second) {
            return Some(open);
        }
        let update = self.record_at(outcome, second);
        if let (Some(BreakerUpdate::Open(ms)), Some(b)) =
            (update, self.backends.get(outcome.backend as usize))
            && b.mode == Mode::Open
        {
            self.publish_trip(outcome.backend, ms);
        }
        update
    }

    fn cool_down_ended(&mut self, backend: u32) -> BreakerUpdate {
        let trials = self.trial_requests;
        let Some(b) = self.backends.get_mut(backend as usize) else {
            return BreakerUpdate::Closed;
        };
        match b.mode {
            Mode::RateLimited | Mode::Closed => {
                b.mode = Mode::Closed;
                BreakerUpdate::Closed
            }
            Mode::Open | Mode::HalfOpen { .. } => {
                b.mode = Mode::HalfOpen { successes: 0 };
                BreakerUpdate::HalfOpen(trials)
            }
        }
    }
}

impl ErrorRateBreaker {
    fn shared_key(&self, backend: u32) -> Option<String> {
        let prefix = self.share.as_ref()?;
        let b = self.backends.get(backend as usize)?;
        Some(format!("{prefix}:{}", b.name))
    }

    /// Publishes a trip of `backend` for `ms`: the wall-clock time it ends.
    fn publish_trip(&self, backend: u32, ms: u32) {
        let Some(key) = self.shared_key(backend) else {
            return;
        };
        let until = shared::wall_clock_ms() + u64::from(ms);
        if shared::set(&key, &until.to_string(), ms.max(1)).is_err() {
            host::counter_add("shared_unavailable", 1);
        }
    }

    /// Whether another replica tripped `backend`, which this one still has
    /// closed: asks the shared store at most once a second per backend.
    fn tripped_elsewhere(&mut self, backend: u32, second: u64) -> Option<BreakerUpdate> {
        let key = self.shared_key(backend)?;
        let b = self.backends.get_mut(backend as usize)?;
        if b.mode != Mode::Closed || b.checked == second {
            return None;
        }
        b.checked = second;
        let until: u64 = match shared::get(&key) {
            Ok(value) => value?.parse().ok()?,
            Err(_) => {
                host::counter_add("shared_unavailable", 1);
                return None;
            }
        };
        let left = until.saturating_sub(shared::wall_clock_ms());
        if left == 0 {
            return None;
        }
        b.mode = Mode::Open;
        b.trips += 1;
        Some(BreakerUpdate::Open(left.min(u64::from(u32::MAX)) as u32))
    }

    /// [`CircuitBreaker::record`] at time `second`.
    fn record_at(&mut self, outcome: &Outcome, second: u64) -> Option<BreakerUpdate> {
        let failed = is_failure(outcome);
        let limited = outcome.error == Some(ErrorKind::RateLimited);
        let (threshold, min, window) = (self.threshold, self.min_requests, self.window_secs);
        let trials = self.trial_requests;
        let (cool, max_cool, on_429) = (
            self.cool_down_ms,
            self.max_cool_down_ms,
            self.cool_down_on_429,
        );
        let b = self.backends.get_mut(outcome.backend as usize)?;
        match b.mode {
            // Requests that were in flight when the breaker opened.
            Mode::Open | Mode::RateLimited => None,
            Mode::HalfOpen { successes } => {
                if failed {
                    b.trips += 1;
                    b.mode = Mode::Open;
                    Some(BreakerUpdate::Open(cool_down(cool, max_cool, b.trips)))
                } else if successes + 1 >= trials {
                    b.mode = Mode::Closed;
                    b.trips = 0;
                    b.buckets.iter_mut().for_each(|x| *x = (0, 0, 0));
                    Some(BreakerUpdate::Closed)
                } else {
                    b.mode = Mode::HalfOpen {
                        successes: successes + 1,
                    };
                    None
                }
            }
            Mode::Closed if limited && on_429 => {
                b.mode = Mode::RateLimited;
                let ms = outcome.retry_after_ms.map_or(cool, u64::from).min(max_cool);
                Some(BreakerUpdate::Open(ms.max(1) as u32))
            }
            Mode::Closed => {
                let slot = &mut b.buckets[(second % window) as usize];
                if slot.0 != second {
                    *slot = (second, 0, 0);
                }
                slot.1 += 1;
                slot.2 += u32::from(failed);
                if !failed {
                    return None;
                }
                let (total, errors) = b
                    .buckets
                    .iter()
                    .filter(|x| second.saturating_sub(x.0) < window)
                    .fold((0u64, 0u64), |(t, e), x| {
                        (t + u64::from(x.1), e + u64::from(x.2))
                    });
                if total < min || (errors as f64) <= threshold * total as f64 {
                    return None;
                }
                b.trips += 1;
                b.mode = Mode::Open;
                host::warn(&format!(
                    "backend {} tripped: {errors} of {total} requests failed",
                    outcome.backend
                ));
                Some(BreakerUpdate::Open(cool_down(cool, max_cool, b.trips)))
            }
        }
    }
}

/// `base` doubled for each trip after the first, capped at `max`.
fn cool_down(base: u64, max: u64, trips: u32) -> u32 {
    let ms = base.saturating_mul(1u64 << trips.saturating_sub(1).min(20));
    ms.min(max).min(u64::from(u32::MAX)) as u32
}

export_breaker!(ErrorRateBreaker);

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> ErrorRateBreaker {
        let mut b = ErrorRateBreaker::init(
            "p",
            &Config::from_pairs(&[("min_requests", "20"), ("cool_down", "1s")]),
        )
        .unwrap();
        b.set_backends(&[BackendInfo::new(0, "a", &[]), BackendInfo::new(1, "b", &[])]);
        b
    }

    /// Feeds `n` outcomes, every `every`-th failing with 503, over a few
    /// seconds; returns the first update.
    fn feed(b: &mut ErrorRateBreaker, n: u32, every: u32) -> Option<BreakerUpdate> {
        (0..n).find_map(|i| {
            let status = if i % every == every - 1 { 503 } else { 200 };
            b.record_at(&Outcome::with_status(0, status), 100 + u64::from(i / 50))
        })
    }

    #[test]
    fn ten_percent_trips_two_percent_does_not() {
        assert_eq!(
            feed(&mut breaker(), 400, 10),
            Some(BreakerUpdate::Open(1000))
        );
        assert_eq!(feed(&mut breaker(), 400, 50), None);
    }

    #[test]
    fn needs_min_requests() {
        let mut b = breaker();
        for _ in 0..5 {
            assert_eq!(b.record_at(&Outcome::with_status(0, 0), 5), None);
        }
    }

    #[test]
    fn half_open_closes_after_trials_or_reopens_longer() {
        let mut b = breaker();
        assert!(feed(&mut b, 100, 2).is_some());
        assert_eq!(b.cool_down_ended(0), BreakerUpdate::HalfOpen(3));
        // A failed trial: open again, twice as long.
        assert_eq!(
            b.record_at(&Outcome::with_status(0, 502), 200),
            Some(BreakerUpdate::Open(2000))
        );
        assert_eq!(b.cool_down_ended(0), BreakerUpdate::HalfOpen(3));
        assert_eq!(b.record_at(&Outcome::with_status(0, 200), 210), None);
        assert_eq!(b.record_at(&Outcome::with_status(0, 200), 210), None);
        assert_eq!(
            b.record_at(&Outcome::with_status(0, 200), 210),
            Some(BreakerUpdate::Closed)
        );
        // Counts start over once closed; the other backend was never touched.
        assert_eq!(b.record_at(&Outcome::with_status(0, 503), 211), None);
        assert_eq!(b.record_at(&Outcome::with_status(1, 200), 211), None);
    }

    #[test]
    fn a_429_cools_down_for_its_retry_after_then_closes() {
        let mut b = breaker();
        let mut limited = Outcome::with_status(1, 429);
        limited.retry_after_ms = Some(2000);
        assert_eq!(b.record_at(&limited, 1), Some(BreakerUpdate::Open(2000)));
        assert_eq!(b.cool_down_ended(1), BreakerUpdate::Closed);
    }

    #[test]
    fn settings_are_checked() {
        assert!(ErrorRateBreaker::init("p", &Config::from_pairs(&[("threshold", "5")])).is_err());
        assert!(ErrorRateBreaker::init("p", &Config::from_pairs(&[("window", "1h")])).is_err());
    }

    #[test]
    fn shared_trips_open_the_backend_on_other_replicas() {
        shared::set_wall_clock_ms(Some(1_000_000));
        let replica = |share: &str| {
            let config = Config::from_pairs(&[
                ("min_requests", "20"),
                ("cool_down", "30s"),
                ("share_trips", share),
            ]);
            let mut r = ErrorRateBreaker::init("models", &config).unwrap();
            r.set_backends(&[
                BackendInfo::new(0, "gpt", &[]),
                BackendInfo::new(1, "other", &[]),
            ]);
            r
        };
        let (mut a, mut b, mut alone) = (replica("true"), replica("true"), replica("false"));
        // Replica `a` sees the failures and trips.
        let tripped = (0..40).find_map(|_| a.record(&Outcome::with_status(0, 503)));
        assert_eq!(tripped, Some(BreakerUpdate::Open(30_000)));
        // Replica `b`, with only successes of its own, opens on its next
        // outcome, for what is left of the cool-down; the other backend
        // stays closed, and so does a replica that does not share.
        shared::set_wall_clock_ms(Some(1_010_000));
        assert_eq!(
            b.record(&Outcome::with_status(0, 200)),
            Some(BreakerUpdate::Open(20_000))
        );
        assert_eq!(b.record(&Outcome::with_status(1, 200)), None);
        assert_eq!(alone.record(&Outcome::with_status(0, 200)), None);
        // After the cool-down, `b` tries the backend itself.
        assert_eq!(b.cool_down_ended(0), BreakerUpdate::HalfOpen(3));
        shared::set_wall_clock_ms(None);
    }
}
