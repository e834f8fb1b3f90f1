//! The host side of `switchyard:policy/host`: what a plugin may call.

use super::generated::{Host, SharedHost, shared_wit, wit};
use crate::shared::{SharedError, SharedStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::StoreLimits;

/// Log lines one instance may write per second; the rest are counted, not
/// written, so a chatty plugin cannot flood the log.
const LOG_LINES_PER_SECOND: u32 = 50;

/// Per-instance state the host keeps for a plugin.
pub struct HostState {
    pub(crate) limits: StoreLimits,
    plugin: Arc<str>,
    route: Arc<str>,
    rng: u64,
    counters: HashMap<String, metrics::Counter>,
    gauges: HashMap<String, metrics::Gauge>,
    log_second: u64,
    log_lines: u32,
    /// The current request's declared attributes, set for one `route` call.
    pub(crate) attributes: Vec<Option<String>>,
    shared: Arc<SharedStore>,
    /// Time spent waiting on the shared store since the deadline was last
    /// checked; it extends the deadline rather than counting against it.
    pub(crate) waited: Duration,
}

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        route: Arc<str>,
        limits: StoreLimits,
        shared: Arc<SharedStore>,
    ) -> Self {
        HostState {
            limits,
            plugin,
            route,
            rng: seed(),
            counters: HashMap::new(),
            gauges: HashMap::new(),
            log_second: 0,
            log_lines: 0,
            attributes: Vec::new(),
            shared,
            waited: Duration::ZERO,
        }
    }

    /// Runs a shared-store call, crediting its wait to the deadline and
    /// logging failures at debug level (the store logs outages itself).
    fn shared_call<T>(
        &mut self,
        op: &str,
        call: impl FnOnce(&SharedStore) -> Result<T, SharedError>,
    ) -> Result<T, shared_wit::SharedError> {
        let started = Instant::now();
        let result = call(&self.shared);
        self.waited += started.elapsed();
        result.map_err(|e| {
            tracing::debug!(plugin = %self.plugin, route = %self.route, "shared {op}: {e}");
            match e {
                SharedError::Unavailable(m) => shared_wit::SharedError::Unavailable(m),
                SharedError::Invalid(m) => shared_wit::SharedError::Invalid(m),
            }
        })
    }
}

impl SharedHost for HostState {
    fn counter_add(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: u32,
    ) -> Result<i64, shared_wit::SharedError> {
        self.shared_call("counter-add", |s| s.counter_add(&key, delta, ttl_ms))
    }

    fn counter_get(&mut self, key: String) -> Result<i64, shared_wit::SharedError> {
        self.shared_call("counter-get", |s| s.counter_get(&key))
    }

    fn get(&mut self, key: String) -> Result<Option<String>, shared_wit::SharedError> {
        self.shared_call("get", |s| s.get(&key))
    }

    fn set(
        &mut self,
        key: String,
        value: String,
        ttl_ms: u32,
    ) -> Result<(), shared_wit::SharedError> {
        self.shared_call("set", |s| s.set(&key, &value, ttl_ms))
    }

    fn wall_clock_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A per-instance seed from the clock and the address of a stack value.
fn seed() -> u64 {
    let local = 0u8;
    let mixed = crate::clock::nanos() ^ (&local as *const u8 as u64).rotate_left(32);
    mixed | 1
}

impl wit::Host for HostState {}

impl Host for HostState {
    fn log(&mut self, level: wit::Level, message: String) {
        let second = crate::clock::millis() / 1000;
        if second != self.log_second {
            if self.log_lines > LOG_LINES_PER_SECOND {
                tracing::warn!(plugin = %self.plugin, route = %self.route,
                    "plugin log rate limit: {} lines dropped", self.log_lines - LOG_LINES_PER_SECOND);
            }
            self.log_second = second;
            self.log_lines = 0;
        }
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_SECOND {
            return;
        }
        let (plugin, route) = (&*self.plugin, &*self.route);
        match level {
            wit::Level::Trace => tracing::trace!(plugin, route, "{message}"),
            wit::Level::Debug => tracing::debug!(plugin, route, "{message}"),
            wit::Level::Info => tracing::info!(plugin, route, "{message}"),
            wit::Level::Warn => tracing::warn!(plugin, route, "{message}"),
            wit::Level::Error => tracing::error!(plugin, route, "{message}"),
        }
    }

    fn attribute(&mut self, index: u32) -> Option<String> {
        self.attributes.get(index as usize)?.clone()
    }

    fn now(&mut self) -> u64 {
        crate::clock::nanos()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn counter_add(&mut self, name: String, value: u64) {
        let (plugin, route) = (self.plugin.clone(), self.route.clone());
        self.counters
            .entry(name)
            .or_insert_with_key(|name| {
                metrics::counter!("switchyard_plugin_counter_total",
                    "plugin" => plugin.to_string(), "route" => route.to_string(), "name" => name.clone())
            })
            .increment(value);
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        let (plugin, route) = (self.plugin.clone(), self.route.clone());
        self.gauges
            .entry(name)
            .or_insert_with_key(|name| {
                metrics::gauge!("switchyard_plugin_gauge",
                    "plugin" => plugin.to_string(), "route" => route.to_string(), "name" => name.clone())
            })
            .set(value);
    }
}
