//! What a job route counts on this replica: jobs running, how they ended,
//! clients following them, relay lag; for metrics, `/status` and the
//! dashboard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counts of one job route on this replica, kept across reloads.
#[derive(Debug, Default)]
pub struct RouteJobs {
    /// Jobs this replica started that have not ended.
    pub in_flight: AtomicU64,
    pub started: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    /// Jobs ended for want of an event within `job_timeout`.
    pub timed_out: AtomicU64,
    /// Clients that came back for a job with its id.
    pub resumed: AtomicU64,
    /// Client connections following a job now.
    pub relays: AtomicU64,
    pub refused: AtomicU64,
    /// Decaying average of relay lag (append to relay), in microseconds.
    pub relay_lag_us: AtomicU64,
}

/// How a job ended, for its route's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    /// A `result` event.
    Done,
    /// An `error` event from the worker or the proxy.
    Failed,
    /// No event from the worker within `job_timeout`.
    TimedOut,
}

impl JobEnd {
    fn label(self) -> &'static str {
        match self {
            JobEnd::Done => "done",
            JobEnd::Failed => "failed",
            JobEnd::TimedOut => "timed_out",
        }
    }
}

impl RouteJobs {
    fn gauge(&self, route: &str) {
        metrics::gauge!("switchyard_jobs_in_flight", "route" => route.to_string())
            .set(self.in_flight.load(Relaxed) as f64);
    }

    /// A job of `route` started here.
    pub fn start(&self, route: &str) {
        self.in_flight.fetch_add(1, Relaxed);
        self.started.fetch_add(1, Relaxed);
        self.gauge(route);
    }

    /// A job of `route` that started here ended.
    pub fn end(&self, route: &str, end: JobEnd) {
        self.in_flight.fetch_sub(1, Relaxed);
        match end {
            JobEnd::Done => &self.finished,
            JobEnd::Failed => &self.failed,
            JobEnd::TimedOut => &self.timed_out,
        }
        .fetch_add(1, Relaxed);
        metrics::counter!("switchyard_jobs_total", "route" => route.to_string(), "outcome" => end.label())
            .increment(1);
        self.gauge(route);
    }

    /// A new job of `route` was refused (`full` or `store`).
    pub fn refuse(&self, route: &str, reason: &'static str) {
        self.refused.fetch_add(1, Relaxed);
        metrics::counter!("switchyard_jobs_refused_total", "route" => route.to_string(), "reason" => reason)
            .increment(1);
    }

    /// A client came back for a job of `route`.
    pub fn resume(&self, route: &str) {
        self.resumed.fetch_add(1, Relaxed);
        metrics::counter!("switchyard_job_resumes_total", "route" => route.to_string())
            .increment(1);
    }

    /// A client connection follows a job of `route` until the guard drops.
    pub fn relay(self: &Arc<Self>, route: &str) -> RelayGuard {
        self.relays.fetch_add(1, Relaxed);
        let gauge = metrics::gauge!("switchyard_job_relays", "route" => route.to_string());
        gauge.increment(1.0);
        RelayGuard(self.clone(), gauge)
    }

    /// Notes one event's lag from its append to its relay.
    pub fn note_lag(&self, lag: Duration) {
        let sample = lag.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = self.relay_lag_us.load(Relaxed);
        // An average over about the last 16 events; a lost update between
        // threads only drops one sample.
        let new = if old == 0 {
            sample
        } else {
            (old * 15 + sample) / 16
        };
        self.relay_lag_us.store(new.max(1), Relaxed);
    }

    /// The counts, for `/status` and the dashboard.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "in_flight": self.in_flight.load(Relaxed),
            "started": self.started.load(Relaxed),
            "finished": self.finished.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "timed_out": self.timed_out.load(Relaxed),
            "resumed": self.resumed.load(Relaxed),
            "relays": self.relays.load(Relaxed),
            "refused": self.refused.load(Relaxed),
            "relay_lag_ms": self.relay_lag_us.load(Relaxed) as f64 / 1000.0,
        })
    }
}

/// One client connection following a job; counted until dropped.
pub struct RelayGuard(Arc<RouteJobs>, metrics::Gauge);

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.0.relays.fetch_sub(1, Relaxed);
        self.1.decrement(1.0);
    }
}
