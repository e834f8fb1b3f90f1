//! Pool policy plugins: health checks and circuit breakers. Each is bound to
//! one pool and runs as a single instance on the control thread, off the
//! request path, so it sees every probe and every outcome of its pool.

use super::bindings::{Breaker, BreakerPre, HealthCheck, HealthPre};
use super::{
    CallFailure, CallStats, HostState, LoadedComponent, PluginError, PluginRuntime, Version, wit,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Store;

/// What a pool asks of one of its policy plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    pub file: PathBuf,
    pub pool: String,
    /// The config table, flattened for `init`.
    pub config: Vec<(String, String)>,
    pub deadline: Duration,
    pub memory_mb: u32,
    /// The pool's static backend facts, for `set-backends`.
    pub backends: Vec<wit::BackendInfo>,
}

/// Loaded, linked and validated policy plugin of one kind.
pub struct Policy<P> {
    pub component: Arc<LoadedComponent>,
    /// The interface version the component was built against.
    pub version: Version,
    pub spec: PolicySpec,
    pre: P,
    shared: Arc<crate::shared::SharedStore>,
    deadline_ticks: u64,
    name: Arc<str>,
    /// Calls, failures, last error and sampled call times.
    pub stats: CallStats,
}

/// A health-check plugin bound to a pool.
pub type HealthPolicy = Policy<HealthPre>;
/// A circuit-breaker plugin bound to a pool.
pub type BreakerPolicy = Policy<BreakerPre>;

impl<P> Policy<P> {
    /// Plugin file name, as logs and metrics show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn store(&self, engine: &wasmtime::Engine) -> Store<HostState> {
        super::new_store(
            engine,
            self.shared.clone(),
            crate::shared::Access::Wait,
            self.name.clone(),
            format!("pool:{}", self.spec.pool).into(),
            self.spec.memory_mb,
            self.deadline_ticks,
        )
    }

    fn init_error(&self, message: String) -> PluginError {
        PluginError::Init {
            file: self.spec.file.clone(),
            owner: format!("pool `{}`", self.spec.pool),
            message,
        }
    }

    /// Checks what `init` and `set-backends` returned when an instance
    /// started: a trap in either, or `init`'s own refusal, refuses it.
    fn started(
        &self,
        init: wasmtime::Result<Result<(), String>>,
        set_backends: impl FnOnce() -> wasmtime::Result<()>,
    ) -> Result<(), PluginError> {
        init.map_err(|e| self.init_error(format!("trapped: {e:#}")))?
            .map_err(|m| self.init_error(m))?;
        set_backends().map_err(|e| self.init_error(format!("set-backends trapped: {e:#}")))
    }

    fn bind(
        runtime: &PluginRuntime,
        (component, version): (Arc<LoadedComponent>, Version),
        spec: PolicySpec,
        make_pre: impl FnOnce(
            Version,
            wasmtime::component::InstancePre<HostState>,
        ) -> wasmtime::Result<P>,
    ) -> Result<Policy<P>, PluginError> {
        let pre = runtime.pre_instantiate(&spec.file, &component.component, version)?;
        let pre =
            make_pre(version, pre).map_err(|e| super::shape_error(&spec.file, version, &e))?;
        let name = super::file_name(&spec.file);
        Ok(Policy {
            stats: CallStats::new(&name, &format!("pool:{}", spec.pool), &component.hash[..12]),
            name,
            deadline_ticks: PluginRuntime::deadline_ticks(spec.deadline),
            component,
            version,
            spec,
            pre,
            shared: runtime.shared().clone(),
        })
    }
}

// === impl HealthPolicy ===

impl Policy<HealthPre> {
    /// Loads `spec.file` as a health plugin and starts one instance to
    /// validate it, so a broken plugin is refused at load.
    pub fn load(runtime: &PluginRuntime, spec: PolicySpec) -> Result<Arc<Self>, PluginError> {
        let loaded = runtime.load(&spec.file, "health-check")?;
        let policy = Policy::bind(runtime, loaded, spec, HealthPre::new)?;
        policy.instantiate()?;
        Ok(Arc::new(policy))
    }

    /// Creates an instance, `init` and `set-backends` run.
    pub fn instantiate(&self) -> Result<HealthInstance, PluginError> {
        let _busy = super::epoch::busy();
        let mut store = self.store(self.pre.engine());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| super::instantiate_error(&self.spec.file, &e))?;
        let init = bindings.init(&mut store, &self.spec.pool, &self.spec.config);
        self.started(init, || {
            bindings.set_backends(&mut store, &self.spec.backends)
        })?;
        Ok(HealthInstance {
            store,
            bindings,
            deadline_ticks: self.deadline_ticks,
        })
    }
}

/// A live health-check instance.
pub struct HealthInstance {
    store: Store<HostState>,
    bindings: HealthCheck,
    deadline_ticks: u64,
}

impl HealthInstance {
    /// Judges one probe. After an `Err` the instance must be replaced.
    pub fn check(&mut self, probe: &wit::ProbeResult) -> Result<wit::Verdict, CallFailure> {
        let _busy = super::epoch::busy();
        self.store.data_mut().start_call();
        self.store
            .set_epoch_deadline(super::epoch::deadline(self.deadline_ticks));
        self.bindings
            .check(&mut self.store, probe)
            .map_err(|e| super::call_failure(&e))
    }
}

// === impl BreakerPolicy ===

impl Policy<BreakerPre> {
    /// Loads `spec.file` as a circuit-breaker plugin and starts one
    /// instance to validate it.
    pub fn load(runtime: &PluginRuntime, spec: PolicySpec) -> Result<Arc<Self>, PluginError> {
        let loaded = runtime.load(&spec.file, "circuit-breaker")?;
        let policy = Policy::bind(runtime, loaded, spec, BreakerPre::new)?;
        policy.instantiate()?;
        Ok(Arc::new(policy))
    }

    /// Creates an instance, `init` and `set-backends` run.
    pub fn instantiate(&self) -> Result<BreakerInstance, PluginError> {
        let _busy = super::epoch::busy();
        let mut store = self.store(self.pre.engine());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| super::instantiate_error(&self.spec.file, &e))?;
        let init = bindings.init(&mut store, &self.spec.pool, &self.spec.config);
        self.started(init, || {
            bindings.set_backends(&mut store, &self.spec.backends)
        })?;
        Ok(BreakerInstance {
            store,
            bindings,
            deadline_ticks: self.deadline_ticks,
        })
    }
}

/// A live circuit-breaker instance.
pub struct BreakerInstance {
    store: Store<HostState>,
    bindings: Breaker,
    deadline_ticks: u64,
}

impl BreakerInstance {
    /// Feeds one outcome; `Some` changes the backend's breaker state.
    pub fn record_outcome(
        &mut self,
        outcome: wit::Outcome,
    ) -> Result<Option<wit::BreakerUpdate>, CallFailure> {
        let _busy = super::epoch::busy();
        self.store.data_mut().start_call();
        self.store
            .set_epoch_deadline(super::epoch::deadline(self.deadline_ticks));
        self.bindings
            .record_outcome(&mut self.store, outcome)
            .map_err(|e| super::call_failure(&e))
    }

    /// Asks what follows the end of `backend`'s open period.
    pub fn cool_down_ended(&mut self, backend: u32) -> Result<wit::BreakerUpdate, CallFailure> {
        let _busy = super::epoch::busy();
        self.store.data_mut().start_call();
        self.store
            .set_epoch_deadline(super::epoch::deadline(self.deadline_ticks));
        self.bindings
            .cool_down_ended(&mut self.store, backend)
            .map_err(|e| super::call_failure(&e))
    }
}
