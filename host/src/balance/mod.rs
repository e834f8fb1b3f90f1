//! Live state: each backend's counts, averages, health, breaker state and
//! quota (atomics every worker reads), and the registry that keeps them,
//! with endpoints, across reloads. No policy and no plugin types: pools
//! and their policies are in `pool`.

mod ewma;
pub mod outbox;
mod quota;
mod state;
mod window;

pub use outbox::OutcomeBatch;
pub use quota::QuotaReport;
pub use state::{BackendState, Breaker, Health, InFlightGuard, LoadSnapshot, Outcome};
pub use window::RollingWindow;

use crate::endpoint::{Endpoint, EndpointSpec};
use crate::refresh::Refresh;
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
    control: Option<tokio::sync::mpsc::Sender<OutcomeBatch>>,
}

impl LiveRegistry {
    /// A registry whose pools report outcomes to `control`.
    pub fn with_control(control: tokio::sync::mpsc::Sender<OutcomeBatch>) -> LiveRegistry {
        LiveRegistry {
            control: Some(control),
            ..LiveRegistry::default()
        }
    }

    /// The control thread's inbox, if one runs.
    pub fn control(&self) -> Option<tokio::sync::mpsc::Sender<OutcomeBatch>> {
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

    /// Keeps the endpoints `keep_endpoint` accepts and the states of the
    /// `(pool, backend)` pairs `keep_state` accepts; forgets the rest.
    pub fn retain(
        &mut self,
        keep_endpoint: impl Fn(&Arc<Endpoint>) -> bool,
        keep_state: impl Fn(&str, &str) -> bool,
    ) {
        self.endpoints.retain(|_, e| keep_endpoint(e));
        self.states.retain(|key, _| {
            key.split_once('/')
                .is_some_and(|(pool, backend)| keep_state(pool, backend))
        });
    }
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

/// How a request to a backend ended, as the control thread gets it for the
/// pool's breakers.
pub struct OutcomeReport {
    pub pool: Arc<str>,
    pub state: Arc<BackendState>,
    pub outcome: Outcome,
    pub timing: Timing,
}
