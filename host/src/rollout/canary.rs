//! A canary: the route's router is a new version that decides a growing
//! share of requests while the previous version decides the rest. Which
//! version decides is a stable hash of a request key (a thread stays with
//! one version as the share grows). Each version's outcomes are counted;
//! when the new one fails too often or its p99 regresses past the limit,
//! the route rolls back to the previous version by itself. A new version
//! that holds a whole step at 100 % is done.
//!
//! The state lives beside the loaded versions, so a reload that keeps both
//! versions and the settings keeps the canary where it is.

use crate::config::CanaryConfig;
use crate::plugin::RouterPlugin;
use http::{HeaderName, Request};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

/// Latencies kept per version for its p99.
const LATENCY_RING: usize = 4096;
/// Shares are kept in basis points.
const WHOLE: u32 = 10_000;

/// Which version decides a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    New,
    Previous,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::New => "new",
            Arm::Previous => "previous",
        }
    }
}

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running = 0,
    RolledBack = 1,
    Done = 2,
}

/// A route's canary: its previous version and the shared state.
pub struct Canary {
    pub previous: Arc<RouterPlugin>,
    pub config: CanaryConfig,
    key: HeaderName,
    state: Arc<State>,
}

struct State {
    route: String,
    share_bp: AtomicU32,
    phase: AtomicU8,
    step_started_ms: AtomicU64,
    arms: [ArmStats; 2],
    detail: Mutex<Detail>,
    share_gauge: metrics::Gauge,
    phase_gauge: metrics::Gauge,
}

#[derive(Default)]
struct Detail {
    reason: Option<String>,
    /// The previous version's p99 (µs) from the last step it had enough
    /// requests in, for steps where it has too few.
    baseline_p99_us: Option<u32>,
    steps: u32,
}

#[derive(Default)]
struct ArmStats {
    /// This step's requests and failures.
    requests: AtomicU64,
    failures: AtomicU64,
    total_requests: AtomicU64,
    total_failures: AtomicU64,
    latencies: Mutex<Vec<u32>>,
}

// === impl Canary ===

impl Canary {
    /// The canary of `route` rolling `new` out over `previous`; picks up the
    /// running state of the same canary from before a reload.
    pub fn new(
        route: &str,
        new: &RouterPlugin,
        previous: Arc<RouterPlugin>,
        config: CanaryConfig,
    ) -> Canary {
        static LIVE: Mutex<Option<HashMap<String, Weak<State>>>> = Mutex::new(None);
        let id = format!(
            "{route}\n{}\n{}\n{config:?}",
            new.component.hash, previous.component.hash
        );
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let live = live.get_or_insert_with(HashMap::new);
        live.retain(|_, s| s.strong_count() > 0);
        let state = match live.get(&id).and_then(Weak::upgrade) {
            Some(state) => state,
            None => {
                let state = Arc::new(State::new(route, &config));
                tracing::info!(route, new = %new.name(), previous = %previous.name(),
                    "canary started at {:.1} % of requests", config.share * 100.0);
                live.insert(id, Arc::downgrade(&state));
                state
            }
        };
        Canary {
            previous,
            key: HeaderName::from_bytes(config.key.as_bytes())
                .unwrap_or(HeaderName::from_static("x-thread-id")),
            config,
            state,
        }
    }

    /// The version that decides `req`: a hash of its key header (or the
    /// client address) against the current share.
    pub fn pick<B>(&self, req: &Request<B>, client: IpAddr) -> Arm {
        match self.phase() {
            Phase::RolledBack => return Arm::Previous,
            Phase::Done => return Arm::New,
            Phase::Running => {}
        }
        self.maybe_step();
        let hash = match req.headers().get(&self.key) {
            Some(v) => fnv1a(v.as_bytes()),
            None => match client {
                IpAddr::V4(a) => fnv1a(&a.octets()),
                IpAddr::V6(a) => fnv1a(&a.octets()),
            },
        };
        if (hash % u64::from(WHOLE)) < u64::from(self.state.share_bp.load(Relaxed)) {
            Arm::New
        } else {
            Arm::Previous
        }
    }

