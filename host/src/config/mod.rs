//! The proxy's config file: TOML, parsed and validated as a whole.
//!
//! Every error names the file and, where it can, the line, so a broken config
//! is fixed at a glance and never half-applied.

mod duration;
mod size;
mod upstream;

pub use duration::parse_duration;
pub use upstream::{
    CLIENT_AUTH_HEADERS, DiscoverConfig, HeaderSource, Protocol, TlsOption, TlsSettings,
    split_address,
};

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A config file that failed to load, with its location.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub plugins: PluginSettings,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// The store behind the plugins' `shared` interface.
    #[serde(default)]
    pub shared: SharedConfig,
    /// Directory relative paths in the file resolve against.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was read from.
    #[serde(skip)]
    pub path: PathBuf,
    /// Line of each route's router `plugin`, so a plugin that fails to
    /// load later is reported at its line.
    #[serde(skip)]
    pub plugin_lines: BTreeMap<String, usize>,
}

/// Where plugins' shared counters and values live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// `memory` (this process only, the default) or a `redis://host:port/db`
    /// URL that every replica names, so they share one budget.
    #[serde(default = "default_store")]
    pub store: String,
    /// Prefix of every key in Redis, so several deployments can share one.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Longest a call waits for Redis (connect, send or answer).
    #[serde(default = "default_shared_timeout", with = "duration")]
    pub timeout: Duration,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            store: default_store(),
            prefix: default_prefix(),
            timeout: default_shared_timeout(),
        }
    }
}

impl SharedConfig {
    /// The Redis URL, or `None` for the in-process store.
    pub fn redis_url(&self) -> Option<&str> {
        (self.store != "memory").then_some(self.store.as_str())
    }

    /// The store for logs and `/status`, without any password in the URL.
    pub fn describe(&self) -> String {
        match self.redis_url() {
            None => "memory".into(),
            Some(url) => match url.rsplit_once('@') {
                Some((_, host)) => format!("redis://…@{host}"),
                None => url.to_string(),
            },
        }
    }
}

fn default_store() -> String {
    "memory".into()
}

fn default_prefix() -> String {
    "switchyard".into()
}

fn default_shared_timeout() -> Duration {
    Duration::from_millis(50)
}

/// The proxy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the proxy listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Worker threads, each with its own listener and runtime; 0 = one per core.
    #[serde(default)]
    pub workers: usize,
    /// Tag every proxied response with `x-switchyard-backend`.
    #[serde(default = "yes")]
    pub backend_header: bool,
    /// Longest a client may take to send request headers (slow-loris guard).
    #[serde(default = "default_header_read", with = "duration")]
    pub header_read_timeout: Duration,
    /// Client connections served at once, all workers; more are closed on
    /// accept. 0: half the open-file limit, leaving the rest for upstream
    /// connections and files.
    #[serde(default)]
    pub max_connections: usize,
    /// Longest wait for the next bytes of a request body (nginx's
    /// `client_body_timeout`): a stalled upload gets 408 and frees its slot.
    #[serde(default = "default_body_read", with = "duration")]
    pub body_read_timeout: Duration,
    /// How long a client connection may stay open with no request in
    /// progress (HTTP/1.1 keep-alive or HTTP/2) before it is closed
    /// gracefully; 0 = never.
    #[serde(default = "default_idle", with = "duration")]
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "default_drain", with = "duration")]
    pub drain_timeout: Duration,
    /// Log one line per request (target `switchyard::access`) when its
    /// response headers go out.
    #[serde(default)]
    pub access_log: bool,
    /// Answer requests carrying `x-switchyard-debug` with the decision's
    /// details in `x-switchyard-route`, `-plugin` and `-candidates`. Off by
    /// default: plugin versions and backend names are not for any client.
    #[serde(default)]
    pub debug_header: bool,
    /// Serve TLS (h2 and HTTP/1.1 by ALPN) instead of plain HTTP.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

/// The listener's certificate; both files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chain, PEM; relative to the config file.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            workers: 0,
            backend_header: true,
            header_read_timeout: default_header_read(),
            body_read_timeout: default_body_read(),
            max_connections: 0,
            idle_timeout: default_idle(),
            drain_timeout: default_drain(),
            access_log: false,
            debug_header: false,
            tls: None,
        }
    }
}

