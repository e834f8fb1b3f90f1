//! Backend pools, their live state, and the built-in router.

mod quota;
mod state;

pub use quota::QuotaReport;
pub use state::{
    BackendState, Breaker, Health, InFlightGuard, LoadSnapshot, Outcome, RollingWindow,
};

use crate::config::{BackendConfig, HealthConfig, PoolConfig, TlsOption, scalar_text};
use crate::endpoint::{Endpoint, EndpointSpec, RequestRules};
use crate::plugin::{BreakerPolicy, HealthPolicy};
use crate::refresh::Refresh;
use http::HeaderValue;
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Live state that outlives any one config: each backend's state by
/// `pool/backend`, and endpoints by address and TLS settings, so a reload
/// keeps in-flight counts, averages, quota, resolved addresses, TLS
/// sessions and idle connections of backends that still exist; and the
/// control thread's inbox, which pools with a breaker feed.
#[derive(Default)]
pub struct LiveRegistry {
    states: HashMap<String, Arc<BackendState>>,
    endpoints: HashMap<EndpointSpec, Arc<Endpoint>>,
    next_connection_key: usize,
    /// What each pool's `discover` name last resolved to, sorted.
    discovered: HashMap<String, Vec<SocketAddr>>,
    control: Option<tokio::sync::mpsc::Sender<ControlEvent>>,
}

impl LiveRegistry {
    /// A registry whose pools report outcomes to `control`.
    pub fn with_control(control: tokio::sync::mpsc::Sender<ControlEvent>) -> LiveRegistry {
        LiveRegistry {
            control: Some(control),
            ..LiveRegistry::default()
        }
    }

    /// The control thread's inbox, if one runs.
    pub fn control(&self) -> Option<tokio::sync::mpsc::Sender<ControlEvent>> {
        self.control.clone()
    }

    /// The state of backend `name` of `pool`, created on first use.
    pub fn state(&mut self, pool: &str, name: &str) -> Arc<BackendState> {
        self.states
            .entry(format!("{pool}/{name}"))
            .or_default()
            .clone()
    }

    /// The endpoint of `spec`, made (and its host resolved) on first use.
    /// Its connection key is never reused for another endpoint.
    pub fn endpoint(&mut self, spec: EndpointSpec, base: &Path) -> Result<Arc<Endpoint>, String> {
        if let Some(endpoint) = self.endpoints.get(&spec) {
            return Ok(endpoint.clone());
        }
        let endpoint = Arc::new(
            Endpoint::new(&spec, base, self.next_connection_key).map_err(|e| e.to_string())?,
        );
        self.next_connection_key += 1;
        let resolved: Arc<dyn Refresh> = endpoint.clone();
        crate::refresh::register(&resolved);
        self.endpoints.insert(spec, endpoint.clone());
        Ok(endpoint)
    }

    /// The addresses `pool`'s discovery last found.
    pub fn discovered(&self, pool: &str) -> Vec<SocketAddr> {
        self.discovered.get(pool).cloned().unwrap_or_default()
    }

    /// Records what `pool`'s discovery found; whether it changed.
    pub fn set_discovered(&mut self, pool: &str, mut addrs: Vec<SocketAddr>) -> bool {
        addrs.sort_unstable();
        addrs.dedup();
        if self.discovered.get(pool) == Some(&addrs) {
            return false;
        }
        self.discovered.insert(pool.to_string(), addrs);
        true
    }

    /// Forgets the state of backends no pool in `pools` has.
    pub fn retain(&mut self, pools: &[Arc<Pool>]) {
        self.endpoints.retain(|_, e| {
            pools
                .iter()
                .any(|p| p.backends.iter().any(|b| Arc::ptr_eq(&b.endpoint, e)))
        });
        self.states.retain(|key, _| {
            pools.iter().any(|p| {
                key.strip_prefix(p.name.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|b| p.backends.iter().any(|x| x.name == b))
            })
        });
    }
}