    pub fn phase(&self) -> Phase {
        match self.state.phase.load(Relaxed) {
            1 => Phase::RolledBack,
            2 => Phase::Done,
            _ => Phase::Running,
        }
    }

    /// Moves to the next step once this one has lasted `step`.
    fn maybe_step(&self) {
        let s = &self.state;
        let now = crate::clock::millis();
        let step_ms = self.config.step.as_millis() as u64;
        if now < s.step_started_ms.load(Relaxed) + step_ms {
            return;
        }
        let Ok(mut detail) = s.detail.try_lock() else {
            return;
        };
        if self.phase() != Phase::Running || now < s.step_started_ms.load(Relaxed) + step_ms {
            return;
        }
        let previous = &s.arms[Arm::Previous as usize];
        if previous.latencies_len() >= self.config.min_latency_samples as usize {
            detail.baseline_p99_us = previous.p99();
        }
        for arm in &s.arms {
            arm.reset();
        }
        s.step_started_ms.store(now, Relaxed);
        let share = s.share_bp.load(Relaxed);
        if share >= WHOLE {
            s.phase.store(Phase::Done as u8, Relaxed);
            s.phase_gauge.set(Phase::Done as u8 as f64);
            tracing::info!(route = %s.route, "canary done: the new version held 100 % for a step");
            return;
        }
        let next = (share + share_bp(self.config.share)).min(WHOLE);
        s.share_bp.store(next, Relaxed);
        s.share_gauge.set(f64::from(next) / f64::from(WHOLE));
        detail.steps += 1;
        tracing::info!(route = %s.route, "canary step {}: the new version decides {:.1} % of requests",
            detail.steps, f64::from(next) / 100.0);
    }

    /// Counts how a request the `arm` version routed ended, and rolls back
    /// when the new version crosses a limit.
    pub fn observe(&self, arm: Arm, failed: bool, latency_us: u32) {
        let s = &self.state;
        let stats = &s.arms[arm as usize];
        let requests = stats.requests.fetch_add(1, Relaxed) + 1;
        stats.total_requests.fetch_add(1, Relaxed);
        let failures = if failed {
            stats.total_failures.fetch_add(1, Relaxed);
            stats.failures.fetch_add(1, Relaxed) + 1
        } else {
            stats.failures.load(Relaxed)
        };
        stats.push_latency(latency_us);
        if arm != Arm::New || self.phase() != Phase::Running {
            return;
        }
        let c = &self.config;
        let rate = failures as f64 / requests as f64;
        let previous = &s.arms[Arm::Previous as usize];
        let previous_rate =
            previous.failures.load(Relaxed) as f64 / previous.requests.load(Relaxed).max(1) as f64;
        if failures >= u64::from(c.min_failures) && rate > c.max_error_rate && rate > previous_rate
        {
            self.roll_back(format!(
                "error rate {:.1} % over {requests} requests exceeds max_error_rate {:.1} % (previous version: {:.1} %)",
                rate * 100.0,
                c.max_error_rate * 100.0,
                previous_rate * 100.0
            ));
            return;
        }
        if !requests.is_multiple_of(16) || stats.latencies_len() < c.min_latency_samples as usize {
            return;
        }
        let baseline = if previous.latencies_len() >= c.min_latency_samples as usize {
            previous.p99()
        } else {
            s.detail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .baseline_p99_us
        };
        let floor = c.min_p99_increase.as_micros() as f64;
        if let (Some(new), Some(old)) = (stats.p99(), baseline)
            && f64::from(new) > f64::from(old) * (1.0 + c.max_p99_regression)
            && f64::from(new) - f64::from(old) > floor
        {
            self.roll_back(format!(
                "p99 {:.1} ms is {:.0} % above the previous version's {:.1} ms (max_p99_regression {:.0} %)",
                f64::from(new) / 1e3,
                (f64::from(new) / f64::from(old.max(1)) - 1.0) * 100.0,
                f64::from(old) / 1e3,
                c.max_p99_regression * 100.0
            ));
        }
    }

