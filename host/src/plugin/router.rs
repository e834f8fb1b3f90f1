//! Router plugins: a loaded component bound to one route's config, and the
//! per-thread instances that make decisions.

use super::bindings::{Router as Bindings, RouterPre};
use super::{CallStats, HostState, LoadedComponent, PluginError, PluginRuntime, Version, wit};
use crate::config::FailurePolicy;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use wasmtime::Store;

/// Consecutive failed calls after which a plugin is quarantined.
const QUARANTINE_AFTER: u32 = 5;
/// How long a quarantined plugin is bypassed before it is tried again.
const QUARANTINE_FOR: Duration = Duration::from_secs(10);

/// What a route asks of its router plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterSpec {
    pub file: PathBuf,
    pub route: String,
    /// The config table, flattened for `init`.
    pub config: Vec<(String, String)>,
    pub on_failure: FailurePolicy,
    pub deadline: Duration,
    pub memory_mb: u32,
    /// The pool's static backend facts, for `set-backends`.
    pub backends: Vec<wit::BackendInfo>,
    /// Bytes of a JSON request body read to find `json-body` attributes.
    pub body_peek: usize,
}

pub use super::interest::{Interest, prefix_blocks_problem};

/// Why a plugin call produced no usable decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The plugin trapped (panic, out of memory, bad instruction).
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin ran past its deadline.
    #[error("ran past its deadline")]
    Deadline,
    /// The decision named a backend the pool does not have, or a bad status.
    #[error("invalid decision: {0}")]
    Invalid(String),
    /// The plugin failed repeatedly and is bypassed for a while.
    #[error("quarantined after repeated failures")]
    Quarantined,
    /// A fresh instance could not be created.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// No instance is ready on this thread yet (one is being made); not
    /// the plugin's fault.
    #[error("no instance ready yet")]
    NotReady,
}

impl CallFailure {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Trap(_) => "trap",
            CallFailure::Deadline => "deadline",
            CallFailure::Invalid(_) => "invalid",
            CallFailure::Quarantined => "quarantined",
            CallFailure::Instantiate(_) => "instantiate",
            CallFailure::NotReady => "not_ready",
        }
    }
}

/// A router component bound to one route: compiled, linked, initialised once
/// to validate it, and ready to be instantiated on each worker thread.
pub struct RouterPlugin {
    /// Unique per load; worker threads key their instances by it.
    pub id: u64,
    pub component: Arc<LoadedComponent>,
    /// The interface version the component was built against.
    pub version: Version,
    pub spec: RouterSpec,
    /// Attributes to extract for each request, in the plugin's order.
    pub interest: Vec<Interest>,
    /// Whether `interest` names a body field, so the body is read first.
    reads_body: bool,
    pre: RouterPre,
    shared: Arc<crate::shared::SharedStore>,
    deadline_ticks: u64,
    name: Arc<str>,
    route: Arc<str>,
    consecutive_failures: AtomicU32,
    quarantined_until_ms: AtomicU64,
    /// Calls, failures, last error and sampled call times.
    pub stats: CallStats,
    /// `switchyard_route_plugin_info{route, plugin, version}`: how many live
    /// bindings run this version on this route (1 while it serves).
    info: metrics::Gauge,
    /// Instances made and initialised off the request path, for workers to
    /// take: a worker thread never runs a plugin's `init`.
    spares: std::sync::Mutex<Vec<RouterInstance>>,
}

/// Instances kept ready per plugin: one per core, and one more for the
/// worker whose instance trapped.
fn spare_target() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 1
}

// === impl RouterPlugin ===

impl RouterPlugin {
    /// Loads `spec.file`, checks its interface, and runs `init` and
    /// `set-backends` once, so a plugin that cannot start is refused here,
    /// not on the first request.
    pub fn load(
        runtime: &PluginRuntime,
        spec: RouterSpec,
    ) -> Result<Arc<RouterPlugin>, PluginError> {
        let (component, version) = runtime.load(&spec.file, "router")?;
        RouterPlugin::from_component(runtime, component, version, spec)
    }

