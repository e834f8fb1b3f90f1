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

mod counts;
mod local;
mod redis_reply;
mod redis_store;

pub use counts::{JobEnd, RelayGuard, RouteJobs};

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