    fn roll_back(&self, reason: String) {
        let s = &self.state;
        let mut detail = s.detail.lock().unwrap_or_else(|e| e.into_inner());
        if self.phase() != Phase::Running {
            return;
        }
        s.phase.store(Phase::RolledBack as u8, Relaxed);
        s.share_bp.store(0, Relaxed);
        s.share_gauge.set(0.0);
        s.phase_gauge.set(Phase::RolledBack as u8 as f64);
        metrics::counter!("switchyard_canary_rollbacks_total", "route" => s.route.clone())
            .increment(1);
        tracing::error!(route = %s.route, previous = %self.previous.name(),
            "canary rolled back to the previous version: {reason}");
        detail.reason = Some(reason);
    }

    /// What `/status` shows of the canary.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.state;
        let detail = s.detail.lock().unwrap_or_else(|e| e.into_inner());
        let arm = |a: Arm| {
            let x = &s.arms[a as usize];
            let requests = x.requests.load(Relaxed);
            let failures = x.failures.load(Relaxed);
            serde_json::json!({
                "requests": requests, "failures": failures,
                "error_rate": if requests == 0 { 0.0 } else { failures as f64 / requests as f64 },
                "p99_ms": x.p99().map(|us| f64::from(us) / 1e3),
                "total_requests": x.total_requests.load(Relaxed),
                "total_failures": x.total_failures.load(Relaxed),
            })
        };
        let phase = match self.phase() {
            Phase::Running => "running",
            Phase::RolledBack => "rolled_back",
            Phase::Done => "done",
        };
        let step_ms = self.config.step.as_millis() as u64;
        let next =
            (s.step_started_ms.load(Relaxed) + step_ms).saturating_sub(crate::clock::millis());
        serde_json::json!({
            "phase": phase,
            "share": f64::from(s.share_bp.load(Relaxed)) / f64::from(WHOLE),
            "previous": self.previous.name(),
            "previous_version": self.previous.component.hash,
            "step_s": self.config.step.as_secs_f64(),
            "steps_taken": detail.steps,
            "next_step_in_ms": (self.phase() == Phase::Running).then_some(next),
            "reason": detail.reason,
            "max_error_rate": self.config.max_error_rate,
            "max_p99_regression": self.config.max_p99_regression,
            "new": arm(Arm::New),
            "previous_stats": arm(Arm::Previous),
        })
    }
}

// === impl State ===

impl State {
    fn new(route: &str, config: &CanaryConfig) -> State {
        let labels = [("route", route.to_string())];
        let share = share_bp(config.share);
        let share_gauge = metrics::gauge!("switchyard_canary_share", &labels);
        share_gauge.set(f64::from(share) / f64::from(WHOLE));
        let phase_gauge = metrics::gauge!("switchyard_canary_phase", &labels);
        phase_gauge.set(0.0);
        State {
            route: route.to_string(),
            share_bp: AtomicU32::new(share),
            phase: AtomicU8::new(Phase::Running as u8),
            step_started_ms: AtomicU64::new(crate::clock::millis()),
            arms: Default::default(),
            detail: Mutex::default(),
            share_gauge,
            phase_gauge,
        }
    }
}

// === impl ArmStats ===

impl ArmStats {
    fn push_latency(&self, us: u32) {
        let mut ring = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() < LATENCY_RING {
            ring.push(us);
        } else {
            let at = (self.requests.load(Relaxed) as usize) % LATENCY_RING;
            ring[at] = us;
        }
    }

    fn latencies_len(&self) -> usize {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn p99(&self) -> Option<u32> {
        let mut v = self
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if v.is_empty() {
            return None;
        }
        let at = (v.len() * 99 / 100).min(v.len() - 1);
        Some(*v.select_nth_unstable(at).1)
    }

    fn reset(&self) {
        self.requests.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

fn share_bp(share: f64) -> u32 {
    ((share * f64::from(WHOLE)).round() as u32).clamp(1, WHOLE)
}

/// FNV-1a: stable across processes and replicas, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix the high bits down: FNV's low bits are weak for short keys.
    h ^ (h >> 29)
}
