//! Routes: which requests a route takes, and the table of all routes built
//! from a config with their pools and router plugins loaded.

use crate::balance::LiveRegistry;
use crate::pool::Pool;
pub mod auth;
mod limits;

pub use auth::{ClientIdentity, ClientKeys};
pub use limits::{Admission, Fallback, Permit, Refusal, RetryBudget};

use crate::config::{
    Config, HealthConfig, PolicyPlugin, RetryConfig, RouteConfig, TimeoutConfig, flatten_table,
};
use crate::plugin::{
    BreakerPolicy, HealthPolicy, PluginError, PluginRuntime, PolicySpec, RouterPlugin, RouterSpec,
    wit,
};
use crate::pool::{OutcomeFeed, PoolHealth};
use http::{HeaderName, HeaderValue, Request};
use std::collections::HashMap;
use std::sync::Arc;

/// A config that passed validation but could not be put into service.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    // The cause is part of the message, not a `source`, so that printing
    // the error with its chain does not repeat it.
    #[error("route `{route}`: {error}")]
    Plugin { route: String, error: PluginError },
    #[error("pool `{pool}`: {message}")]
    Pool { pool: String, message: String },
    #[error("pool `{pool}`: {error}")]
    PoolPlugin { pool: String, error: PluginError },
    #[error("route `{route}`: auth: {error}")]
    Auth {
        route: String,
        error: auth::AuthError,
    },
}

impl BuildError {
    /// The error prefixed with where in `config` it stands: `file:line`
    /// for a route's plugin, the file otherwise.
    pub fn located(&self, config: &Config) -> String {
        match self {
            BuildError::Plugin { route, .. } | BuildError::Auth { route, .. } => {
                format!("{}: {self}", config.plugin_location(route))
            }
            _ => format!("{}: {self}", config.path.display()),
        }
    }
}

/// What a request must carry to take a route.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    path_prefix: Option<String>,
    host: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

// === impl Matcher ===