    /// Binds an already loaded component to `spec`, running `init` and
    /// `set-backends` once to validate it.
    pub fn from_component(
        runtime: &PluginRuntime,
        component: Arc<LoadedComponent>,
        version: Version,
        spec: RouterSpec,
    ) -> Result<Arc<RouterPlugin>, PluginError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let pre = runtime.pre_instantiate(&spec.file, &component.component, version)?;
        let pre = RouterPre::new(version, pre)
            .map_err(|e| super::shape_error(&spec.file, version, &e))?;
        let name = super::file_name(&spec.file);
        let route: Arc<str> = spec.route.as_str().into();
        let info = metrics::gauge!("switchyard_route_plugin_info",
            "plugin" => name.to_string(), "route" => route.to_string(), "version" => component.hash[..12].to_string());
        info.increment(1.0);
        let stats = CallStats::new(&name, &route, &component.hash[..12]);
        let mut plugin = RouterPlugin {
            id: NEXT_ID.fetch_add(1, Relaxed),
            component,
            version,
            interest: Vec::new(),
            reads_body: false,
            pre,
            shared: runtime.shared().clone(),
            deadline_ticks: PluginRuntime::deadline_ticks(spec.deadline),
            spec,
            name,
            route,
            consecutive_failures: AtomicU32::new(0),
            quarantined_until_ms: AtomicU64::new(0),
            stats,
            info,
            spares: std::sync::Mutex::new(Vec::new()),
        };
        let (first, interest) = plugin.start_instance()?;
        plugin.reads_body = interest.iter().any(Interest::reads_body);
        plugin.interest = interest;
        // Ready before the version serves, made here on the loading thread.
        let mut spares = vec![first];
        for _ in 1..spare_target() {
            spares.push(plugin.instantiate()?);
        }
        plugin.spares = std::sync::Mutex::new(spares);
        Ok(Arc::new(plugin))
    }

    /// An instance made off the request path, if one is ready; a new one is
    /// then made in the background for the next taker.
    pub fn take_instance(self: &Arc<Self>) -> Option<RouterInstance> {
        let taken = self.spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
        refill(Arc::downgrade(self));
        taken
    }

    fn top_up(&self) {
        loop {
            if self.spares.lock().unwrap_or_else(|e| e.into_inner()).len() >= spare_target() {
                return;
            }
            match self.instantiate() {
                Ok(instance) => self
                    .spares
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(instance),
                Err(e) => {
                    self.record_failure(&CallFailure::Instantiate(e.to_string()));
                    return;
                }
            }
        }
    }

    /// Plugin file name, as shown in logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates an instance for one worker thread.
    pub fn instantiate(&self) -> Result<RouterInstance, PluginError> {
        self.start_instance().map(|(instance, _)| instance)
    }

    fn start_instance(&self) -> Result<(RouterInstance, Vec<Interest>), PluginError> {
        let _busy = super::epoch::busy();
        let file = &self.spec.file;
        let mut store = super::new_store(
            self.pre.engine(),
            self.shared.clone(),
            crate::shared::Access::NoWait,
            self.name.clone(),
            self.route.clone(),
            self.spec.memory_mb,
            self.deadline_ticks,
        );
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| super::instantiate_error(file, &e))?;
        let init_err = |message: String| PluginError::Init {
            file: file.clone(),
            owner: format!("route `{}`", self.spec.route),
            message,
        };
        let attributes = bindings
            .init(&mut store, &self.spec.route, &self.spec.config)
            .map_err(|e| init_err(format!("trapped: {e:#}")))?
            .map_err(init_err)?;
        bindings
            .set_backends(&mut store, &self.spec.backends)
            .map_err(|e| init_err(format!("set-backends trapped: {e:#}")))?;
        let interest = attributes
            .into_iter()
            .map(|a| match a {
                wit::Attribute::Header(h) => http::HeaderName::from_bytes(h.as_bytes())
                    .map(Interest::Header)
                    .map_err(|_| {
                        init_err(format!(
                            "asks for header {h:?}, which is not a valid header name"
                        ))
                    }),
                wit::Attribute::Path => Ok(Interest::Path),
                wit::Attribute::Query => Ok(Interest::Query),
                wit::Attribute::Cookie(c) => Ok(Interest::Cookie(c)),
                wit::Attribute::Host => Ok(Interest::Host),
                wit::Attribute::JsonBody(f) => Ok(Interest::JsonBody(f)),
                wit::Attribute::BodySize => Ok(Interest::BodySize),
                wit::Attribute::PromptPrefix(p) => {
                    match prefix_blocks_problem(p.block, p.max_bytes) {
                        None => Ok(Interest::PromptPrefix {
                            block: p.block,
                            max_bytes: p.max_bytes,
                        }),
                        Some(problem) => Err(init_err(format!("asks for {problem}"))),
                    }
                }
            })
            .collect::<Result<_, _>>()?;
        let instance = RouterInstance {
            store,
            bindings,
            plugin_id: self.id,
            deadline_ticks: self.deadline_ticks,
        };
        Ok((instance, interest))
    }

    /// Whether the router asks for a field of the request body, which is
    /// then read (up to `body_peek` bytes) before the decision.
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    /// Whether the plugin is bypassed after repeated failures.
    pub fn is_quarantined(&self) -> bool {
        let until = self.quarantined_until_ms.load(Relaxed);
        until != 0 && crate::clock::millis() < until
    }

    /// Records a successful call.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Records a failed call: logs it, counts it, and quarantines the plugin
    /// once failures repeat.
    pub fn record_failure(&self, failure: &CallFailure) {
        self.stats.failed(failure.kind(), format!("{failure:?}"));
        metrics::counter!("switchyard_plugin_failures_total",
            "plugin" => self.name.to_string(), "route" => self.route.to_string(), "kind" => failure.kind())
        .increment(1);
        let policy = match self.spec.on_failure {
            FailurePolicy::FailOpen => "fail-open: built-in router decides",
            FailurePolicy::FailClosed => "fail-closed: answering 503",
        };
        tracing::warn!(plugin = %self.name, route = %self.route, "plugin call failed ({failure:?}); {policy}");
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures >= QUARANTINE_AFTER {
            self.consecutive_failures.store(0, Relaxed);
            self.quarantined_until_ms.store(
                crate::clock::millis() + QUARANTINE_FOR.as_millis() as u64,
                Relaxed,
            );
            metrics::counter!("switchyard_plugin_quarantines_total",
                "plugin" => self.name.to_string(), "route" => self.route.to_string())
            .increment(1);
            tracing::error!(plugin = %self.name, route = %self.route,
                "plugin quarantined for {QUARANTINE_FOR:?} after {failures} failed calls in a row");
        }
    }
}

