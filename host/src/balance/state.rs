//! Live state of one backend, shared by all worker threads.
//!
//! Everything is an atomic: least-outstanding routing needs the global
//! in-flight count, not one thread's view. Moving averages use plain
//! load/store; a lost update under a race shifts an average by one sample.

use super::QuotaReport;
use crate::clock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Seconds covered by the rolling error window.
const WINDOW_SECS: u64 = 10;
/// `u64::MAX` marks a quota the upstream never reported.
const UNKNOWN: u64 = u64::MAX;

/// Health as the host tracks it; mirrors the WIT `health` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy = 0,
    Degraded = 1,
    Unhealthy = 2,
}

/// Circuit-breaker state; mirrors the WIT `breaker-state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Breaker {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// How one request to a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived and its body ended cleanly; the status is recorded.
    Response(u16),
    ConnectError,
    Timeout,
    /// The connection broke mid-exchange.
    Reset,
}

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
        let now = clock::millis() / 1000;
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
        let now = clock::millis() / 1000;
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

/// Live, shared state of one backend.
pub struct BackendState {
    in_flight: AtomicU32,
    ewma_latency_us: AtomicU32,
    ewma_ttfb_us: AtomicU32,
    /// When each average last took a sample (process clock, ms): averages
    /// decay with age, so a figure from long ago does not decide ties.
    latency_at_ms: AtomicU64,
    ttfb_at_ms: AtomicU64,
    window: RollingWindow,
    /// Error rate over the window in per mille, refreshed on every outcome.
    error_rate: AtomicU16,
    health: AtomicU8,
    breaker: AtomicU8,
    /// Trial requests a half-open breaker still admits.
    trial_permits: AtomicU32,
    /// Clock milliseconds at which an open breaker's cool-down ends.
    breaker_until_ms: AtomicU64,
    /// Bumped on every breaker change, so stale timers know to do nothing.
    breaker_epoch: AtomicU64,
    load_score: AtomicU16,
    remaining_requests: AtomicU64,
    remaining_tokens: AtomicU64,
    /// Clock milliseconds at which the reported quota resets; 0 = unknown.
    quota_reset_at_ms: AtomicU64,
    /// Connect errors, timeouts and resets in a row (passive health).
    consecutive_failures: AtomicU32,
    /// Clock milliseconds until which passive health keeps the backend out;
    /// 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Passive health settings: failures in a row that eject, and for how long.
    max_fails: AtomicU32,
    fail_timeout_ms: AtomicU64,
    /// Whether 502/503/504 answers count as passive failures.
    fail_on_5xx: AtomicBool,
}

/// A snapshot of a backend's state, as routers and the admin API see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LoadSnapshot {
    pub in_flight: u32,
    pub ewma_latency_us: u32,
    pub ewma_ttfb_us: u32,
    pub error_rate: u16,
    pub health: Health,
    pub breaker: Breaker,
    pub load_score: u16,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub quota_reset_ms: u32,
}

impl Default for BackendState {
    fn default() -> Self {
        BackendState {
            in_flight: AtomicU32::new(0),
            ewma_latency_us: AtomicU32::new(0),
            ewma_ttfb_us: AtomicU32::new(0),
            latency_at_ms: AtomicU64::new(0),
            ttfb_at_ms: AtomicU64::new(0),
            window: Default::default(),
            error_rate: AtomicU16::new(0),
            health: AtomicU8::new(Health::Healthy as u8),
            breaker: AtomicU8::new(Breaker::Closed as u8),
            trial_permits: AtomicU32::new(0),
            breaker_until_ms: AtomicU64::new(0),
            breaker_epoch: AtomicU64::new(0),
            load_score: AtomicU16::new(0),
            remaining_requests: AtomicU64::new(UNKNOWN),
            remaining_tokens: AtomicU64::new(UNKNOWN),
            quota_reset_at_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            max_fails: AtomicU32::new(0),
            fail_timeout_ms: AtomicU64::new(0),
            fail_on_5xx: AtomicBool::new(false),
        }
    }
}

// === impl BackendState ===

impl BackendState {
    /// Requests in flight to this backend across all threads.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Sort key of the built-in router at `now_ms`: in flight, then the
    /// latency average as decayed since its last sample.
    pub fn load_rank(&self, now_ms: u64) -> (u32, u32) {
        (
            self.in_flight.load(Relaxed),
            decayed(&self.ewma_latency_us, &self.latency_at_ms, now_ms),
        )
    }

