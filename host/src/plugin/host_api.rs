//! The host's side of what a plugin may call (`host` and `shared`), for
//! every interface version: each version's bindings call these methods.

use super::wit;
use crate::shared::{Access, SharedError, SharedStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::StoreLimits;

/// Log lines one instance may write per second; the rest are counted, not
/// written, so a chatty plugin cannot flood the log.
const LOG_LINES_PER_SECOND: u32 = 50;
/// Bytes of log one plugin instance may write per second, lines included.
const LOG_BYTES_PER_SECOND: usize = 16 * 1024;
/// Longest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 1024;

/// Per-instance state the host keeps for a plugin.
pub struct HostState {
    pub(crate) limits: StoreLimits,
    plugin: Arc<str>,
    route: Arc<str>,
    rng: u64,
    counters: HashMap<String, metrics::Counter>,
    gauges: HashMap<String, metrics::Gauge>,
    log: LogBudget,
    /// The current request's declared attributes, set for one `route` call.
    pub(crate) attributes: Vec<wit::AttributeValue>,
    shared: Arc<SharedStore>,
    /// Routers run on worker threads and never wait on the store.
    access: Access,
    /// Time spent waiting on the shared store since the deadline was last
    /// checked; it extends the deadline rather than counting against it.
    pub(crate) waited: Duration,
    /// How much more waiting the current call may have credited: a call's
    /// wall time stays bounded however many store calls it makes.
    pub(crate) credit_left: Duration,
    /// Whether a refused metric name was logged already.
    metrics_refused: bool,
}

/// Metric names one plugin instance may use.
pub const MAX_PLUGIN_METRICS: usize = 64;
/// Longest plugin metric name.
pub const MAX_METRIC_NAME: usize = 64;

/// The most store waiting one plugin call may have credited to its
/// deadline: a few slow Redis round trips, not an endless loop of them.
pub const MAX_CALL_WAIT: Duration = Duration::from_millis(250);

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        route: Arc<str>,
        limits: StoreLimits,
        shared: Arc<SharedStore>,
        access: Access,
    ) -> Self {
        HostState {
            limits,
            plugin,
            route,
            rng: seed(),
            counters: HashMap::new(),
            gauges: HashMap::new(),
            log: LogBudget::default(),
            attributes: Vec::new(),
            shared,
            access,
            waited: Duration::ZERO,
            credit_left: MAX_CALL_WAIT,
            metrics_refused: false,
        }
    }

    /// Whether a plugin may start a new metric series named `name`: names
    /// are short, and an instance has at most [`MAX_PLUGIN_METRICS`], so a
    /// plugin cannot flood the metrics with series.
    fn may_add_metric(&mut self, name: &str) -> bool {
        let ok = name.len() <= MAX_METRIC_NAME
            && self.counters.len() + self.gauges.len() < MAX_PLUGIN_METRICS;
        if !ok && !self.metrics_refused {
            self.metrics_refused = true;
            tracing::warn!(plugin = %self.plugin, route = %self.route,
                "plugin metric {name:.64?} refused: at most {MAX_PLUGIN_METRICS} names of up to {MAX_METRIC_NAME} bytes per plugin");
        }
        ok
    }

    /// Starts a new call's accounting of store waits.
    pub(crate) fn start_call(&mut self) {
        self.waited = Duration::ZERO;
        self.credit_left = MAX_CALL_WAIT;
    }

    /// The wait to credit to the deadline now, within what is left.
    pub(crate) fn take_credit(&mut self) -> Duration {
        let credit = std::mem::take(&mut self.waited).min(self.credit_left);
        self.credit_left -= credit;
        credit
    }

    /// Runs a shared-store call, crediting its wait to the deadline and
    /// logging failures at debug level (the store logs outages itself).
    pub(super) fn shared_call<T>(
        &mut self,
        op: &str,
        call: impl FnOnce(&SharedStore, Access) -> Result<T, SharedError>,
    ) -> Result<T, SharedError> {
        // Only a call that may wait is timed: its wait is credited.
        let started = (self.access == Access::Wait).then(Instant::now);
        let result = call(&self.shared, self.access);
        if let Some(started) = started {
            self.waited += started.elapsed();
        }
        if let Err(e) = &result {
            tracing::debug!(plugin = %self.plugin, route = %self.route, "shared {op}: {e}");
        }
        result
    }

    /// Writes a plugin's log line within its budget.
    pub(super) fn write_log(&mut self, level: tracing::Level, message: &str) {
        let second = crate::clock::millis() / 1000;
        if let Some((lines, bytes)) = self.log.roll(second) {
            tracing::warn!(plugin = %self.plugin, route = %self.route,
                "plugin log rate limit: {lines} lines ({bytes} bytes) dropped");
        }
        let Some(keep) = self.log.admit(message.len()) else {
            return;
        };
        let message = cut(message, keep);
        let (plugin, route) = (&*self.plugin, &*self.route);
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, route, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, route, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, route, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, route, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin, route, "{message}"),
        }
    }

    /// The `index`-th declared attribute of the current request.
    pub(super) fn attribute_value(&self, index: u32) -> wit::AttributeValue {
        self.attributes
            .get(index as usize)
            .cloned()
            .unwrap_or(wit::AttributeValue::Absent)
    }

    /// The next number of the instance's generator (xorshift64*).
    pub(super) fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Adds to the plugin counter `name`.
    pub(super) fn add_to_counter(&mut self, name: String, value: u64) {
        if !self.counters.contains_key(&name) && !self.may_add_metric(&name) {
            return;
        }
        let (plugin, route) = (self.plugin.clone(), self.route.clone());
        self.counters
            .entry(name)
            .or_insert_with_key(|name| {
                metrics::counter!("switchyard_plugin_counter_total",
                    "plugin" => plugin.to_string(), "route" => route.to_string(), "name" => name.clone())
            })
            .increment(value);
    }

    /// Sets the plugin gauge `name`.
    pub(super) fn set_gauge(&mut self, name: String, value: f64) {
        if !self.gauges.contains_key(&name) && !self.may_add_metric(&name) {
            return;
        }
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

/// A per-instance seed from the clock and the address of a stack value.
fn seed() -> u64 {
    let local = 0u8;
    let mixed = crate::clock::nanos() ^ (&local as *const u8 as u64).rotate_left(32);
    mixed | 1
}

/// What a plugin instance has logged this second, bounded in lines and in
/// bytes, so neither many short lines nor a few huge ones flood the log.
#[derive(Debug, Default)]
struct LogBudget {
    second: u64,
    lines: u32,
    bytes: usize,
    dropped_lines: u32,
    dropped_bytes: usize,
}

impl LogBudget {
    /// Starts a new second; returns what the last one dropped, if anything.
    fn roll(&mut self, second: u64) -> Option<(u32, usize)> {
        if second == self.second {
            return None;
        }
        let dropped = (self.dropped_lines > 0).then_some((self.dropped_lines, self.dropped_bytes));
        *self = LogBudget {
            second,
            ..LogBudget::default()
        };
        dropped
    }

    /// How many bytes of a `len`-byte line to write, or `None` to drop it.
    fn admit(&mut self, len: usize) -> Option<usize> {
        let keep = len.min(MAX_LOG_LINE);
        if self.lines >= LOG_LINES_PER_SECOND || self.bytes + keep > LOG_BYTES_PER_SECOND {
            self.dropped_lines += 1;
            self.dropped_bytes += len;
            return None;
        }
        self.lines += 1;
        self.bytes += keep;
        Some(keep)
    }
}

/// `text` cut to at most `keep` bytes at a character boundary, saying so.
fn cut(text: &str, keep: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= keep {
        return text.into();
    }
    let mut end = keep;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_in_bytes_and_lines() {
        let mut budget = LogBudget::default();
        budget.roll(1);
        let mut written = 0;
        for _ in 0..1000 {
            if let Some(keep) = budget.admit(1 << 20) {
                assert_eq!(keep, MAX_LOG_LINE);
                written += keep;
            }
        }
        assert!(written <= LOG_BYTES_PER_SECOND, "{written}");
        assert_eq!(budget.roll(2), Some((1000 - 16, 984 << 20)));
        let short = (0..100).filter(|_| budget.admit(10).is_some()).count();
        assert_eq!(short, LOG_LINES_PER_SECOND as usize);
        assert_eq!(cut("héllo", 2), "h… (5 bytes cut)");
        assert_eq!(cut("hello", 9), "hello");
    }
}
