//! Write Switchyard policies in plain Rust.
//!
//! A router is a type implementing [`Router`], exported with
//! [`export_router!`]; a pool's health check implements
//! [`HealthCheck`](policy::HealthCheck) ([`export_health_check!`]) and its
//! circuit breaker [`CircuitBreaker`](policy::CircuitBreaker)
//! ([`export_breaker!`]). The same crate builds to a `wasm32-wasip2` component
//! the proxy loads, and natively, so a policy is unit-tested with `cargo test`
//! like any other Rust code.
//!
//! ```ignore
//! #![cfg_attr(not(test), no_std)]
//! use switchyard_sdk::prelude::*;
//!
//! struct First;
//! impl Router for First {
//!     fn init(_route: &str, _config: &Config) -> Result<Self, String> { Ok(First) }
//!     fn route(&mut self, _req: &Request, backends: &[BackendLoad]) -> Decision {
//!         Decision::forward(backends.iter().filter(|b| b.is_usable()).map(|b| b.id).take(4))
//!     }
//! }
//! export_router!(First);
//! ```
//!
//! # Why `no_std`
//! Plugins get no WASI capabilities: no files, network, environment or wall
//! clock. Rust's `std` on `wasm32-wasip2` imports WASI interfaces (its panic
//! machinery alone writes to stderr), which the proxy does not provide. So a
//! plugin is `#![cfg_attr(not(test), no_std)]`; it still has `Vec`, `String`,
//! `BTreeMap` and `format!` from `alloc` (re-exported by [`prelude`]), and this
//! crate supplies the allocator and a panic handler that logs the panic
//! message through the host before trapping. The result is a component of a
//! few tens of kilobytes that imports only `switchyard:policy/host` (and
//! `switchyard:policy/shared` when it uses [`shared`]).
//! A plugin that links `std` by mistake fails to build with "duplicate lang
//! item `panic_impl`".
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod candidates;
mod config;
pub mod hash;
pub mod hedge;
pub mod host;
pub mod json;
pub mod policy;
pub mod prometheus;
pub mod shared;
mod types;

#[doc(hidden)]
pub mod glue;

pub use config::Config;
pub use types::*;

/// The interface version this SDK builds plugins for.
pub const INTERFACE_VERSION: &str = "0.3.0";

/// The interface version, recorded in the component's
/// `switchyard:policy-version` custom section: the host reads it before
/// linking, so it can say exactly which version a plugin needs.
// `link_section` counts as unsafe code: a custom section holding plain
// bytes places nothing the program runs.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = "switchyard:policy-version")]
static VERSION_STAMP: [u8; INTERFACE_VERSION.len()] = *b"0.3.0";

const _: () = assert!(matches!(INTERFACE_VERSION.as_bytes(), b"0.3.0"));

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "router-plugin",
        path: "wit/policy@0.3.0",
        pub_export_macro: true,
        export_macro_name: "__export_router_bindings",
        default_bindings_module: "switchyard_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

#[doc(hidden)]
pub mod health_bindings {
    wit_bindgen::generate!({
        world: "health-plugin",
        path: "wit/policy@0.3.0",
        pub_export_macro: true,
        export_macro_name: "__export_health_bindings",
        default_bindings_module: "switchyard_sdk::health_bindings",
        with: {
            "switchyard:policy/types@0.3.0": crate::bindings::switchyard::policy::types,
            "switchyard:policy/host@0.3.0": crate::bindings::switchyard::policy::host,
            "switchyard:policy/shared@0.3.0": crate::bindings::switchyard::policy::shared,
        },
    });
}

