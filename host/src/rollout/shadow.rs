//! A shadow router: on a sampled share of requests it gets the facts,
//! attributes and load snapshot the live router got, and decides too. Its
//! decision is compared with the live one and never used. The call runs as
//! its own task after the live request has gone upstream, on an instance
//! of its own, so a shadow that traps or spins costs the request nothing.

use super::Decided;
use crate::plugin::{CallFailure, RouterInstance, RouterPlugin, wit};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Disagreements kept for `/shadow/<route>`.
const RING: usize = 32;

/// A route's shadow router and what it has shown so far.
pub struct Shadow {
    pub plugin: Arc<RouterPlugin>,
    pub sample: f64,
    threshold: u64,
    pub stats: Arc<ShadowStats>,
}

/// Agreement counts, traffic each side sent, failures and recent
/// disagreements of one shadow.
pub struct ShadowStats {
    route: String,
    backends: Vec<String>,
    same: AtomicU64,
    same_primary: AtomicU64,
    different: AtomicU64,
    failed: AtomicU64,
    /// Requests each backend got first from the live router, and would
    /// have got from the shadow, on the sampled requests.
    live_primary: Vec<AtomicU64>,
    shadow_primary: Vec<AtomicU64>,
    call_ns: AtomicU64,
    calls: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    ring: Mutex<VecDeque<Disagreement>>,
    counters: [metrics::Counter; 4],
}

/// One sampled request on which the two routers differ.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Disagreement {
    pub at_unix_ms: u64,
    pub method: &'static str,
    pub client_ip: String,
    /// The shadow's attributes: name, and value (`null` when absent).
    pub attributes: Vec<(String, Option<String>)>,
    pub live: Decided,
    /// The shadow's decision, or why it gave none.
    pub shadow: Option<Decided>,
    pub shadow_failure: Option<String>,
}

/// Shadow instances of one worker thread, by plugin id, and the plugins
/// they belong to, so instances of unloaded plugins are dropped.
#[derive(Default)]
struct Instances {
    live: HashMap<u64, RouterInstance>,
    owners: HashMap<u64, std::sync::Weak<RouterPlugin>>,
    calls: u32,
}

thread_local! {
    static INSTANCES: RefCell<Instances> = RefCell::default();
}

// === impl Shadow ===

impl Shadow {
    /// A shadow for `route`'s pool of `backends`; its counts carry on from
    /// `before` when that ran the same loaded plugin.
    pub fn new(
        plugin: Arc<RouterPlugin>,
        sample: f64,
        route: &str,
        backends: Vec<String>,
        before: Option<&Shadow>,
    ) -> Shadow {
        let stats = match before {
            Some(b) if Arc::ptr_eq(&b.plugin, &plugin) && b.stats.backends == backends => {
                b.stats.clone()
            }
            _ => Arc::new(ShadowStats::new(route, plugin.name(), backends)),
        };
        Shadow {
            plugin,
            sample,
            threshold: super::threshold(sample),
            stats,
        }
    }

    /// Whether the shadow decides this request.
    pub fn sampled(&self) -> bool {
        super::sampled(self.threshold)
    }

    /// Has the shadow decide on the same inputs as the live router, in a
    /// task of its own on this worker's local set, and compares.
    pub fn run(
        self: &Arc<Self>,
        facts: wit::Request,
        loads: Vec<u32>,
        attributes: Vec<wit::AttributeValue>,
        live: Decided,
        pool_size: usize,
    ) {
        let this = self.clone();
        tokio::task::spawn_local(async move {
            this.decide(facts, &loads, attributes, live, pool_size);
        });
    }

    fn decide(
        &self,
        facts: wit::Request,
        loads: &[u32],
        attributes: Vec<wit::AttributeValue>,
        live: Decided,
        pool_size: usize,
    ) {
        let shown = self.shown(&attributes);
        let started = std::time::Instant::now();
        let answer = INSTANCES.with(|cell| {
            let mut i = cell.borrow_mut();
            let i = &mut *i;
            i.calls = i.calls.wrapping_add(1);
            if i.calls.is_multiple_of(1024) {
                i.owners.retain(|_, p| p.strong_count() > 0);
                let owners = &i.owners;
                i.live.retain(|id, _| owners.contains_key(id));
            }
            i.owners
                .entry(self.plugin.id)
                .or_insert_with(|| Arc::downgrade(&self.plugin));
            crate::plugin::ask(
                &mut i.live,
                &self.plugin,
                facts,
                loads,
                attributes,
                pool_size,
            )
        });
        let s = &self.stats;
        s.call_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        s.calls.fetch_add(1, Relaxed);
        let shadow = answer.map(|c| Decided::of(&c));
        s.count(&facts, shown, live, shadow);
    }