/// One backend of a pool, with the values the data path needs precomputed.
pub struct Backend {
    /// Index in the pool; what plugins call the backend's id.
    pub id: u32,
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub labels: Vec<(String, String)>,
    pub state: Arc<BackendState>,
    /// `x-switchyard-backend` value, built once.
    pub name_header: HeaderValue,
    /// `host` value sent upstream, built once.
    pub host_header: HeaderValue,
    /// Where and how to connect.
    pub endpoint: Arc<Endpoint>,
    /// Headers its requests get (credentials) and lose.
    pub rules: RequestRules,
    /// USD per million prompt and completion tokens, from the labels
    /// `input_price` and `output_price`; for cost accounting.
    pub prices: (f64, f64),
}

/// A named set of backends.
pub struct Pool {
    pub name: String,
    pub backends: Vec<Backend>,
    /// Requests one backend may have in flight; 0 = no cap.
    pub max_in_flight: u32,
    /// Forward clients' own credentials even where the proxy adds its own
    /// or authenticates the client.
    pub pass_client_auth: bool,
    /// Active health checking, if configured.
    pub health: Option<PoolHealth>,
    /// The circuit breakers, in config order; their verdicts combine.
    pub breakers: Vec<Arc<BreakerPolicy>>,
    /// Where outcomes go when the pool has a breaker.
    pub feed: Option<OutcomeFeed>,
}

/// A pool's active health checking: how to probe, and the plugin that
/// judges the probes (none: 2xx is healthy).
pub struct PoolHealth {
    pub config: HealthConfig,
    pub plugin: Option<Arc<HealthPolicy>>,
}

/// How long one exchange took, what the backend asked of us, and the tokens
/// its `usage` reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub latency_us: u32,
    pub ttfb_us: u32,
    pub retry_after_ms: Option<u64>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// Sends a pool's request outcomes to its breaker on the control thread,
/// without waiting: when the control thread falls behind, outcomes are
/// dropped and counted rather than slowing requests down.
#[derive(Clone)]
pub struct OutcomeFeed {
    pub tx: tokio::sync::mpsc::Sender<ControlEvent>,
    pub pool: Arc<str>,
}

/// A message to the control thread.
pub enum ControlEvent {
    /// A request to a backend finished.
    Outcome {
        pool: Arc<str>,
        state: Arc<BackendState>,
        outcome: Outcome,
        timing: Timing,
    },
    /// A new route table is in service: these are its pools.
    Apply(Vec<Arc<Pool>>),
    /// The proxy is shutting down.
    Stop,
}

// === impl Pool ===

impl Pool {
    /// Builds a pool from config and the addresses its `discover` name
    /// resolved to, taking each backend's live state and endpoint from
    /// `registry`; relative file paths resolve against `base`.
    pub fn new(
        name: &str,
        config: &PoolConfig,
        registry: &mut LiveRegistry,
        base: &Path,
        discovered: &[SocketAddr],
    ) -> Result<Pool, String> {
        let found: Vec<BackendConfig> = match &config.discover {
            Some(d) => discovered
                .iter()
                .map(|addr| discovered_backend(config, d, *addr))
                .collect(),
            None => Vec::new(),
        };
        let backends = config
            .backends
            .iter()
            .chain(&found)
            .enumerate()
            .map(|(i, b)| {
                let fail = |e: String| format!("backend `{}`: {e}", b.name);
                let name_header = HeaderValue::from_str(&b.name).map_err(|_| {
                    format!("backend name {:?} is not a valid header value", b.name)
                })?;
                let spec = EndpointSpec::new(config, b, base).map_err(|e| fail(e.to_string()))?;
                let endpoint = registry.endpoint(spec, base).map_err(fail)?;
                let rules = RequestRules::new(config, b, base).map_err(|e| fail(e.to_string()))?;
                let host_header = HeaderValue::from_str(&host_value(&endpoint))
                    .map_err(|_| format!("backend address {:?} is not a valid host", b.address))?;
                Ok(Backend {
                    id: i as u32,
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                    labels: b
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), scalar_text(v)))
                        .collect(),
                    state: {
                        let state = registry.state(name, &b.name);
                        state.set_passive_health(
                            config.max_fails,
                            config.fail_timeout,
                            config.fail_on_5xx,
                        );
                        state
                    },
                    name_header,
                    host_header,
                    endpoint,
                    rules,
                    prices: (price(b, "input_price"), price(b, "output_price")),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Pool {
            name: name.to_string(),
            backends,
            max_in_flight: config.max_in_flight,
            pass_client_auth: config.pass_client_auth,
            health: None,
            breakers: Vec::new(),
            feed: None,
        })
    }