/// The admin listener: `/metrics`, `/status`, `/plugins`, `/dashboard`,
/// `/healthz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    /// Bearer token every admin request but `/healthz` must carry. Required
    /// when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// Environment variable holding the token, so it stays out of the file.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl AdminConfig {
    /// The bearer token, from `token` or `token_env`.
    pub fn bearer_token(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::env::var(self.token_env.as_ref()?).ok())
            .filter(|t| !t.is_empty())
    }
}

/// Where plugins come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Directory holding `.wasm` plugins; relative to the config file.
    #[serde(default = "default_plugin_dir")]
    pub dir: PathBuf,
    /// Directory for compiled plugins; default `$XDG_CACHE_HOME/switchyard`
    /// (or `~/.cache/switchyard`). Entries are authenticated, so only this
    /// install's own are loaded.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Reload when the config file or a plugin changes.
    #[serde(default = "yes")]
    pub watch: bool,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            dir: default_plugin_dir(),
            cache_dir: None,
            watch: true,
        }
    }
}

/// A named pool of backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Backends found by resolving a DNS name, in addition to `backends`.
    #[serde(default)]
    pub discover: Option<DiscoverConfig>,
    /// TLS to every backend (a backend's own `tls` overrides it).
    #[serde(default)]
    pub tls: Option<TlsOption>,
    /// HTTP version spoken upstream (a backend's own overrides it).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Headers set on every request to the pool, such as a provider key:
    /// `{ authorization = { env = "OPENAI_API_KEY", prefix = "Bearer " } }`.
    #[serde(default)]
    pub set_headers: BTreeMap<String, HeaderSource>,
    /// Headers removed from every request to the pool.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// Forward the client's `authorization`, `x-api-key` and `api-key` even
    /// when the proxy injects a credential or authenticates the client.
    #[serde(default)]
    pub pass_client_auth: bool,
    /// Connect errors, timeouts or resets in a row that take a backend out
    /// of service (passive health); 0 disables.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long such a backend stays out before traffic tries it again.
    #[serde(default = "default_fail_timeout", with = "duration")]
    pub fail_timeout: Duration,
    /// Count 502, 503 and 504 answers toward `max_fails` too (nginx's
    /// `proxy_next_upstream http_50x`). Off by default: a breaker judges
    /// error rates better than a streak does.
    #[serde(default)]
    pub fail_on_5xx: bool,
    /// Requests one backend may have in flight (all routes, all threads);
    /// a full backend is skipped like an unusable one. 0 = no cap.
    #[serde(default)]
    pub max_in_flight: u32,
    /// Active health probes, judged by a health plugin or the built-in
    /// check (2xx = healthy).
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// The pool's circuit breakers, each fed every request outcome: one
    /// table, or a list (`breaker = [{...}, {...}]`) whose verdicts combine,
    /// the most restrictive winning.
    #[serde(default, rename = "breaker", deserialize_with = "one_or_many")]
    pub breakers: Vec<PolicyPlugin>,
}

/// One policy plugin table, or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PolicyPlugin>, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::Array(items) => items
            .into_iter()
            .map(|i| PolicyPlugin::deserialize(i).map_err(D::Error::custom))
            .collect(),
        one => PolicyPlugin::deserialize(one)
            .map(|p| vec![p])
            .map_err(D::Error::custom),
    }
}

/// Active health checking of a pool's backends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_probe_method")]
    pub method: String,
    #[serde(default = "default_probe_path")]
    pub path: String,
    #[serde(default = "default_probe_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", with = "duration")]
    pub timeout: Duration,
    /// Bytes of the probe's response body handed to the plugin; 0 = none.
    #[serde(default, deserialize_with = "size::deserialize")]
    pub body_limit: u64,
    /// The health plugin's file name; without one, 2xx is healthy and
    /// anything else unhealthy.
    #[serde(default)]
    pub plugin: Option<String>,
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
}

impl HealthConfig {
    /// The health plugin binding, if the pool names one.
    pub fn plugin(&self) -> Option<PolicyPlugin> {
        Some(PolicyPlugin {
            plugin: self.plugin.clone()?,
            config: self.config.clone(),
            deadline: self.deadline,
            memory_mb: self.memory_mb,
        })
    }
}

