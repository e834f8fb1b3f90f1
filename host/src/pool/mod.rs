//! Pools: a named set of backends built from config, with the policies
//! that judge them (health check, circuit breakers), and the built-in
//! router. A pool reads live state from `balance` and holds its plugins
//! from `plugin`; live state never imports a pool or a plugin.

mod builtin;
mod loads;

pub use builtin::{BUILTIN_CANDIDATES, least_outstanding};
pub use loads::push_load_words;

use crate::balance::{BackendState, LiveRegistry, Outcome, OutcomeBatch, OutcomeReport, Timing};
use crate::config::{BackendConfig, HealthConfig, PoolConfig, TlsOption, scalar_text};
use crate::endpoint::{Endpoint, EndpointSpec, RequestRules};
use crate::plugin::{BreakerPolicy, HealthPolicy};
use http::HeaderValue;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

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

/// Sends a pool's request outcomes to its breaker on the control thread,
/// without waiting: when the control thread falls behind, outcomes are
/// dropped and counted rather than slowing requests down.
#[derive(Clone)]
pub struct OutcomeFeed {
    pub tx: tokio::sync::mpsc::Sender<OutcomeBatch>,
    pub pool: Arc<str>,
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
        self.record_at(id, outcome, timing, crate::clock::millis());
    }

    /// [`Pool::record`] at `now` (clock milliseconds), read already.
    pub fn record_at(&self, id: u32, outcome: Outcome, timing: Timing, now: u64) {
        let Some(backend) = self.backends.get(id as usize) else {
            return;
        };
        backend
            .state
            .record_outcome_at(outcome, timing.latency_us, now);
        if let Some(feed) = &self.feed {
            let event = OutcomeReport {
                pool: feed.pool.clone(),
                state: backend.state.clone(),
                outcome,
                timing,
            };
            crate::balance::outbox::post(&feed.tx, event);
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

/// Forgets the live state and endpoints of backends no pool in `pools` has.
pub fn forget_unused(registry: &mut LiveRegistry, pools: &[Arc<Pool>]) {
    registry.retain(
        |e| {
            pools
                .iter()
                .any(|p| p.backends.iter().any(|b| Arc::ptr_eq(&b.endpoint, e)))
        },
        |pool, backend| {
            pools
                .iter()
                .any(|p| p.name == pool && p.backends.iter().any(|x| x.name == backend))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Health;
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
        forget_unused(&mut registry, &[]);
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