impl Drop for RouterPlugin {
    fn drop(&mut self) {
        self.info.decrement(1.0);
    }
}

/// Asks the instantiation thread to top up `plugin`'s spare instances.
fn refill(plugin: std::sync::Weak<RouterPlugin>) {
    type Queue = std::sync::mpsc::Sender<std::sync::Weak<RouterPlugin>>;
    static QUEUE: std::sync::OnceLock<Option<std::sync::Mutex<Queue>>> = std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<std::sync::Weak<RouterPlugin>>();
        let spawned = std::thread::Builder::new()
            .name("switchyard-instances".into())
            .spawn(move || {
                // Started by whichever worker asked first: not on its CPU.
                crate::cpus::release();
                while let Ok(plugin) = rx.recv() {
                    if let Some(plugin) = plugin.upgrade()
                        && !plugin.is_quarantined()
                    {
                        plugin.top_up();
                    }
                }
            });
        match spawned {
            Ok(_) => Some(std::sync::Mutex::new(tx)),
            Err(e) => {
                tracing::error!("cannot start the plugin instance thread: {e}");
                None
            }
        }
    });
    if let Some(tx) = queue {
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(plugin);
    }
}

/// One live instance of a router plugin, owned by one worker thread.
pub struct RouterInstance {
    store: Store<HostState>,
    bindings: Bindings,
    /// The [`RouterPlugin::id`] this instance was made from.
    pub plugin_id: u64,
    deadline_ticks: u64,
}

// === impl RouterInstance ===

impl RouterInstance {
    /// Asks the plugin for a decision within its deadline. `loads` holds
    /// [`LOAD_WORDS`] words per backend (see [`push_load_words`]);
    /// `attributes` are the values of the plugin's declared interest, handed
    /// over on demand. After an `Err` the instance must be dropped: a trapped
    /// component cannot be reused.
    pub fn route(
        &mut self,
        request: wit::Request,
        loads: &[u32],
        attributes: Vec<wit::AttributeValue>,
    ) -> Result<Answer, CallFailure> {
        let _busy = super::epoch::busy();
        self.store.data_mut().start_call();
        self.store
            .set_epoch_deadline(super::epoch::deadline(self.deadline_ticks));
        if !attributes.is_empty() {
            self.store.data_mut().attributes = attributes;
        }
        let result = match self.bindings.route(&mut self.store, request, loads) {
            Ok(wit::Choice::Forward((a, b, c, d))) => Ok(Answer::few([a, b, c, d], None)),
            Ok(wit::Choice::Hedged(((a, b, c, d), after_us))) => {
                Ok(Answer::few([a, b, c, d], Some(after_us)))
            }
            Ok(wit::Choice::Detailed) => self
                .bindings
                .detailed_decision(&mut self.store)
                .map(Answer::Full),
            Err(e) => Err(e),
        };
        self.store.data_mut().attributes.clear();
        result.map_err(|e| super::call_failure(&e))
    }
}

/// A router's answer: the compact form (up to four candidates and
/// perhaps a hedge, nothing else), or a full decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Candidate ids, of which the first `len` are used, and the hedge
    /// delay in microseconds when the router asked for one.
    Few([u32; 4], u8, Option<u32>),
    Full(wit::Decision),
}

impl Answer {
    /// The compact answer of a choice's four slots, unused ones last.
    pub fn few(ids: [u32; 4], hedge_after_us: Option<u32>) -> Answer {
        let len = ids.iter().position(|&id| id == NO_BACKEND).unwrap_or(4);
        Answer::Few(ids, len as u8, hedge_after_us)
    }
}

/// Words per backend in the loads passed to `route`: one per `load-word` case.
pub const LOAD_WORDS: usize = wit::LoadWord::QuotaResetMs as usize + 1;
/// An unused candidate slot in a compact choice.
const NO_BACKEND: u32 = u32::MAX;
