//! Routes: which requests a route takes, what it does with them (its pool,
//! router, timeouts, retries, admission, fallback, client keys), and the
//! table of all routes a request is matched against. The table is built
//! from a config by `build`.

use crate::pool::Pool;
pub mod auth;
mod deadlines;
mod limits;

pub use auth::{ClientIdentity, ClientKeys};
pub use deadlines::{Deadlines, bounded};
pub use limits::{Admission, Fallback, Permit, Refusal, RetryBudget};

use crate::config::{JobsConfig, RetryConfig, RouteConfig};
use crate::histogram::Histogram;
use crate::jobs::{JobStore, RouteJobs};
use crate::plugin::RouterPlugin;
use crate::rollout::{Canary, Recorder, Shadow, Watch};
use http::{HeaderName, HeaderValue, Request};
use std::sync::Arc;

/// What a request must carry to take a route.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    path_prefix: Option<String>,
    host: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

// === impl Matcher ===

impl Matcher {
    pub fn new(route: &RouteConfig) -> Matcher {
        Matcher {
            path_prefix: route
                .matches
                .path_prefix
                .as_ref()
                .map(|p| p.trim_end_matches('/').to_string()),
            host: route.matches.host.as_ref().map(|h| h.to_ascii_lowercase()),
            headers: route
                .matches
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }

    /// Whether `req` satisfies every part of the match.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        if let Some(prefix) = &self.path_prefix
            && !path_has_prefix(req.uri().path(), prefix)
        {
            return false;
        }
        if let Some(host) = &self.host
            && !request_host(req).is_some_and(|h| h.eq_ignore_ascii_case(host))
        {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| req.headers().get(name) == Some(value))
    }
}

/// `prefix` matches whole path segments: `/a/b` takes `/a/b` and `/a/b/c`,
/// not `/a/bc`. An empty prefix (from `/`) takes every path.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The request's host without port, from the URI (h2, absolute form) or the
/// `host` header.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(h) = req.uri().host() {
        return Some(h);
    }
    let raw = req.headers().get(http::header::HOST)?.to_str().ok()?;
    Some(match raw.find(']') {
        Some(end) if raw.starts_with('[') => &raw[..=end],
        _ => raw.split(':').next().unwrap_or(raw),
    })
}

/// Pre-registered request counters of one route, by backend and status class,
/// so the data path never builds label sets.
pub struct RouteMetrics {
    route: String,
    /// `[backend][class]`, class 0 = 1xx ... 4 = 5xx.
    by_backend: Vec<[metrics::Counter; 5]>,
    /// Time to the response headers, by backend.
    ttfb: Vec<Histogram>,
    /// Whole exchange, headers and body, by backend.
    duration: Vec<Histogram>,
    /// Requests answered without a backend (no candidate, reject, errors).
    pub local_replies: metrics::Counter,
}

impl RouteMetrics {
    pub fn new(route: &str, pool: &Pool) -> RouteMetrics {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        RouteMetrics {
            by_backend: pool
                .backends
                .iter()
                .map(|b| {
                    classes.map(|class| {
                        metrics::counter!("switchyard_requests_total",
                            "route" => route.to_string(), "backend" => b.name.clone(), "class" => class)
                    })
                })
                .collect(),
            ttfb: pool
                .backends
                .iter()
                .map(|b| {
                    Histogram::new(
                        "switchyard_ttfb_seconds",
                        &[("route", route), ("backend", &b.name)],
                    )
                })
                .collect(),
            duration: pool
                .backends
                .iter()
                .map(|b| {
                    Histogram::new(
                        "switchyard_request_duration_seconds",
                        &[("route", route), ("backend", &b.name)],
                    )
                })
                .collect(),
            local_replies: metrics::counter!("switchyard_local_replies_total", "route" => route.to_string()),
            route: route.to_string(),
        }
    }

    /// Counts one response from `backend` of `pool` with `status`. The
    /// route's own pool has its counters ready; a fallback pool's are
    /// looked up.
    pub fn count(&self, pool: &Pool, own: bool, backend: u32, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if own {
            if let Some(row) = self.by_backend.get(backend as usize) {
                row[class].increment(1);
            }
        } else if let Some(b) = pool.backends.get(backend as usize) {
            const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
            metrics::counter!("switchyard_requests_total",
                "route" => self.route.clone(), "backend" => b.name.clone(), "class" => CLASSES[class])
            .increment(1);
        }
    }

    /// Records the time to first byte of a response from the route's pool.
    pub fn ttfb(&self, backend: u32, us: u32) {
        if let Some(h) = self.ttfb.get(backend as usize) {
            h.record_us(u64::from(us));
        }
    }

