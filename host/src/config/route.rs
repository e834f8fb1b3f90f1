//! `[[routes]]`: which requests a route takes and what it does with them:
//! timeouts, retries, admission, fallback and client keys.

use super::jobs::{JobsConfig, RouteMode};
use super::plugin::{RouterConfig, is_plugin_file};
use super::{KeyPath, Problem, SharedConfig, duration, size, yes};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// A route: which requests it takes, which pool serves them, and the router
/// that picks the backend. In agent terms, one route is one graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    pub pool: Spanned<String>,
    /// Remove the matched `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Send the client's `host` upstream instead of the backend's address.
    #[serde(default)]
    pub preserve_host: bool,
    /// The routing plugin; without one, the built-in least-outstanding router.
    #[serde(default)]
    pub router: Option<RouterConfig>,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub retries: RetryConfig,
    /// In-flight cap and wait queue; none by default.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// What answers when no backend of the pool is usable.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// Client keys the route requires; none by default.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// `proxy` (the default) or `job`: a long job whose events come back
    /// through the job store (see `jobs`).
    #[serde(default)]
    pub mode: RouteMode,
    /// Settings of a job route; defaults apply when left out.
    #[serde(default)]
    pub jobs: Option<JobsConfig>,
    /// Record sampled requests for `switchyard replay`.
    #[serde(default)]
    pub record: Option<super::rollout::RecordConfig>,
}

impl RouteConfig {
    /// A job route's settings, `None` on a proxy route.
    pub fn job_settings(&self) -> Option<JobsConfig> {
        (self.mode == RouteMode::Job).then(|| self.jobs.clone().unwrap_or_default())
    }
}

/// The keys a route accepts: a keys file (watched) and inline keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of `[[keys]]` tables; relative to this file.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    #[serde(default)]
    pub keys: Vec<ClientKeyConfig>,
}

/// One accepted client key, by its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    /// Who holds it: `x-switchyard-client` and the metrics' `client` label.
    pub name: String,
    /// Hex SHA-256 of the key (`switchyard key-digest` prints it).
    pub sha256: String,
    /// Sent upstream as `x-switchyard-client-<label>` for routers to read.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// When a request is tried on the next candidate. Only failures before the
/// first response byte are retried; after it, a failure ends the response
/// with an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Backends tried per request, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Retry on a 429 answer.
    #[serde(default = "yes")]
    pub on_429: bool,
    /// Retry on a 502, 503 or 504 answer, or a connection broken before any
    /// answer.
    #[serde(default = "yes")]
    pub on_5xx: bool,
    /// Retry non-idempotent requests (POST, PATCH) on answers too, not only
    /// on connect errors. LLM calls are POSTs: turn this on where a repeated
    /// call is acceptable.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Request bodies up to this size are buffered so they can be sent
    /// again; larger or unbounded bodies stream and are not retried.
    #[serde(default = "default_buffer", deserialize_with = "size::deserialize")]
    pub buffer_body: u64,
    /// Retries allowed on top of requests, as a share of requests over the
    /// last 10 s, so retries cannot multiply load during an outage.
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// Retries per second always allowed, however few the requests.
    #[serde(default = "default_budget_floor")]
    pub budget_min_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
            on_429: true,
            on_5xx: true,
            non_idempotent: false,
            buffer_body: default_buffer(),
            budget_ratio: default_budget_ratio(),
            budget_min_per_second: default_budget_floor(),
        }
    }
}

/// Admission control for a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests the route serves at once (all threads); 0 = no cap.
    pub max_in_flight: u32,
    /// Requests that may wait for a slot; beyond it they are refused at once.
    #[serde(default)]
    pub queue: u32,
    /// Longest a request waits in the queue.
    #[serde(default = "default_queue_timeout", with = "duration")]
    pub queue_timeout: Duration,
    /// Status of a refusal: 503 or 429.
    #[serde(default = "default_overload_status")]
    pub status: u16,
    /// `retry-after` sent with a refusal.
    #[serde(default = "default_retry_after", with = "duration")]
    pub retry_after: Duration,
}

/// A route's last resort: another pool (a basic agent), then a fixed reply
/// (a maintenance message). With neither, the answer is a plain 503.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Pool served by the built-in router when the route's pool has no
    /// usable backend or every attempt failed to connect.
    #[serde(default)]
    pub pool: Option<Spanned<String>>,
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// `retry-after` of the reply; zero sends none.
    #[serde(default, with = "duration")]
    pub retry_after: Duration,
}

/// What a request must carry to take a route; all given parts must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub path_prefix: Option<String>,
    /// Host without port, case-insensitive.
    pub host: Option<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Per-route timeouts. Zero disables one. Defaults allow 10-minute agent runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    #[serde(default = "default_connect", with = "duration")]
    pub connect: Duration,
    /// From sending the request to the response headers.
    #[serde(default = "default_long", with = "duration")]
    pub first_byte: Duration,
    /// Longest gap between two response body chunks.
    #[serde(default = "default_long", with = "duration")]
    pub idle: Duration,
    /// Whole exchange, headers and body.
    #[serde(default, with = "duration")]
    pub total: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: default_connect(),
            first_byte: default_long(),
            idle: default_long(),
            total: Duration::ZERO,
        }
    }
}

fn default_attempts() -> u32 {
    3
}

fn default_buffer() -> u64 {
    64 * 1024
}

fn default_budget_ratio() -> f64 {
    0.2
}

fn default_budget_floor() -> u32 {
    10
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_overload_status() -> u16 {
    503
}

fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}

fn default_fallback_status() -> u16 {
    503
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".into()
}

fn default_connect() -> Duration {
    Duration::from_secs(5)
}