    /// Requests the pool's backends finished over the last 10 s.
    pub fn recent_requests(&self) -> u64 {
        self.backends
            .iter()
            .map(|b| b.state.recent_requests())
            .sum()
    }

    /// Records how a request to backend `id` ended: live state and passive
    /// health here, and the breaker's feed when the pool has one.
    pub fn record(&self, id: u32, outcome: Outcome, timing: Timing) {
        let Some(backend) = self.backends.get(id as usize) else {
            return;
        };
        backend.state.record_outcome(outcome, timing.latency_us);
        if let Some(feed) = &self.feed {
            let event = ControlEvent::Outcome {
                pool: feed.pool.clone(),
                state: backend.state.clone(),
                outcome,
                timing,
            };
            if feed.tx.try_send(event).is_err() {
                metrics::counter!("switchyard_breaker_outcomes_dropped_total").increment(1);
            }
        }
    }
}

/// The `host` header for `endpoint`: the host alone on the scheme's
/// default port, as clients send it.
fn host_value(endpoint: &Endpoint) -> String {
    let default = if endpoint.is_tls() { 443 } else { 80 };
    if endpoint.port == default {
        endpoint.host.clone()
    } else {
        endpoint.authority.clone()
    }
}

/// The backend for an address `discover` found: named by the address, with
/// the discovery's weight and labels, and TLS verified against the name
/// that was resolved.
fn discovered_backend(
    pool: &PoolConfig,
    discover: &crate::config::DiscoverConfig,
    addr: SocketAddr,
) -> BackendConfig {
    let tls = pool
        .tls
        .as_ref()
        .and_then(TlsOption::settings)
        .map(|mut s| {
            if s.server_name.is_none() {
                s.server_name =
                    crate::config::split_address(&discover.dns).map(|(_, h, _)| h.to_string());
            }
            TlsOption::Settings(s)
        });
    BackendConfig {
        name: addr.to_string(),
        address: addr.to_string(),
        weight: discover.weight,
        labels: discover.labels.clone(),
        tls,
        protocol: None,
        set_headers: Default::default(),
        remove_headers: Vec::new(),
    }
}