    /// Counts a request as started; the guard ends it when dropped.
    pub fn start_request(self: &std::sync::Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Relaxed);
        InFlightGuard {
            state: self.clone(),
            trial: false,
        }
    }

    /// Sets passive health: after `max_fails` connect errors, timeouts or
    /// resets (and, with `fail_on_5xx`, 502/503/504 answers) in a row the
    /// backend is out for `fail_timeout` (nginx's `max_fails` /
    /// `fail_timeout`); 0 turns it off.
    pub fn set_passive_health(
        &self,
        max_fails: u32,
        fail_timeout: std::time::Duration,
        fail_on_5xx: bool,
    ) {
        self.max_fails.store(max_fails, Relaxed);
        self.fail_on_5xx.store(fail_on_5xx, Relaxed);
        self.fail_timeout_ms
            .store(fail_timeout.as_millis() as u64, Relaxed);
    }

    /// Whether passive health has the backend out right now. Reads the
    /// clock only while an ejection is pending.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        if until == 0 {
            return false;
        }
        if clock::millis() < until {
            return true;
        }
        // Time is up: let traffic try it again.
        if self
            .ejected_until_ms
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok()
        {
            self.consecutive_failures.store(0, Relaxed);
        }
        false
    }

    pub fn health(&self) -> Health {
        if self.is_ejected() {
            return Health::Unhealthy;
        }
        match self.health.load(Relaxed) {
            0 => Health::Healthy,
            1 => Health::Degraded,
            _ => Health::Unhealthy,
        }
    }

    pub fn set_health(&self, health: Health, load_score: u16) {
        self.health.store(health as u8, Relaxed);
        self.load_score.store(load_score.min(1000), Relaxed);
    }

    pub fn breaker(&self) -> Breaker {
        match self.breaker.load(Relaxed) {
            0 => Breaker::Closed,
            1 => Breaker::Open,
            _ => Breaker::HalfOpen,
        }
    }

    /// Sets the breaker state: `open_ms` is the cool-down of an open
    /// breaker, `trials` the requests a half-open one admits. Returns the
    /// new epoch, which timers compare against [`BackendState::breaker_epoch`].
    pub fn set_breaker(&self, breaker: Breaker, open_ms: u64, trials: u32) -> u64 {
        self.trial_permits.store(trials, Relaxed);
        let until = match breaker {
            Breaker::Open => clock::millis() + open_ms,
            _ => 0,
        };
        self.breaker_until_ms.store(until, Relaxed);
        self.breaker.store(breaker as u8, Relaxed);
        self.breaker_epoch.fetch_add(1, Relaxed) + 1
    }

    /// Counts breaker changes; see [`BackendState::set_breaker`].
    pub fn breaker_epoch(&self) -> u64 {
        self.breaker_epoch.load(Relaxed)
    }

    /// Milliseconds until an open breaker's cool-down ends; 0 otherwise.
    pub fn breaker_remaining_ms(&self) -> u64 {
        self.breaker_until_ms
            .load(Relaxed)
            .saturating_sub(clock::millis())
    }

    /// Trial requests a half-open breaker still admits.
    pub fn trial_permits(&self) -> u32 {
        self.trial_permits.load(Relaxed)
    }

    /// Whether the host may send traffic here at all (routers use this;
    /// a half-open backend counts as usable).
    pub fn is_usable(&self) -> bool {
        self.health() != Health::Unhealthy && self.breaker() != Breaker::Open
    }

    /// Starts a request here if it may go now: usable, under `cap` requests
    /// in flight (0 = no cap; reserved atomically, so workers racing for
    /// the last slot cannot both take it), and, when half-open, holding one
    /// of the breaker's trial permits. A guard dropped before
    /// [`InFlightGuard::sent`] gives its trial permit back.
    pub fn try_start(self: &std::sync::Arc<Self>, cap: u32) -> Option<InFlightGuard> {
        if self.health() == Health::Unhealthy {
            return None;
        }
        let trial = match self.breaker() {
            Breaker::Closed => false,
            Breaker::Open => return None,
            Breaker::HalfOpen => true,
        };
        let reserved = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| (cap == 0 || n < cap).then_some(n + 1));
        if reserved.is_err() {
            return None;
        }
        let mut guard = InFlightGuard {
            state: self.clone(),
            trial: false,
        };
        if trial {
            if self
                .trial_permits
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_err()
            {
                return None; // the guard gives the slot back
            }
            guard.trial = true;
        }
        Some(guard)
    }

    /// Requests that finished over the rolling window.
    pub fn recent_requests(&self) -> u64 {
        self.window.sums().0
    }

    /// Records the time to the response headers.
    pub fn record_ttfb(&self, micros: u32) {
        update_ewma(&self.ewma_ttfb_us, &self.ttfb_at_ms, micros);
    }

    /// Records how a request ended and how long it took in all.
    pub fn record_outcome(&self, outcome: Outcome, micros: u32) {
        update_ewma(&self.ewma_latency_us, &self.latency_at_ms, micros);
        self.record_passive(outcome);
        let failed = match outcome {
            Outcome::Response(status) => status >= 500,
            Outcome::ConnectError | Outcome::Timeout | Outcome::Reset => true,
        };
        self.window.add(1, u32::from(failed));
        let (total, errors) = self.window.sums();
        let rate = (errors * 1000).checked_div(total).unwrap_or(0);
        self.error_rate.store(rate.min(1000) as u16, Relaxed);
    }

    /// Counts connect errors, timeouts and resets in a row; ejects the
    /// backend when they reach `max_fails`. 5xx answers count only with
    /// `fail_on_5xx`; otherwise they are the breaker's business.
    fn record_passive(&self, outcome: Outcome) {
        let max_fails = self.max_fails.load(Relaxed);
        if max_fails == 0 {
            return;
        }
        if let Outcome::Response(status) = outcome
            && !(matches!(status, 502..=504) && self.fail_on_5xx.load(Relaxed))
        {
            if self.consecutive_failures.load(Relaxed) != 0 {
                self.consecutive_failures.store(0, Relaxed);
            }
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures >= max_fails && self.ejected_until_ms.load(Relaxed) == 0 {
            let until = clock::millis() + self.fail_timeout_ms.load(Relaxed);
            if self
                .ejected_until_ms
                .compare_exchange(0, until, Relaxed, Relaxed)
                .is_ok()
            {
                metrics::counter!("switchyard_backend_ejections_total").increment(1);
            }
        }
    }

    /// Records rate-limit facts reported by the upstream.
    pub fn record_quota(&self, quota: &QuotaReport) {
        if let Some(r) = quota.remaining_requests {
            self.remaining_requests.store(r, Relaxed);
        }
        if let Some(t) = quota.remaining_tokens {
            self.remaining_tokens.store(t, Relaxed);
        }
        if let Some(ms) = quota.reset_ms {
            self.quota_reset_at_ms.store(clock::millis() + ms, Relaxed);
        }
    }

    /// The state as one consistent-enough snapshot.
    pub fn snapshot(&self) -> LoadSnapshot {
        self.snapshot_at(clock::millis())
    }

    /// The snapshot at `now_ms` (one clock read for a whole pool).
    pub fn snapshot_at(&self, now_ms: u64) -> LoadSnapshot {
        let known = |v: u64| (v != UNKNOWN).then_some(v);
        let reset_at = self.quota_reset_at_ms.load(Relaxed);
        let quota_reset_ms = if reset_at == 0 {
            0
        } else {
            reset_at.saturating_sub(now_ms).min(u64::from(u32::MAX)) as u32
        };
        LoadSnapshot {
            in_flight: self.in_flight.load(Relaxed),
            ewma_latency_us: decayed(&self.ewma_latency_us, &self.latency_at_ms, now_ms),
            ewma_ttfb_us: decayed(&self.ewma_ttfb_us, &self.ttfb_at_ms, now_ms),
            error_rate: self.error_rate.load(Relaxed),
            health: self.health(),
            breaker: self.breaker(),
            load_score: self.load_score.load(Relaxed),
            remaining_requests: known(self.remaining_requests.load(Relaxed)),
            remaining_tokens: known(self.remaining_tokens.load(Relaxed)),
            quota_reset_ms,
        }
    }
}