    fn shown(&self, values: &[wit::AttributeValue]) -> Vec<(String, Option<String>)> {
        self.plugin
            .interest
            .iter()
            .zip(values)
            .map(|(i, v)| {
                let v = match super::shown_value(i, v) {
                    wit::AttributeValue::Value(v) => Some(v.chars().take(200).collect::<String>()),
                    _ => None,
                };
                (i.name(), v)
            })
            .collect()
    }
}

// === impl ShadowStats ===

impl ShadowStats {
    fn new(route: &str, plugin: &str, backends: Vec<String>) -> ShadowStats {
        let counter = |result: &'static str| {
            metrics::counter!("switchyard_shadow_decisions_total",
                "route" => route.to_string(), "plugin" => plugin.to_string(), "result" => result)
        };
        ShadowStats {
            route: route.to_string(),
            live_primary: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            shadow_primary: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            backends,
            same: AtomicU64::new(0),
            same_primary: AtomicU64::new(0),
            different: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            call_ns: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failures: Mutex::default(),
            ring: Mutex::default(),
            counters: [
                counter("same"),
                counter("same_primary"),
                counter("different"),
                counter("failed"),
            ],
        }
    }

    fn count(
        &self,
        facts: &wit::Request,
        attributes: Vec<(String, Option<String>)>,
        live: Decided,
        shadow: Result<Decided, CallFailure>,
    ) {
        let bump = |side: &[AtomicU64], d: &Decided| {
            if let Some(b) = d.primary().and_then(|id| side.get(id as usize)) {
                b.fetch_add(1, Relaxed);
            }
        };
        bump(&self.live_primary, &live);
        let (slot, counter) = match &shadow {
            Ok(d) => {
                bump(&self.shadow_primary, d);
                if *d == live {
                    (&self.same, 0)
                } else if d.same_primary(&live) {
                    (&self.same_primary, 1)
                } else {
                    (&self.different, 2)
                }
            }
            Err(failure) => {
                *self
                    .failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(failure.kind())
                    .or_default() += 1;
                (&self.failed, 3)
            }
        };
        slot.fetch_add(1, Relaxed);
        self.counters[counter].increment(1);
        if counter == 0 {
            return;
        }
        let entry = Disagreement {
            at_unix_ms: crate::clock::wall_clock_ms(),
            method: super::method_name(facts.method),
            client_ip: super::ip_text(facts.client_ip),
            attributes,
            live,
            shadow_failure: shadow.as_ref().err().map(ToString::to_string),
            shadow: shadow.ok(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// What `/shadow/<route>` and `/status` show.
    pub fn to_json(&self, plugin: &RouterPlugin, sample: f64) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Relaxed);
        let decided = n(&self.same) + n(&self.same_primary) + n(&self.different);
        let sampled = decided + n(&self.failed);
        let share = |x: u64| {
            if decided == 0 {
                0.0
            } else {
                x as f64 / decided as f64
            }
        };
        let traffic: Vec<_> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let live = n(&self.live_primary[i]);
                let shadow = n(&self.shadow_primary[i]);
                serde_json::json!({
                    "backend": name, "live": live, "shadow": shadow,
                    "shift": shadow as i64 - live as i64,
                })
            })
            .collect();
        let calls = n(&self.calls);
        serde_json::json!({
            "route": self.route,
            "plugin": plugin.name(),
            "version": plugin.component.hash,
            "sample": sample,
            "sampled": sampled,
            "same": n(&self.same),
            "same_primary_only": n(&self.same_primary),
            "different": n(&self.different),
            "failed": n(&self.failed),
            "agreement": share(n(&self.same)),
            "primary_agreement": share(n(&self.same) + n(&self.same_primary)),
            "failures": *self.failures.lock().unwrap_or_else(|e| e.into_inner()),
            "traffic": traffic,
            "mean_call_us": if calls == 0 { 0.0 } else { n(&self.call_ns) as f64 / calls as f64 / 1e3 },
            "quarantined": plugin.is_quarantined(),
            "recent_disagreements": self.ring.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().collect::<Vec<_>>(),
        })
    }
}