/// A pool-level policy plugin (health check or circuit breaker).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPlugin {
    /// File name in the plugin directory.
    pub plugin: String,
    /// Table passed to the plugin's `init`, flattened to key/value strings.
    #[serde(default)]
    pub config: toml::Table,
    /// Longest one plugin call may run.
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    /// Memory limit of the plugin instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
}

/// One backend of a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    /// `host:port` (plain unless `tls`), or `https://host[:port]`.
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
    /// Free-form labels (`tier`, `region`, `cost`) that plugins read.
    #[serde(default)]
    pub labels: BTreeMap<String, toml::Value>,
    /// TLS to this backend, overriding the pool's.
    #[serde(default)]
    pub tls: Option<TlsOption>,
    /// HTTP version spoken to this backend, overriding the pool's.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Headers set on requests to this backend, after the pool's.
    #[serde(default)]
    pub set_headers: BTreeMap<String, HeaderSource>,
    /// Headers removed from requests to this backend.
    #[serde(default)]
    pub remove_headers: Vec<String>,
}

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

/// A route's router plugin binding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// File name in the plugin directory.
    pub plugin: Spanned<String>,
    /// Table passed to the plugin's `init`, flattened to key/value strings.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// Longest one plugin call may run (wall clock) before it is stopped.
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    /// Memory limit of one plugin instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// How much of a JSON request body is read to find the `json-body`
    /// attributes the router asks for; the body is sent on unchanged. A
    /// field is only reported when the whole object fits (a later
    /// duplicate key would override it), so this must exceed the largest
    /// body routed on: agent prompts of hundreds of KiB are common.
    #[serde(default = "default_body_peek", deserialize_with = "size::deserialize")]
    pub body_peek: u64,
}

fn default_body_peek() -> u64 {
    1024 * 1024
}