impl Matcher {
    fn new(route: &RouteConfig) -> Matcher {
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
    ttfb: Vec<metrics::Histogram>,
    /// Whole exchange, headers and body, by backend.
    duration: Vec<metrics::Histogram>,
    /// Requests answered without a backend (no candidate, reject, errors).
    pub local_replies: metrics::Counter,
}

impl RouteMetrics {
    fn new(route: &str, pool: &Pool) -> RouteMetrics {
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
                    metrics::histogram!("switchyard_ttfb_seconds",
                        "route" => route.to_string(), "backend" => b.name.clone())
                })
                .collect(),
            duration: pool
                .backends
                .iter()
                .map(|b| {
                    metrics::histogram!("switchyard_request_duration_seconds",
                        "route" => route.to_string(), "backend" => b.name.clone())
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
    pub fn ttfb(&self, backend: u32, seconds: f64) {
        if let Some(h) = self.ttfb.get(backend as usize) {
            h.record(seconds);
        }
    }

    /// The duration histogram of `backend` of the route's pool.
    pub fn duration(&self, backend: u32) -> Option<metrics::Histogram> {
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
    pub timeouts: TimeoutConfig,
    pub retries: RetryConfig,
    pub budget: RetryBudget,
    pub admission: Option<Admission>,
    pub fallback: Option<Fallback>,
    /// Client keys, when the route requires one.
    pub auth: Option<Arc<ClientKeys>>,
    pub metrics: RouteMetrics,
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
}

// === impl RouteTable ===

impl RouteTable {
    /// Builds the table: pools with their live state from `registry` (so
    /// counts survive reloads), and every route's plugin loaded and
    /// initialised. A route whose plugin file and binding are unchanged from
    /// `previous` keeps its loaded plugin, instances and all; one whose
    /// plugin file was deleted keeps its loaded version.
    pub fn build(
        config: &Config,
        runtime: &PluginRuntime,
        registry: &mut LiveRegistry,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, BuildError> {
        let mut pools = HashMap::new();
        for (name, pool_config) in &config.pools {
            let discovered = registry.discovered(name);
            let mut pool = Pool::new(name, pool_config, registry, &config.base_dir, &discovered)
                .map_err(|message| BuildError::Pool {
                    pool: name.clone(),
                    message,
                })?;
            let before = previous.and_then(|t| t.pools.iter().find(|p| p.name == *name));
            let plugin_err = |error| BuildError::PoolPlugin {
                pool: name.clone(),
                error,
            };
            if let Some(health) = &pool_config.health {
                let plugin = match health.plugin() {
                    Some(p) => {
                        let spec = policy_spec(config, name, &p, &pool);
                        let old = before.and_then(|b| b.health.as_ref()?.plugin.clone());
                        Some(
                            bind_policy(runtime, spec, old, "health-check", HealthPolicy::load)
                                .map_err(plugin_err)?,
                        )
                    }
                    None => None,
                };
                pool.health = Some(PoolHealth {
                    config: HealthConfig::clone(health),
                    plugin,
                });
            }
            for (i, breaker) in pool_config.breakers.iter().enumerate() {
                let spec = policy_spec(config, name, breaker, &pool);
                let old = before.and_then(|b| b.breakers.get(i).cloned());
                pool.breakers.push(
                    bind_policy(runtime, spec, old, "circuit-breaker", BreakerPolicy::load)
                        .map_err(plugin_err)?,
                );
            }
            if !pool.breakers.is_empty() {
                pool.feed = registry.control().map(|tx| OutcomeFeed {
                    tx,
                    pool: name.as_str().into(),
                });
            }
            pools.insert(name.clone(), Arc::new(pool));
        }
        let mut routes = Vec::new();
        for route in &config.routes {
            let r = route.get_ref();
            let Some(pool) = pools.get(r.pool.get_ref()).cloned() else {
                continue; // validation guarantees the pool exists
            };
            let router = match &r.router {
                None => None,
                Some(router) => {
                    let spec = RouterSpec {
                        file: config.plugin_dir().join(router.plugin.get_ref()),
                        route: r.name.clone(),
                        config: flatten_table(&router.config),
                        on_failure: router.on_failure,
                        deadline: router.deadline,
                        memory_mb: router.memory_mb,
                        backends: backend_infos(&pool),
                        body_peek: router.body_peek as usize,
                    };
                    let before = previous
                        .and_then(|t| t.routes.iter().find(|x| x.name == r.name))
                        .and_then(|x| x.router.as_ref());
                    Some(bind_router(runtime, spec, before).map_err(|error| {
                        BuildError::Plugin {
                            route: r.name.clone(),
                            error,
                        }
                    })?)
                }
            };
            let auth = match &r.auth {
                None => None,
                Some(a) => Some(ClientKeys::load(a, &config.base_dir).map_err(|error| {
                    BuildError::Auth {
                        route: r.name.clone(),
                        error,
                    }
                })?),
            };
            routes.push(Route {
                auth,
                name: r.name.clone(),
                matcher: Matcher::new(r),
                metrics: RouteMetrics::new(&r.name, &pool),
                pool,
                router,
                strip_prefix: r
                    .strip_prefix
                    .then(|| r.matches.path_prefix.clone())
                    .flatten()
                    .map(|p| p.trim_end_matches('/').to_string()),
                preserve_host: r.preserve_host,
                timeouts: r.timeouts.clone(),
                retries: r.retries.clone(),
                budget: RetryBudget::new(&r.retries),
                admission: r.limits.as_ref().and_then(|l| Admission::new(&r.name, l)),
                fallback: r.fallback.as_ref().map(|f| {
                    let pool = f
                        .pool
                        .as_ref()
                        .and_then(|p| pools.get(p.get_ref()).cloned());
                    Fallback::new(f, pool)
                }),
            });
        }
        Ok(RouteTable {
            routes,
            pools: pools.into_values().collect(),
            backend_header: config.server.backend_header,
            access_log: config.server.access_log,
            debug_header: config.server.debug_header,
            body_read_timeout: config.server.body_read_timeout,
        })
    }

    /// The first route `req` matches.
    pub fn find<B>(&self, req: &Request<B>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

/// Loads a route's router, reusing `before` (the route's plugin in the
/// table being replaced) when nothing about it changed, or when its file is
/// gone.
fn bind_router(
    runtime: &PluginRuntime,
    spec: RouterSpec,
    before: Option<&Arc<RouterPlugin>>,
) -> Result<Arc<RouterPlugin>, PluginError> {
    let same_file = |p: &&Arc<RouterPlugin>| p.spec.file == spec.file;
    let (component, version) = match runtime.load(&spec.file, "router") {
        Ok(loaded) => loaded,
        Err(PluginError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && before.filter(same_file).is_some() =>
        {
            let kept = before
                .filter(same_file)
                .map(|p| (p.component.clone(), p.version));
            let kept = kept.unwrap_or_else(|| unreachable!("checked by the guard"));
            tracing::warn!(route = %spec.route, file = %spec.file.display(), version = %&kept.0.hash[..12],
                "plugin file was deleted; the route keeps the loaded version until the config stops referencing it");
            kept
        }
        Err(e) => return Err(e),
    };
    if let Some(before) = before
        && Arc::ptr_eq(&before.component, &component)
        && before.spec == spec
    {
        return Ok(before.clone());
    }
    let plugin = RouterPlugin::from_component(runtime, component, version, spec)?;
    tracing::info!(route = %plugin.spec.route, plugin = %plugin.name(),
        version = %&plugin.component.hash[..12], cached = plugin.component.from_cache, "router plugin loaded");
    Ok(plugin)
}

fn policy_spec(config: &Config, pool: &str, plugin: &PolicyPlugin, built: &Pool) -> PolicySpec {
    PolicySpec {
        file: config.plugin_dir().join(&plugin.plugin),
        pool: pool.to_string(),
        config: flatten_table(&plugin.config),
        deadline: plugin.deadline,
        memory_mb: plugin.memory_mb,
        backends: backend_infos(built),
    }
}

/// Loads a pool's health or breaker plugin, reusing `before` (and so its
/// running instance and counts) when neither the file nor the binding
/// changed, or when the file is gone.
fn bind_policy<P>(
    runtime: &PluginRuntime,
    spec: PolicySpec,
    before: Option<Arc<crate::plugin::Policy<P>>>,
    interface: &str,
    load: impl FnOnce(&PluginRuntime, PolicySpec) -> Result<Arc<crate::plugin::Policy<P>>, PluginError>,
) -> Result<Arc<crate::plugin::Policy<P>>, PluginError> {
    let before = before.filter(|p| p.spec.file == spec.file);
    match runtime.load(&spec.file, interface) {
        Ok((component, _)) => {
            if let Some(before) = before
                && Arc::ptr_eq(&before.component, &component)
                && before.spec == spec
            {
                return Ok(before);
            }
        }
        Err(PluginError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && before.is_some() =>
        {
            if let Some(before) = before.filter(|b| b.spec == spec) {
                tracing::warn!(pool = %spec.pool, file = %spec.file.display(),
                    "plugin file was deleted; the pool keeps the loaded version until the config stops referencing it");
                return Ok(before);
            }
        }
        Err(e) => return Err(e),
    }
    let policy = load(runtime, spec)?;
    tracing::info!(pool = %policy.spec.pool, plugin = %policy.name(),
        version = %&policy.component.hash[..12], "{interface} plugin loaded");
    Ok(policy)
}

/// A pool's static facts in the plugin interface's shape.
pub fn backend_infos(pool: &Pool) -> Vec<wit::BackendInfo> {
    pool.backends
        .iter()
        .map(|b| wit::BackendInfo {
            id: b.id,
            name: b.name.clone(),
            address: b.address.clone(),
            weight: b.weight,
            labels: b.labels.clone(),
        })
        .collect()
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