#[doc(hidden)]
pub mod breaker_bindings {
    wit_bindgen::generate!({
        world: "breaker-plugin",
        path: "wit/policy@0.3.0",
        pub_export_macro: true,
        export_macro_name: "__export_breaker_bindings",
        default_bindings_module: "switchyard_sdk::breaker_bindings",
        with: {
            "switchyard:policy/types@0.3.0": crate::bindings::switchyard::policy::types,
            "switchyard:policy/host@0.3.0": crate::bindings::switchyard::policy::host,
            "switchyard:policy/shared@0.3.0": crate::bindings::switchyard::policy::shared,
        },
    });
}

/// Everything a plugin usually needs, including `alloc`'s collections.
pub mod prelude {
    pub use crate::policy::{
        BreakerUpdate, CircuitBreaker, ErrorKind, HealthCheck, Outcome, ProbeResult, Verdict,
    };
    pub use crate::{
        Attribute, AttributeKey, AttributeValue, BackendInfo, BackendLoad, BreakerState,
        Candidates, Config, Decision, Header, Health, Interest, IpAddress, Method, PrefixBlocks,
        Request, Router, export_breaker, export_health_check, export_router, host, shared,
    };
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::collections::BTreeMap;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
}

use alloc::string::String;
use alloc::vec::Vec;

/// A routing policy: picks the backends for each request of one route.
///
/// The host creates one router per route binding and worker thread, calls
/// [`Router::init`] with the route's config, then [`Router::set_backends`],
/// then [`Router::route`] for every request. State kept in `self` is per
/// instance; counts that must agree across threads or replicas come from the
/// host in [`BackendLoad`].
pub trait Router: Sized + 'static {
    /// Builds the router from the route's plugin config. Runs at load and
    /// whenever the config changes. An `Err` makes the host refuse the plugin
    /// with this message and keep the last good version serving.
    fn init(route: &str, config: &Config) -> Result<Self, String>;

    /// The request attributes [`Router::route`] needs. Build the list with
    /// an [`Interest`] in `init`, keep the [`AttributeKey`]s it hands out,
    /// and read each value in `route` with [`Request::get`]. Asked once
    /// after `init`. Default: none, so requests carry only method and
    /// client address.
    fn interest(&self) -> Vec<Attribute> {
        Vec::new()
    }

    /// The pool's static facts: names, weights, labels. Called after `init`
    /// and whenever the pool changes. Default: ignored.
    fn set_backends(&mut self, backends: &[BackendInfo]) {
        let _ = backends;
    }

    /// Decides where one request goes: an ordered list of candidates
    /// (primary first, then fallbacks), or a direct reply. `backends` holds
    /// every backend of the pool, healthy or not, by id.
    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision;
}

/// Exports a [`Router`] implementation as the plugin's router.
///
/// On `wasm32` this generates the component's exports; natively it only
/// checks that the type implements [`Router`], so tests build unchanged.
#[macro_export]
macro_rules! export_router {
    ($router:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static ROUTER: $crate::glue::Slot<$router> = $crate::glue::Slot::new();
            struct Exports;
            impl $crate::glue::RouterGuest for Exports {
                fn init(
                    route: $crate::glue::String,
                    config: $crate::glue::Vec<($crate::glue::String, $crate::glue::String)>,
                ) -> ::core::result::Result<
                    $crate::glue::Vec<$crate::Attribute>,
                    $crate::glue::String,
                > {
                    $crate::glue::init(&ROUTER, &route, config)
                }
                fn set_backends(backends: $crate::glue::Vec<$crate::BackendInfo>) {
                    $crate::glue::set_backends(&ROUTER, &backends)
                }
                fn route(
                    request: $crate::glue::Facts,
                    loads: $crate::glue::Vec<u32>,
                ) -> $crate::glue::Choice {
                    $crate::glue::route(&ROUTER, request, &loads)
                }
                fn detailed_decision() -> $crate::glue::WitDecision {
                    $crate::glue::decision(&ROUTER)
                }
            }
    $crate::bindings::__export_router_bindings!(Exports with_types_in $crate::bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            fn assert_router<R: $crate::Router>() {}
            assert_router::<$router>();
        };
    };
}
