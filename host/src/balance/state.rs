//! Live state of one backend, shared by all worker threads.
//!
//! Everything is an atomic: least-outstanding routing needs the global
//! in-flight count, not one thread's view. Moving averages use plain
//! load/store; a lost update under a race shifts an average by one sample.

use super::QuotaReport;
use super::ewma::{decayed, update_ewma, update_ewma_at};
use super::window::RollingWindow;
use crate::clock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};

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

    /// [`BackendState::record_ttfb`] at `now_ms` (`clock::millis()`).
    pub fn record_ttfb_at(&self, micros: u32, now_ms: u64) {
        update_ewma_at(&self.ewma_ttfb_us, &self.ttfb_at_ms, micros, now_ms);
    }

    /// Records how a request ended and how long it took in all.
    pub fn record_outcome(&self, outcome: Outcome, micros: u32) {
        self.record_outcome_at(outcome, micros, clock::millis());
    }

    /// [`BackendState::record_outcome`] at `now` (clock milliseconds), for
    /// a caller that has read the clock already: one read serves the
    /// average and the window.
    pub fn record_outcome_at(&self, outcome: Outcome, micros: u32, now: u64) {
        update_ewma_at(&self.ewma_latency_us, &self.latency_at_ms, micros, now);
        self.record_passive(outcome);
        let failed = match outcome {
            Outcome::Response(status) => status >= 500,
            Outcome::ConnectError | Outcome::Timeout | Outcome::Reset => true,
        };
        self.window.add_at(1, u32::from(failed), now);
        let (total, errors) = self.window.sums_at(now);
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
mod tests;