    /// The duration histogram of `backend` of the route's pool.
    pub fn duration(&self, backend: u32) -> Option<Histogram> {
        self.duration.get(backend as usize).cloned()
    }
}

/// One route, ready to serve.
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    pub pool: Arc<Pool>,
    /// `None`: the built-in least-outstanding router decides.
    pub router: Option<Arc<RouterPlugin>>,
    /// Prefix removed before forwarding, if `strip_prefix` is set.
    pub strip_prefix: Option<String>,
    pub preserve_host: bool,
    /// The route's timeouts as the data path applies them.
    pub deadlines: Deadlines,
    pub retries: RetryConfig,
    pub budget: RetryBudget,
    pub admission: Option<Admission>,
    pub fallback: Option<Fallback>,
    /// Client keys, when the route requires one.
    pub auth: Option<Arc<ClientKeys>>,
    pub metrics: RouteMetrics,
    /// Set on a job route (`mode = "job"`).
    pub jobs: Option<Arc<JobRoute>>,
    /// A router deciding beside the live one, never acting.
    pub shadow: Option<Arc<Shadow>>,
    /// Rolling `router` out over a previous version.
    pub canary: Option<Arc<Canary>>,
    /// Writes sampled requests to a trace.
    pub record: Option<Arc<Recorder>>,
    /// How much of a JSON body is read before the decision, when a router,
    /// the shadow or the record reads a body field; set once by
    /// [`Route::with_body_peek`], not worked out per request.
    pub body_peek: Option<usize>,
}

// === impl Route ===

impl Route {
    /// The routers that decide live requests: `router`, and a canary's
    /// previous version.
    pub fn routers(&self) -> impl Iterator<Item = &Arc<RouterPlugin>> {
        self.router
            .iter()
            .chain(self.canary.as_ref().map(|c| &c.previous))
    }

    /// The route with [`Route::body_peek`] set from its routers, shadow and
    /// record.
    pub fn with_body_peek(mut self) -> Route {
        let plugins = self
            .routers()
            .chain(self.shadow.as_ref().map(|s| &s.plugin))
            .filter(|p| p.reads_body())
            .map(|p| p.spec.body_peek);
        let record = self
            .record
            .as_ref()
            .filter(|r| r.reads_body())
            .map(|r| r.body_peek);
        self.body_peek = plugins.chain(record).max();
        self
    }

    /// A watch for this request when a canary picks its version or it is
    /// recorded; `None` (nothing to pay) otherwise.
    pub fn watch<B>(&self, req: &Request<B>, client: std::net::IpAddr) -> Option<Box<Watch>> {
        let arm = self
            .canary
            .as_ref()
            .map(|c| (c.pick(req, client), c.clone()));
        let capture = self
            .record
            .as_ref()
            .filter(|r| r.sampled())
            .map(|r| (r.blank(), r.clone()));
        if arm.is_none() && capture.is_none() {
            return None;
        }
        Some(Box::new(Watch {
            started: std::time::Instant::now(),
            arm,
            capture,
        }))
    }
}

/// What a job route needs: its settings, the store, its counts.
pub struct JobRoute {
    pub settings: JobsConfig,
    pub store: Arc<JobStore>,
    pub counts: Arc<RouteJobs>,
}

/// Everything a request needs: routes in match order, their pools and
/// plugins. Built whole from a config, replaced whole on reload.
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub pools: Vec<Arc<Pool>>,
    /// Tag responses with `x-switchyard-backend`.
    pub backend_header: bool,
    /// Log each request (`server.access_log`).
    pub access_log: bool,
    /// Honour `x-switchyard-debug` (`server.debug_header`).
    pub debug_header: bool,
    /// Longest wait for the next bytes of a request body.
    pub body_read_timeout: std::time::Duration,
    /// The store of the job routes, when there are any; `/jobs/<id>` finds
    /// a job there.
    pub jobs: Option<Arc<JobStore>>,
    /// Counts tokens and cost per run (`server.run_header`); `None` when off.
    pub runs: Option<Arc<crate::shared::runs::RunLedger>>,
}

// === impl RouteTable ===

impl RouteTable {
    /// The first route `req` matches.
    pub fn find<B>(&self, req: &Request<B>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }

    /// The route named `name`.
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_has_prefix("/graphs/research", "/graphs/research"));
        assert!(path_has_prefix(
            "/graphs/research/v1/chat",
            "/graphs/research"
        ));
        assert!(!path_has_prefix("/graphs/researchers", "/graphs/research"));
        assert!(path_has_prefix("/anything", ""));
    }

    #[test]
    fn host_is_read_without_port() {
        let req = Request::builder()
            .uri("/x")
            .header("host", "API.example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("API.example.com"));
        let req = Request::builder()
            .uri("http://[::1]:80/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("[::1]"));
    }
}