fn default_long() -> Duration {
    Duration::from_secs(600)
}

/// Checks every route: unique names, pools that exist, matches that make
/// sense, and each part's values.
pub(super) fn validate_all(
    routes: &[Spanned<RouteConfig>],
    pool_exists: impl Fn(&str) -> bool,
    shared: &SharedConfig,
) -> Result<(), Problem> {
    let mut names = std::collections::HashSet::new();
    // One job store serves all job routes, so that `/jobs/<id>` finds any job.
    let mut job_store: Option<(&str, String)> = None;
    for (i, route) in routes.iter().enumerate() {
        let at = KeyPath::of("routes").index(i);
        let r = route.get_ref();
        if !names.insert(&r.name) {
            return Err(Problem::new(
                at.key("name"),
                format!("two routes are named `{}`", r.name),
            ));
        }
        if !pool_exists(r.pool.get_ref()) {
            return Err(Problem::new(
                at.key("pool"),
                format!(
                    "route `{}` names pool `{}`, which is not defined",
                    r.name,
                    r.pool.get_ref()
                ),
            ));
        }
        r.validate(&at, &pool_exists)?;
        if r.jobs.is_some() && r.mode != RouteMode::Job {
            return Err(Problem::new(
                at.clone().key("jobs"),
                format!("route `{}`: jobs needs mode = \"job\"", r.name),
            ));
        }
        if let Some(jobs) = r.job_settings() {
            jobs.validate(&at.clone().key("jobs"), &r.name, shared)?;
            let store = jobs.redis_url(shared).unwrap_or("memory").to_string();
            match &job_store {
                Some((first, other)) if *other != store => {
                    return Err(Problem::new(
                        at.key("jobs").key("store"),
                        format!(
                            "route `{}`: every job route must use one job store, and route `{first}` uses another",
                            r.name
                        ),
                    ));
                }
                Some(_) => {}
                None => job_store = Some((&r.name, store)),
            }
        }
    }
    Ok(())
}

impl RouteConfig {
    fn validate(&self, at: &KeyPath, pool_exists: &impl Fn(&str) -> bool) -> Result<(), Problem> {
        let name = &self.name;
        let problem = |key: &str, message: String| {
            let mut path = at.clone();
            for k in key.split('.').filter(|k| !k.is_empty()) {
                path = path.key(k);
            }
            Err(Problem::new(path, message))
        };
        if self.strip_prefix && self.matches.path_prefix.is_none() {
            return problem(
                "strip_prefix",
                format!("route `{name}`: strip_prefix needs match.path_prefix"),
            );
        }
        if let Some(p) = &self.matches.path_prefix
            && !p.starts_with('/')
        {
            return problem(
                "match.path_prefix",
                format!("route `{name}`: path_prefix must start with `/`"),
            );
        }
        for (h, v) in &self.matches.headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                return problem(
                    &format!("match.headers.{h}"),
                    format!("route `{name}`: invalid header match `{h}`"),
                );
            }
        }
        if let Some(router) = &self.router {
            let plugin = router.plugin.get_ref();
            if !is_plugin_file(plugin) {
                return problem(
                    "router.plugin",
                    format!(
                        "route `{name}`: plugin {plugin:?} must be a `.wasm` file name in the plugin directory"
                    ),
                );
            }
            if router.deadline.is_zero() || router.memory_mb == 0 {
                return problem(
                    "router",
                    format!("route `{name}`: router deadline and memory_mb must be above zero"),
                );
            }
        }
        let (shadow, canary) = match &self.router {
            Some(r) => (r.shadow.as_ref(), r.canary.as_ref()),
            None => (None, None),
        };
        if let Err((path, message)) = super::rollout::check(shadow, canary, self.record.as_ref()) {
            return problem(path, format!("route `{name}`: {path}: {message}"));
        }
        if self.mode == RouteMode::Job {
            let what = [
                ("router.canary", canary.is_some()),
                ("record", self.record.is_some()),
            ];
            if let Some((path, _)) = what.iter().find(|(_, set)| *set) {
                return problem(
                    path,
                    format!(
                        "route `{name}`: {path} is not supported on a job route yet (a job's outcome arrives through the job store); a shadow is"
                    ),
                );
            }
        }
        if let Some(auth) = &self.auth
            && auth.keys_file.is_none()
            && auth.keys.is_empty()
        {
            return problem(
                "auth",
                format!("route `{name}`: auth needs keys_file or keys"),
            );
        }
        if self.retries.attempts == 0 {
            return problem(
                "retries.attempts",
                format!("route `{name}`: retries.attempts must be at least 1"),
            );
        }
        if !(0.0..=10.0).contains(&self.retries.budget_ratio) {
            return problem(
                "retries.budget_ratio",
                format!("route `{name}`: retries.budget_ratio must be 0..=10"),
            );
        }
        if let Some(limits) = &self.limits
            && !matches!(limits.status, 429 | 503)
        {
            return problem(
                "limits.status",
                format!("route `{name}`: limits.status must be 429 or 503"),
            );
        }
        if let Some(fallback) = &self.fallback {
            if let Some(pool) = &fallback.pool
                && !pool_exists(pool.get_ref())
            {
                return problem(
                    "fallback.pool",
                    format!(
                        "route `{name}`: fallback pool `{}` is not defined",
                        pool.get_ref()
                    ),
                );
            }
            if !(200..=599).contains(&fallback.status)
                || http::HeaderValue::from_str(&fallback.content_type).is_err()
            {
                return problem(
                    "fallback",
                    format!(
                        "route `{name}`: fallback needs a status in 200..=599 and a valid content_type"
                    ),
                );
            }
        }
        Ok(())
    }
}