/// Half-life of an average that takes no samples.
const EWMA_HALF_LIFE_MS: f64 = 2000.0;

/// `cell`'s average as it stands at `now_ms`: halved for every
/// [`EWMA_HALF_LIFE_MS`] since its last sample (as peak-EWMA decays), so
/// an idle backend's old figure fades and it is tried again.
fn decayed(cell: &AtomicU32, at: &AtomicU64, now_ms: u64) -> u32 {
    let value = cell.load(Relaxed);
    let age = now_ms.saturating_sub(at.load(Relaxed));
    if value == 0 || age < 50 {
        return value;
    }
    let factor = (-(age as f64) / EWMA_HALF_LIFE_MS).exp2();
    ((f64::from(value) * factor) as u32).max(1)
}

/// Moving average with weight 1/5 for the new sample, over the old average
/// as decayed to now.
fn update_ewma(cell: &AtomicU32, at: &AtomicU64, sample: u32) {
    let now = clock::millis();
    let old = decayed(cell, at, now);
    let new = if old == 0 {
        sample.max(1)
    } else {
        ((u64::from(old) * 4 + u64::from(sample)) / 5).max(1) as u32
    };
    cell.store(new, Relaxed);
    at.store(now, Relaxed);
}

/// Ends an in-flight request when dropped, whatever path the request took.
pub struct InFlightGuard {
    state: std::sync::Arc<BackendState>,
    /// Holds a half-open trial permit not yet spent on a sent request.
    trial: bool,
}

