//! Pool policies: health checks and circuit breakers.
//!
//! The host runs one instance of each per pool, on its control thread, so
//! a breaker sees every outcome of the pool from all worker threads and can
//! keep exact counts in `self`.

use crate::{BackendInfo, Config};
use alloc::string::String;

pub use crate::bindings::switchyard::policy::types::{
    BreakerUpdate, ErrorKind, Outcome, ProbeResult, Verdict,
};

/// Turns active probe results into verdicts for one pool.
pub trait HealthCheck: Sized + 'static {
    /// Builds the check from the pool's `health.config`. An `Err` makes the
    /// host refuse the plugin and keep the last good config.
    fn init(pool: &str, config: &Config) -> Result<Self, String>;

    /// The pool's static facts. Default: ignored.
    fn set_backends(&mut self, backends: &[BackendInfo]) {
        let _ = backends;
    }

    /// Judges one probe of one backend (`probe.backend`).
    fn check(&mut self, probe: &ProbeResult) -> Verdict;
}

/// Turns request outcomes into breaker states for one pool.
pub trait CircuitBreaker: Sized + 'static {
    /// Builds the breaker from the pool's `breaker.config`.
    fn init(pool: &str, config: &Config) -> Result<Self, String>;

    /// The pool's static facts. Default: ignored.
    fn set_backends(&mut self, backends: &[BackendInfo]) {
        let _ = backends;
    }

    /// Sees one finished request; `Some` changes the backend's state.
    fn record(&mut self, outcome: &Outcome) -> Option<BreakerUpdate>;

    /// An `open` period of `backend` has ended: what now? Usually
    /// `HalfOpen(n)`, letting `n` trial requests through.
    fn cool_down_ended(&mut self, backend: u32) -> BreakerUpdate;
}

/// Whether `outcome` is a failure of the backend: no answer, or a 5xx.
/// A 429 is the backend asking for less traffic, not a failure.
pub fn is_failure(outcome: &Outcome) -> bool {
    matches!(
        outcome.error,
        Some(ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::Reset | ErrorKind::ServerError)
    )
}

impl Verdict {
    /// A verdict from its parts.
    pub fn new(health: crate::Health, load_score: u16) -> Verdict {
        Verdict {
            health,
            load_score: load_score.min(1000),
        }
    }
}

impl Outcome {
    /// A finished request for tests: `status`, and the error kind the host
    /// would attach to it.
    pub fn with_status(backend: u32, status: u16) -> Outcome {
        let error = match status {
            0 => Some(ErrorKind::Connect),
            429 => Some(ErrorKind::RateLimited),
            500..=599 => Some(ErrorKind::ServerError),
            _ => None,
        };
        Outcome {
            backend,
            status,
            latency_us: 1000,
            ttfb_us: 500,
            error,
            retry_after_ms: None,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    /// The same outcome with the tokens a response's `usage` reported.
    pub fn tokens(mut self, prompt: u32, completion: u32) -> Outcome {
        self.prompt_tokens = prompt;
        self.completion_tokens = completion;
        self
    }
}

/// Exports a [`HealthCheck`] implementation as the plugin's health check.
#[macro_export]
macro_rules! export_health_check {
    ($check:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static CHECK: $crate::glue::Slot<$check> = $crate::glue::Slot::new();
            struct Exports;
            impl $crate::glue::HealthGuest for Exports {
                fn init(
                    pool: $crate::glue::String,
                    config: $crate::glue::Vec<($crate::glue::String, $crate::glue::String)>,
                ) -> ::core::result::Result<(), $crate::glue::String> {
                    $crate::glue::init_health(&CHECK, &pool, config)
                }
                fn set_backends(backends: $crate::glue::Vec<$crate::BackendInfo>) {
                    $crate::glue::set_health_backends(&CHECK, &backends)
                }
                fn check(probe: $crate::policy::ProbeResult) -> $crate::policy::Verdict {
                    $crate::glue::check(&CHECK, &probe)
                }
            }
            $crate::health_bindings::__export_health_bindings!(Exports with_types_in $crate::health_bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            fn assert_check<C: $crate::policy::HealthCheck>() {}
            assert_check::<$check>();
        };
    };
}

/// Exports a [`CircuitBreaker`] implementation as the plugin's breaker.
#[macro_export]
macro_rules! export_breaker {
    ($breaker:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static BREAKER: $crate::glue::Slot<$breaker> = $crate::glue::Slot::new();
            struct Exports;
            impl $crate::glue::BreakerGuest for Exports {
                fn init(
                    pool: $crate::glue::String,
                    config: $crate::glue::Vec<($crate::glue::String, $crate::glue::String)>,
                ) -> ::core::result::Result<(), $crate::glue::String> {
                    $crate::glue::init_breaker(&BREAKER, &pool, config)
                }
                fn set_backends(backends: $crate::glue::Vec<$crate::BackendInfo>) {
                    $crate::glue::set_breaker_backends(&BREAKER, &backends)
                }
                fn record_outcome(
                    outcome: $crate::policy::Outcome,
                ) -> ::core::option::Option<$crate::policy::BreakerUpdate> {
                    $crate::glue::record(&BREAKER, &outcome)
                }
                fn cool_down_ended(backend: u32) -> $crate::policy::BreakerUpdate {
                    $crate::glue::cool_down_ended(&BREAKER, backend)
                }
            }
            $crate::breaker_bindings::__export_breaker_bindings!(Exports with_types_in $crate::breaker_bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            fn assert_breaker<B: $crate::policy::CircuitBreaker>() {}
            assert_breaker::<$breaker>();
        };
    };
}
