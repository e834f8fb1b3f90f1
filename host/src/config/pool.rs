//! `[pools.NAME]`: a pool's backends, how they are reached, and their
//! passive and active health.

use super::plugin::{PolicyPlugin, default_deadline, default_memory_mb, is_plugin_file};
use super::{
    DiscoverConfig, HeaderSource, KeyPath, Problem, Protocol, TlsOption, duration, one, size,
    split_address,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

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

/// Largest probe body handed to a health plugin.
const MAX_PROBE_BODY: u64 = 16 * 1024 * 1024;

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

fn default_max_fails() -> u32 {
    3
}

fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
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

impl PoolConfig {
    /// Checks pool `name`: backends or discovery, header names, plugin
    /// bindings, probes, and each backend's name and address.
    pub(super) fn validate(&self, name: &str) -> Result<(), Problem> {
        let at = KeyPath::of("pools").key(name);
        if self.backends.is_empty() && self.discover.is_none() {
            return Err(Problem::new(
                at,
                format!("pool `{name}` has no backends (list some, or `discover` them)"),
            ));
        }
        if let Some(d) = &self.discover
            && (d.every.is_zero() || !matches!(split_address(&d.dns), Some((None, _, _))))
        {
            return Err(Problem::new(
                at.key("discover").key("dns"),
                format!(
                    "pool `{name}`: discover.dns {:?} must be host:port and discover.every above zero",
                    d.dns
                ),
            ));
        }
        let bad_header = |h: &String| http::HeaderName::from_bytes(h.as_bytes()).is_err();
        let header_problem = |path: KeyPath, h: &str| {
            Problem::new(
                path,
                format!("pool `{name}`: {h:?} is not a valid header name"),
            )
        };
        if let Some(h) = self.set_headers.keys().find(|h| bad_header(h)) {
            return Err(header_problem(at.key("set_headers").key(h), h));
        }
        if let Some(h) = self.remove_headers.iter().find(|h| bad_header(h)) {
            return Err(header_problem(at.key("remove_headers"), h));
        }
        for (i, b) in self.backends.iter().enumerate() {
            let here = at.clone().key("backends").index(i);
            if let Some(h) = b.set_headers.keys().find(|h| bad_header(h)) {
                return Err(header_problem(here.key("set_headers").key(h), h));
            }
            if let Some(h) = b.remove_headers.iter().find(|h| bad_header(h)) {
                return Err(header_problem(here.key("remove_headers"), h));
            }
        }
        let health_plugin = self.health.as_ref().and_then(HealthConfig::plugin);
        let plugins = health_plugin
            .into_iter()
            .map(|p| (at.clone().key("health").key("plugin"), p))
            .chain(
                self.breakers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (at.clone().key("breaker").index(i).key("plugin"), p.clone())),
            );
        for (path, p) in plugins {
            if !is_plugin_file(&p.plugin) || p.deadline.is_zero() || p.memory_mb == 0 {
                return Err(Problem::new(
                    path,
                    format!(
                        "pool `{name}`: plugin {:?} must be a `.wasm` file name in the plugin directory, with a deadline and memory_mb above zero",
                        p.plugin
                    ),
                ));
            }
        }
        if let Some(h) = &self.health
            && (h.interval.is_zero()
                || h.timeout.is_zero()
                || http::Method::from_bytes(h.method.as_bytes()).is_err()
                || !h.path.starts_with('/')
                || h.path.parse::<http::Uri>().is_err())
        {
            return Err(Problem::new(
                at.key("health"),
                format!(
                    "pool `{name}`: health needs a method, a path starting with `/`, and an interval and timeout above zero"
                ),
            ));
        }
        if let Some(h) = &self.health
            && h.body_limit > MAX_PROBE_BODY
        {
            return Err(Problem::new(
                at.clone().key("health").key("body_limit"),
                format!(
                    "pool `{name}`: health.body_limit is at most 16MiB (a model server's /metrics page is well under 1MiB)"
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let here = at.clone().key("backends").index(i);
            if !seen.insert(&b.name) {
                return Err(Problem::new(
                    here.key("name"),
                    format!("pool `{name}` has two backends named `{}`", b.name),
                ));
            }
            if split_address(&b.address).is_none() {
                return Err(Problem::new(
                    here.key("address"),
                    format!(
                        "backend `{}` of pool `{name}`: address {:?} is not host:port or https://host[:port]",
                        b.name, b.address
                    ),
                ));
            }
        }
        Ok(())
    }
}
