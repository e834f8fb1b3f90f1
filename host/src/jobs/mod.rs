//! The job store: each long job is an append-only log of events (`accepted`,
//! `progress`, `result`, `error`) that the proxy and the job's worker write
//! and any replica reads, so a client can lose its connection, reconnect to
//! another replica and receive what it missed. In process (one replica) or
//! a Redis stream per job (`<prefix>:job:<id>`), which workers append to
//! with `XADD` themselves.
//!
//! Reading never holds a worker thread: Redis calls run on two threads of
//! the store's own, one for commands and one that follows every subscribed
//! job with a single blocking `XREAD`.

mod local;
mod redis_store;

use local::LocalJobs;
use redis_store::RedisJobs;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Event types of the job protocol.
pub mod kind {
    /// Written by the proxy when the job starts; its data names the job.
    pub const ACCEPTED: &str = "accepted";
    /// A step of the job; relayed as it comes.
    pub const PROGRESS: &str = "progress";
    /// The job's answer; ends it.
    pub const RESULT: &str = "result";
    /// The job failed; ends it.
    pub const ERROR: &str = "error";
    /// Proves the worker is alive without telling the client anything.
    pub const HEARTBEAT: &str = "heartbeat";
}

/// Whether `kind` may name an event type: a short word of letters,
/// digits, `-`, `_` and `.`, so it is safe in an event stream's `event:`
/// field. Workers' other types are read as `progress`.
pub fn is_event_type(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Most events one read returns.
pub const MAX_READ: usize = 1000;
/// Longest event data the proxy writes or relays, in bytes.
pub const MAX_DATA: usize = 16 * 1024 * 1024;

/// A job's id: 32 lowercase hex digits, random.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    /// A new random id.
    pub fn new() -> JobId {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: time and a counter still never repeat here.
            static N: AtomicU64 = AtomicU64::new(0);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes[..8].copy_from_slice(&t.to_le_bytes());
            bytes[8..].copy_from_slice(&N.fetch_add(1, Relaxed).to_le_bytes());
        }
        JobId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Parses an id a client sent; `None` unless it has the id's shape.
    pub fn parse(text: &str) -> Option<JobId> {
        (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| JobId(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event's position in its job's log, as Redis stream ids are written:
/// `<milliseconds>-<sequence>`, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// Parses `ms-seq` (or a bare `ms`, as Redis accepts).
    pub fn parse(text: &str) -> Option<EventId> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Some(EventId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    /// One of [`kind`]'s, or a worker's own type (relayed like `progress`).
    pub kind: String,
    pub data: String,
}

impl Event {
    /// Whether this event ends the job.
    pub fn is_terminal(&self) -> bool {
        self.kind == kind::RESULT || self.kind == kind::ERROR
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Event(Event),
    /// The store became unreachable; events resume when it is back.
    Down(String),
    /// The store is reachable again.
    Up,
}

/// Events of one job as they are appended, from a given position on.
/// Dropping it ends the subscription.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Subscription {
    /// The next delivery; `None` once the store has shut down. Cancel-safe.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now.
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the call (full, or malformed data).
    #[error("job store refused the call: {0}")]
    Refused(String),
}

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

/// The store behind every job route of a config. Shared by all threads and
/// kept across reloads while the config names the same store.
pub struct JobStore {
    backend: Backend,
    /// The Redis URL, `None` in process: what [`JobStore::names`] compares.
    url: Option<String>,
    /// Put before every key, as the shared store does.
    prefix: String,
    describe: String,
    routes: Mutex<HashMap<String, Arc<RouteJobs>>>,
}

enum Backend {
    Local(LocalJobs),
    Redis(RedisJobs),
}

impl JobStore {
    /// An in-process store.
    pub fn memory() -> Arc<JobStore> {
        Arc::new(JobStore {
            backend: Backend::Local(LocalJobs::default()),
            url: None,
            prefix: "switchyard".into(),
            describe: "memory".into(),
            routes: Mutex::default(),
        })
    }

    /// A store on the Redis at `url`; connects on first use. `timeout`
    /// bounds each command.
    pub fn redis(
        url: &str,
        prefix: &str,
        describe: String,
        timeout: Duration,
    ) -> Result<Arc<JobStore>, String> {
        let backend = RedisJobs::start(url, describe.clone(), timeout)?;
        Ok(Arc::new(JobStore {
            backend: Backend::Redis(backend),
            url: Some(url.to_string()),
            prefix: prefix.to_string(),
            describe,
            routes: Mutex::default(),
        }))
    }

    /// Whether this is the store at `url` (`None`: in process).
    pub fn names(&self, url: Option<&str>) -> bool {
        self.url.as_deref() == url
    }

    /// The store for logs and `/status`, without credentials.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Whether jobs here can be resumed on another replica.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// The key of job `id`'s log: the Redis stream a worker `XADD`s to.
    pub fn stream_key(&self, id: &JobId) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    /// The counts of route `route`, made on first use.
    pub fn route_jobs(&self, route: &str) -> Arc<RouteJobs> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(route.to_string()).or_default().clone()
    }

    /// Counts of every route that has had jobs, by name.
    pub fn all_route_jobs(&self) -> Vec<(String, Arc<RouteJobs>)> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Starts job `id`'s log with its `accepted` event, naming its route;
    /// the log is kept for `ttl`.
    pub async fn create(
        &self,
        id: &JobId,
        route: &str,
        ttl: Duration,
    ) -> Result<EventId, StoreError> {
        let data = serde_json::json!({ "job": id.as_str(), "route": route }).to_string();
        self.append(id, kind::ACCEPTED, &data, ttl).await
    }

    /// Appends an event to job `id`'s log and keeps the log for `ttl` from now.
    pub async fn append(
        &self,
        id: &JobId,
        kind: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<EventId, StoreError> {
        if data.len() > MAX_DATA {
            return Err(StoreError::Refused(format!(
                "event data of {} bytes (at most {MAX_DATA})",
                data.len()
            )));
        }
        match &self.backend {
            Backend::Local(l) => l.append(id, kind, data, ttl),
            Backend::Redis(r) => r.append(self.stream_key(id), kind, data, ttl).await,
        }
    }

    /// Keeps job `id`'s log for `ttl` from now: after a worker wrote the
    /// job's end itself, so the result lasts its full time to live.
    pub async fn keep(&self, id: &JobId, ttl: Duration) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(l) => {
                l.keep(id, ttl);
                Ok(())
            }
            Backend::Redis(r) => r.keep(self.stream_key(id), ttl).await,
        }
    }

    /// Up to [`MAX_READ`] events of job `id` after `after` (from the start
    /// when `None`); empty when the job is unknown or expired.
    pub async fn read(&self, id: &JobId, after: Option<EventId>) -> Result<Vec<Event>, StoreError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.read(id, after)),
            Backend::Redis(r) => r.read(self.stream_key(id), after).await,
        }
    }

    /// The route that started job `id`, from its `accepted` event; `None`
    /// when the job is unknown or expired.
    pub async fn route_of(&self, id: &JobId) -> Result<Option<String>, StoreError> {
        let first = self.read(id, None).await?;
        Ok(first
            .first()
            .filter(|e| e.kind == kind::ACCEPTED)
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
            .and_then(|v| v.get("route")?.as_str().map(str::to_string)))
    }

    /// Follows job `id`'s log from after `after` (from its start when `None`).
    pub fn subscribe(&self, id: &JobId, after: Option<EventId>) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        match &self.backend {
            Backend::Local(l) => l.subscribe(id, after, tx),
            Backend::Redis(r) => r.subscribe(self.stream_key(id), after, tx),
        }
        Subscription { rx }
    }

    /// Jobs the in-process store holds (0 on Redis, where Redis holds them).
    pub fn held(&self) -> usize {
        match &self.backend {
            Backend::Local(l) => l.len(),
            Backend::Redis(_) => 0,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