/// A numeric price label of a backend; 0 when absent or not a number.
fn price(b: &crate::config::BackendConfig, label: &str) -> f64 {
    match b.labels.get(label) {
        Some(toml::Value::Float(f)) => *f,
        Some(toml::Value::Integer(i)) => *i as f64,
        Some(toml::Value::String(s)) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

thread_local! {
    /// Where the built-in router starts scanning, so ties rotate.
    static TURN: Cell<usize> = const { Cell::new(0) };
}

/// Candidates the built-in router returns: more than the default connect
/// attempts, so an unreachable backend or two still leave a choice.
pub const BUILTIN_CANDIDATES: usize = 4;

/// The built-in router: the usable backends with the fewest requests in
/// flight, then the lowest latency, best first; ties rotate. Used when a
/// route has no plugin, and when a plugin fails under `fail-open`. Picks the
/// best few in one pass, without allocating or sorting the pool.
pub fn least_outstanding(pool: &Pool) -> ([u32; BUILTIN_CANDIDATES], u8) {
    let mut best: [((u32, u32), u32); BUILTIN_CANDIDATES] =
        [((u32::MAX, u32::MAX), u32::MAX); BUILTIN_CANDIDATES];
    let mut len = 0usize;
    let n = pool.backends.len();
    if n == 0 {
        return ([0; BUILTIN_CANDIDATES], 0);
    }
    let start = TURN.with(|t| {
        let v = t.get();
        t.set(v.wrapping_add(1));
        v % n
    });
    let now = crate::clock::millis();
    for i in (0..n).map(|i| (start + i) % n) {
        let state = &pool.backends[i].state;
        if !state.is_usable() {
            continue;
        }
        // Insert into the sorted prefix; equal ranks keep scan order.
        let mut item = (state.load_rank(now), i as u32);
        for slot in best.iter_mut().take((len + 1).min(BUILTIN_CANDIDATES)) {
            if item.0 < slot.0 || slot.1 == u32::MAX {
                std::mem::swap(slot, &mut item);
            }
        }
        len = (len + 1).min(BUILTIN_CANDIDATES);
    }
    (best.map(|(_, id)| id), len as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    /// A pool config with default settings and `n` backends `b0`, `b1`, ...
    fn pool_config(n: usize) -> PoolConfig {
        PoolConfig {
            discover: None,
            tls: None,
            protocol: None,
            set_headers: Default::default(),
            remove_headers: Vec::new(),
            pass_client_auth: false,
            max_fails: 3,
            fail_timeout: std::time::Duration::from_secs(10),
            fail_on_5xx: false,
            max_in_flight: 0,
            health: None,
            breakers: Vec::new(),
            backends: (0..n)
                .map(|i| BackendConfig {
                    name: format!("b{i}"),
                    address: format!("127.0.0.1:{}", 9000 + i),
                    weight: 1,
                    labels: Default::default(),
                    tls: None,
                    protocol: None,
                    set_headers: Default::default(),
                    remove_headers: Vec::new(),
                })
                .collect(),
        }
    }

    fn pool(n: usize) -> Pool {
        Pool::new(
            "p",
            &pool_config(n),
            &mut LiveRegistry::default(),
            Path::new("."),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn least_outstanding_prefers_idle_and_skips_unusable() {
        let p = pool(3);
        let _busy = p.backends[0].state.start_request();
        p.backends[2].state.set_health(Health::Unhealthy, 0);
        let (ids, len) = least_outstanding(&p);
        assert_eq!(ids[..usize::from(len)], [1, 0]);
    }

    #[test]
    fn registry_keeps_state_and_keys_across_pools() {
        let mut registry = LiveRegistry::default();
        let config = pool_config(1);
        let first = Pool::new("p", &config, &mut registry, Path::new("."), &[]).unwrap();
        let _busy = first.backends[0].state.start_request();
        let again = Pool::new("p", &config, &mut registry, Path::new("."), &[]).unwrap();
        assert_eq!(again.backends[0].state.in_flight(), 1);
        assert_eq!(
            again.backends[0].endpoint.connection_key,
            first.backends[0].endpoint.connection_key
        );
        registry.retain(&[]);
        let fresh = Pool::new("p", &config, &mut registry, Path::new("."), &[]).unwrap();
        assert_eq!(fresh.backends[0].state.in_flight(), 0);
    }

    #[test]
    fn ties_rotate() {
        let p = pool(2);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..4 {
            firsts.insert(least_outstanding(&p).0[0]);
        }
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn large_pools_give_the_best_four_in_order() {
        let p = pool(7);
        let mut guards = Vec::new();
        for (i, b) in p.backends.iter().enumerate() {
            for _ in 0..(7 - i) {
                guards.push(b.state.start_request());
            }
        }
        let (ids, len) = least_outstanding(&p);
        assert_eq!((ids, len), ([6, 5, 4, 3], 4));
    }
}
