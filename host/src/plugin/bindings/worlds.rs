//! The three policy worlds (router, health check, circuit breaker) as the
//! host calls them: one variant per interface version, each call converting
//! into and out of the host's types.

use super::{HostState, Version, v0_1, v0_2, v0_3, wit};
use wasmtime::Store;
use wasmtime::component::InstancePre;

/// A world's linked component (`$pre`) and instance exports (`$inst`),
/// one variant per version, with the calls every world shares.
macro_rules! versioned_world {
    ($(#[$pre_doc:meta])* $pre:ident, $(#[$inst_doc:meta])* $inst:ident, $bindings_pre:ident, $bindings:ident, $exports:ident) => {
        $(#[$pre_doc])*
        pub enum $pre {
            V0_1(v0_1::$bindings_pre<HostState>),
            V0_2(v0_2::$bindings_pre<HostState>),
            V0_3(v0_3::$bindings_pre<HostState>),
        }

        $(#[$inst_doc])*
        pub enum $inst {
            V0_1(v0_1::$bindings),
            V0_2(v0_2::$bindings),
            V0_3(v0_3::$bindings),
        }

        impl $pre {
            pub fn new(version: Version, pre: InstancePre<HostState>) -> wasmtime::Result<$pre> {
                Ok(match version {
                    Version::V0_1 => $pre::V0_1(v0_1::$bindings_pre::new(pre)?),
                    Version::V0_2 => $pre::V0_2(v0_2::$bindings_pre::new(pre)?),
                    Version::V0_3 => $pre::V0_3(v0_3::$bindings_pre::new(pre)?),
                })
            }

            pub fn engine(&self) -> &wasmtime::Engine {
                match self {
                    $pre::V0_1(p) => p.engine(),
                    $pre::V0_2(p) => p.engine(),
                    $pre::V0_3(p) => p.engine(),
                }
            }

            pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<$inst> {
                Ok(match self {
                    $pre::V0_1(p) => $inst::V0_1(p.instantiate(store)?),
                    $pre::V0_2(p) => $inst::V0_2(p.instantiate(store)?),
                    $pre::V0_3(p) => $inst::V0_3(p.instantiate(store)?),
                })
            }
        }

        impl $inst {
            /// The pool's backends, after `init` and whenever they change.
            pub fn set_backends(
                &self,
                store: &mut Store<HostState>,
                backends: &[wit::BackendInfo],
            ) -> wasmtime::Result<()> {
                match self {
                    $inst::V0_1(b) => b.$exports().call_set_backends(store, &v0_1::backends(backends)),
                    $inst::V0_2(b) => b.$exports().call_set_backends(store, &v0_2::backends(backends)),
                    $inst::V0_3(b) => b.$exports().call_set_backends(store, backends),
                }
            }
        }
    };
}

/// `init` of a pool world (health check or breaker): the pool's name and
/// config, an error refusing the plugin.
macro_rules! pool_init {
    ($inst:ident, $exports:ident) => {
        impl $inst {
            pub fn init(
                &self,
                store: &mut Store<HostState>,
                pool: &str,
                config: &[(String, String)],
            ) -> wasmtime::Result<Result<(), String>> {
                match self {
                    $inst::V0_1(p) => p.$exports().call_init(store, pool, config),
                    $inst::V0_2(p) => p.$exports().call_init(store, pool, config),
                    $inst::V0_3(p) => p.$exports().call_init(store, pool, config),
                }
            }
        }
    };
}

// === routers ===

versioned_world!(
    /// A router component linked against its version's bindings.
    RouterPre,
    /// A router instance's exports.
    Router,
    RouterPluginPre,
    RouterPlugin,
    switchyard_policy_router
);

impl Router {
    pub fn init(
        &self,
        store: &mut Store<HostState>,
        route: &str,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<Vec<wit::Attribute>, String>> {
        Ok(match self {
            Router::V0_1(r) => r
                .switchyard_policy_router()
                .call_init(store, route, config)?
                .map(|list| list.into_iter().map(Into::into).collect()),
            Router::V0_2(r) => r
                .switchyard_policy_router()
                .call_init(store, route, config)?
                .map(|list| list.into_iter().map(Into::into).collect()),
            Router::V0_3(r) => r
                .switchyard_policy_router()
                .call_init(store, route, config)?,
        })
    }

    pub fn route(
        &self,
        store: &mut Store<HostState>,
        request: wit::Request,
        loads: &[u32],
    ) -> wasmtime::Result<wit::Choice> {
        match self {
            Router::V0_1(r) => r
                .switchyard_policy_router()
                .call_route(store, request.into(), loads)
                .map(Into::into),
            Router::V0_2(r) => r
                .switchyard_policy_router()
                .call_route(store, request.into(), loads)
                .map(Into::into),
            Router::V0_3(r) => r
                .switchyard_policy_router()
                .call_route(store, request, loads),
        }
    }

    pub fn detailed_decision(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<wit::Decision> {
        match self {
            Router::V0_1(r) => r
                .switchyard_policy_router()
                .call_detailed_decision(store)
                .map(Into::into),
            Router::V0_2(r) => r
                .switchyard_policy_router()
                .call_detailed_decision(store)
                .map(Into::into),
            Router::V0_3(r) => r.switchyard_policy_router().call_detailed_decision(store),
        }
    }
}

// === health checks ===

versioned_world!(
    /// A health-check component linked against its version's bindings.
    HealthPre,
    /// A health-check instance's exports.
    HealthCheck,
    HealthPluginPre,
    HealthPlugin,
    switchyard_policy_health_check
);
pool_init!(HealthCheck, switchyard_policy_health_check);

impl HealthCheck {
    pub fn check(
        &self,
        store: &mut Store<HostState>,
        probe: &wit::ProbeResult,
    ) -> wasmtime::Result<wit::Verdict> {
        match self {
            HealthCheck::V0_1(h) => h
                .switchyard_policy_health_check()
                .call_check(store, &probe.into())
                .map(Into::into),
            HealthCheck::V0_2(h) => h
                .switchyard_policy_health_check()
                .call_check(store, &probe.into())
                .map(Into::into),
            HealthCheck::V0_3(h) => h.switchyard_policy_health_check().call_check(store, probe),
        }
    }
}

// === circuit breakers ===

versioned_world!(
    /// A circuit-breaker component linked against its version's bindings.
    BreakerPre,
    /// A circuit-breaker instance's exports.
    Breaker,
    BreakerPluginPre,
    BreakerPlugin,
    switchyard_policy_circuit_breaker
);
pool_init!(Breaker, switchyard_policy_circuit_breaker);

impl Breaker {
    pub fn record_outcome(
        &self,
        store: &mut Store<HostState>,
        outcome: wit::Outcome,
    ) -> wasmtime::Result<Option<wit::BreakerUpdate>> {
        match self {
            Breaker::V0_1(b) => b
                .switchyard_policy_circuit_breaker()
                .call_record_outcome(store, outcome.into())
                .map(|u| u.map(Into::into)),
            Breaker::V0_2(b) => b
                .switchyard_policy_circuit_breaker()
                .call_record_outcome(store, outcome.into())
                .map(|u| u.map(Into::into)),
            Breaker::V0_3(b) => b
                .switchyard_policy_circuit_breaker()
                .call_record_outcome(store, outcome),
        }
    }

    pub fn cool_down_ended(
        &self,
        store: &mut Store<HostState>,
        backend: u32,
    ) -> wasmtime::Result<wit::BreakerUpdate> {
        match self {
            Breaker::V0_1(b) => b
                .switchyard_policy_circuit_breaker()
                .call_cool_down_ended(store, backend)
                .map(Into::into),
            Breaker::V0_2(b) => b
                .switchyard_policy_circuit_breaker()
                .call_cool_down_ended(store, backend)
                .map(Into::into),
            Breaker::V0_3(b) => b
                .switchyard_policy_circuit_breaker()
                .call_cool_down_ended(store, backend),
        }
    }
}