impl InFlightGuard {
    /// The request went out: its trial permit, if any, is spent.
    pub fn sent(&mut self) {
        self.trial = false;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
        if self.trial {
            self.state.trial_permits.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn in_flight_follows_guards() {
        let s = Arc::new(BackendState::default());
        let a = s.start_request();
        let b = s.start_request();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn error_rate_counts_failures_in_the_window() {
        let s = BackendState::default();
        for _ in 0..3 {
            s.record_outcome(Outcome::Response(200), 1000);
        }
        s.record_outcome(Outcome::Response(503), 1000);
        assert_eq!(s.snapshot().error_rate, 250);
        s.record_outcome(Outcome::ConnectError, 0);
        assert_eq!(s.snapshot().error_rate, 400);
    }

    #[test]
    fn an_idle_average_fades_with_time() {
        let s = BackendState::default();
        s.record_outcome(Outcome::Response(200), 1000);
        let at = s.latency_at_ms.load(Relaxed);
        assert_eq!(s.load_rank(at).1, 1000);
        assert_eq!(s.load_rank(at + 2000).1, 500);
        assert!(s.load_rank(at + 20_000).1 <= 1);
        assert_eq!(s.snapshot_at(at + 4000).ewma_latency_us, 250);
    }

    /// Light sequential traffic: nothing in flight, so latency breaks the
    /// tie. A backend that was slower once and then idle must win the tie
    /// again before long, or one backend takes every request.
    #[test]
    fn a_stale_figure_does_not_decide_ties_for_ever() {
        let (busy, idle) = (BackendState::default(), BackendState::default());
        idle.record_outcome(Outcome::Response(200), 600);
        busy.record_outcome(Outcome::Response(200), 500);
        let now = busy.latency_at_ms.load(Relaxed);
        assert!(
            busy.load_rank(now) < idle.load_rank(now),
            "the faster one leads at first"
        );
        // A second of traffic to `busy` only: its figure is fresh then,
        // the idle one's a second old.
        let later = now + 1000;
        busy.latency_at_ms.store(later, Relaxed);
        assert!(
            idle.load_rank(later) < busy.load_rank(later),
            "the idle one is tried again"
        );
    }

    #[test]
    fn the_in_flight_cap_is_reserved_atomically_and_trial_permits_come_back() {
        let s = Arc::new(BackendState::default());
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, peak) = (s.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Some(guard) = s.try_start(3) {
                            peak.fetch_max(s.in_flight(), Relaxed);
                            drop(guard);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Relaxed) <= 3, "{}", peak.load(Relaxed));
        assert_eq!(s.in_flight(), 0);
        s.set_breaker(Breaker::HalfOpen, 0, 1);
        let unsent = s.try_start(0).unwrap();
        assert!(s.try_start(0).is_none(), "one trial at a time");
        drop(unsent);
        assert_eq!(
            s.trial_permits(),
            1,
            "a request never sent gives its permit back"
        );
        let mut sent = s.try_start(0).unwrap();
        sent.sent();
        drop(sent);
        assert_eq!(s.trial_permits(), 0);
    }

    #[test]
    fn ewma_moves_toward_samples() {
        let s = BackendState::default();
        s.record_outcome(Outcome::Response(200), 1000);
        assert_eq!(s.snapshot().ewma_latency_us, 1000);
        s.record_outcome(Outcome::Response(200), 6000);
        assert_eq!(s.snapshot().ewma_latency_us, 2000);
    }

    #[test]
    fn consecutive_failures_eject_until_the_timeout() {
        let s = BackendState::default();
        s.set_passive_health(2, std::time::Duration::from_millis(40), false);
        s.record_outcome(Outcome::ConnectError, 0);
        s.record_outcome(Outcome::Response(200), 100);
        s.record_outcome(Outcome::ConnectError, 0);
        assert!(s.is_usable(), "a success in between resets the count");
        s.record_outcome(Outcome::Timeout, 0);
        assert!(!s.is_usable());
        assert_eq!(s.snapshot().health, Health::Unhealthy);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(s.is_usable(), "back after fail_timeout");
        s.record_outcome(Outcome::Response(503), 100);
        s.record_outcome(Outcome::Response(503), 100);
        assert!(s.is_usable(), "5xx is not passive health's business");
        s.set_passive_health(2, std::time::Duration::from_millis(40), true);
        s.record_outcome(Outcome::Response(503), 100);
        s.record_outcome(Outcome::Response(502), 100);
        assert!(!s.is_usable(), "unless fail_on_5xx says so");
    }
}