/// What happens when a plugin traps, runs past its deadline, or answers
/// nonsense.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The built-in least-outstanding router decides.
    #[default]
    FailOpen,
    /// The request is answered 503.
    FailClosed,
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

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
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
fn default_probe_method() -> String {
    "GET".into()
}
fn default_probe_path() -> String {
    "/health".into()
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_plugin_dir() -> PathBuf {
    "plugins".into()
}
fn default_header_read() -> Duration {
    Duration::from_secs(30)
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}

fn default_body_read() -> Duration {
    Duration::from_secs(60)
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
/// Wall-clock, so it must leave room for the worker thread being preempted
/// mid-call on a busy machine: at 1 ms, CPU contention alone tripped it.
fn default_deadline() -> Duration {
    Duration::from_millis(10)
}
fn default_memory_mb() -> u32 {
    16
}
fn default_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_long() -> Duration {
    Duration::from_secs(600)
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.into(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ".".into());
        Config::parse(&text, path, base_dir)
    }

    /// Parses and validates config `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let err = |line: Option<usize>, message: String| ConfigError {
            file: file.into(),
            line,
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            err(line, e.message().to_string())
        })?;
        if let Some(tls) = &mut config.server.tls {
            tls.cert = base_dir.join(&tls.cert);
            tls.key = base_dir.join(&tls.key);
        }
        config.base_dir = base_dir;
        config.path = file.to_path_buf();
        config.plugin_lines = config
            .routes
            .iter()
            .filter_map(|r| {
                let r = r.get_ref();
                let plugin = r.router.as_ref()?;
                Some((r.name.clone(), line_of(text, plugin.plugin.span().start)))
            })
            .collect();
        config
            .validate(text)
            .map_err(|(offset, message)| err(offset.map(|o| line_of(text, o)), message))?;
        Ok(config)
    }

    /// Semantic checks the TOML grammar cannot express; errors carry a byte
    /// offset into `text` where one is known.
    fn validate(&self, text: &str) -> Result<(), (Option<usize>, String)> {
        self.server
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                let at = text.find(&self.server.listen);
                (at, format!("server.listen {:?}: {e}", self.server.listen))
            })?;
        if self.server.workers > 1024 {
            return Err((
                text.find("workers"),
                format!(
                    "server.workers = {} is above 1024 (0: one per core)",
                    self.server.workers
                ),
            ));
        }
        if let Some(admin) = &self.admin {
            let addr = admin.listen.parse::<std::net::SocketAddr>().map_err(|e| {
                let at = text.find(&admin.listen);
                (at, format!("admin.listen {:?}: {e}", admin.listen))
            })?;
            if !addr.ip().is_loopback() && admin.bearer_token().is_none() {
                let at = text.find(&admin.listen);
                return Err((
                    at,
                    format!(
                        "admin.listen {:?} is not a loopback address: set admin.token (or admin.token_env) so metrics and state are not open to the network",
                        admin.listen
                    ),
                ));
            }
        }
        if self.shared.redis_url().is_some()
            && (!self.shared.store.starts_with("redis://")
                || redis::Client::open(self.shared.store.as_str()).is_err())
        {
            return Err((
                text.find(&self.shared.store),
                format!(
                    "shared.store {:?}: expected \"memory\" or a redis:// URL such as redis://127.0.0.1:6379/0",
                    self.shared.store
                ),
            ));
        }
        if self.shared.timeout.is_zero() {
            return Err((
                text.find("[shared]"),
                "shared.timeout must be above zero".into(),
            ));
        }
        for (name, pool) in &self.pools {
            let at = text.find(&format!("pools.{name}"));
            if pool.backends.is_empty() && pool.discover.is_none() {
                return Err((
                    at,
                    format!("pool `{name}` has no backends (list some, or `discover` them)"),
                ));
            }
            if let Some(d) = &pool.discover
                && (d.every.is_zero() || !matches!(split_address(&d.dns), Some((None, _, _))))
            {
                let at = find_quoted(text, &d.dns).or(at);
                return Err((
                    at,
                    format!(
                        "pool `{name}`: discover.dns {:?} must be host:port and discover.every above zero",
                        d.dns
                    ),
                ));
            }
            let headers = pool.set_headers.keys().chain(&pool.remove_headers).chain(
                pool.backends
                    .iter()
                    .flat_map(|b| b.set_headers.keys().chain(&b.remove_headers)),
            );
            for h in headers {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    let at = find_quoted(text, h).or(at);
                    return Err((
                        at,
                        format!("pool `{name}`: {h:?} is not a valid header name"),
                    ));
                }
            }
            let plugins = pool
                .health
                .as_ref()
                .and_then(HealthConfig::plugin)
                .into_iter()
                .chain(pool.breakers.iter().cloned());
            for p in plugins {
                if !is_plugin_file(&p.plugin) || p.deadline.is_zero() || p.memory_mb == 0 {
                    let at = find_quoted(text, &p.plugin).or(at);
                    return Err((
                        at,
                        format!(
                            "pool `{name}`: plugin {:?} must be a `.wasm` file name in the plugin directory, with a deadline and memory_mb above zero",
                            p.plugin
                        ),
                    ));
                }
            }
            if let Some(h) = &pool.health
                && (h.interval.is_zero()
                    || h.timeout.is_zero()
                    || http::Method::from_bytes(h.method.as_bytes()).is_err()
                    || !h.path.starts_with('/')
                    || h.path.parse::<http::Uri>().is_err())
            {
                return Err((
                    at,
                    format!(
                        "pool `{name}`: health needs a method, a path starting with `/`, and an interval and timeout above zero"
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for b in &pool.backends {
                if !seen.insert(&b.name) {
                    return Err((
                        at,
                        format!("pool `{name}` has two backends named `{}`", b.name),
                    ));
                }
                if split_address(&b.address).is_none() {
                    let at = find_quoted(text, &b.address).or(at);
                    return Err((
                        at,
                        format!(
                            "backend `{}` of pool `{name}`: address {:?} is not host:port or https://host[:port]",
                            b.name, b.address
                        ),
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        for route in &self.routes {
            let at = Some(route.span().start);
            let r = route.get_ref();
            if !names.insert(&r.name) {
                return Err((at, format!("two routes are named `{}`", r.name)));
            }
            if !self.pools.contains_key(r.pool.get_ref()) {
                return Err((
                    Some(r.pool.span().start),
                    format!(
                        "route `{}` names pool `{}`, which is not defined",
                        r.name,
                        r.pool.get_ref()
                    ),
                ));
            }
            if r.strip_prefix && r.matches.path_prefix.is_none() {
                return Err((
                    at,
                    format!("route `{}`: strip_prefix needs match.path_prefix", r.name),
                ));
            }
            if let Some(p) = &r.matches.path_prefix
                && !p.starts_with('/')
            {
                return Err((
                    at,
                    format!("route `{}`: path_prefix must start with `/`", r.name),
                ));
            }
            for (h, v) in &r.matches.headers {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err()
                    || http::HeaderValue::from_str(v).is_err()
                {
                    return Err((
                        at,
                        format!("route `{}`: invalid header match `{h}`", r.name),
                    ));
                }
            }
            if let Some(router) = &r.router {
                let name = router.plugin.get_ref();
                if !is_plugin_file(name) {
                    return Err((
                        Some(router.plugin.span().start),
                        format!(
                            "route `{}`: plugin {name:?} must be a `.wasm` file name in the plugin directory",
                            r.name
                        ),
                    ));
                }
                if router.deadline.is_zero() || router.memory_mb == 0 {
                    return Err((
                        at,
                        format!(
                            "route `{}`: router deadline and memory_mb must be above zero",
                            r.name
                        ),
                    ));
                }
            }
            if let Some(auth) = &r.auth
                && auth.keys_file.is_none()
                && auth.keys.is_empty()
            {
                return Err((
                    at,
                    format!("route `{}`: auth needs keys_file or keys", r.name),
                ));
            }
            if r.retries.attempts == 0 {
                return Err((
                    at,
                    format!("route `{}`: retries.attempts must be at least 1", r.name),
                ));
            }
            if !(0.0..=10.0).contains(&r.retries.budget_ratio) {
                return Err((
                    at,
                    format!("route `{}`: retries.budget_ratio must be 0..=10", r.name),
                ));
            }
            if let Some(limits) = &r.limits
                && !matches!(limits.status, 429 | 503)
            {
                return Err((
                    at,
                    format!("route `{}`: limits.status must be 429 or 503", r.name),
                ));
            }
            if let Some(fallback) = &r.fallback {
                if let Some(pool) = &fallback.pool
                    && !self.pools.contains_key(pool.get_ref())
                {
                    return Err((
                        Some(pool.span().start),
                        format!(
                            "route `{}`: fallback pool `{}` is not defined",
                            r.name,
                            pool.get_ref()
                        ),
                    ));
                }
                if !(200..=599).contains(&fallback.status)
                    || http::HeaderValue::from_str(&fallback.content_type).is_err()
                {
                    return Err((
                        at,
                        format!(
                            "route `{}`: fallback needs a status in 200..=599 and a valid content_type",
                            r.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `file:line` of route `route`'s router plugin, or the file alone.
    pub fn plugin_location(&self, route: &str) -> String {
        match self.plugin_lines.get(route) {
            Some(line) => format!("{}:{line}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    /// The plugin directory, resolved against the config file's directory.
    pub fn plugin_dir(&self) -> PathBuf {
        self.base_dir.join(&self.plugins.dir)
    }

    /// The compiled-plugin cache directory: `plugins.cache_dir`, else the
    /// user's cache directory (`$XDG_CACHE_HOME` or `~/.cache`), never the
    /// plugin directory, so whoever may drop a `.wasm` there cannot drop
    /// compiled code beside it.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.plugins.cache_dir {
            return self.base_dir.join(dir);
        }
        let user_cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        match user_cache {
            Some(dir) => dir.join("switchyard"),
            None => std::env::temp_dir().join("switchyard-cache"),
        }
    }

    /// Number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Flattens a plugin config table to the key/value strings the plugin
/// interface carries: nested keys joined with `.`, arrays with `,`.
pub fn flatten_table(table: &toml::Table) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), scalar_text(other))),
        }
    }
    let mut out = Vec::new();
    for (k, v) in table {
        walk(k, v, &mut out);
    }
    out
}

/// Text of a TOML value as a plugin sees it: strings bare, arrays comma-joined.
pub fn scalar_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(scalar_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A bare `.wasm` file name: plugins come from the plugin directory only.
fn is_plugin_file(name: &str) -> bool {
    !name.contains('/') && !name.contains('\\') && name.ends_with(".wasm")
}

/// Where `value` stands as a whole quoted string in `text`: `"10.0.0.5"`
/// is not found inside `"10.0.0.5:8080"` on an earlier line.
fn find_quoted(text: &str, value: &str) -> Option<usize> {
    text.find(&format!("\"{value}\"")).map(|at| at + 1)
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
