//! `switchyard:policy@0.2.0`: its own bindings, and conversions between its
//! types and the host's (the newest version's). Plugins built against it
//! keep loading unchanged.

mod router {
    wasmtime::component::bindgen!({
        world: "router-plugin",
        path: "../wit/policy@0.2.0",
    });
}

mod health {
    wasmtime::component::bindgen!({
        world: "health-plugin",
        path: "../wit/policy@0.2.0",
        with: {
            "switchyard:policy/types": super::router::switchyard::policy::types,
            "switchyard:policy/host": super::router::switchyard::policy::host,
            "switchyard:policy/shared": super::router::switchyard::policy::shared,
        },
    });
}

mod breaker {
    wasmtime::component::bindgen!({
        world: "breaker-plugin",
        path: "../wit/policy@0.2.0",
        with: {
            "switchyard:policy/types": super::router::switchyard::policy::types,
            "switchyard:policy/host": super::router::switchyard::policy::host,
            "switchyard:policy/shared": super::router::switchyard::policy::shared,
        },
    });
}

use super::super::HostState;
use super::wit as new;
use router::switchyard::policy::types as old;
use router::switchyard::policy::{host, shared};
use wasmtime::component::{HasSelf, Linker};

pub use breaker::{BreakerPlugin, BreakerPluginPre};
pub use health::{HealthPlugin, HealthPluginPre};
pub use router::{RouterPlugin, RouterPluginPre};

/// Adds this version's imports (`host`, `shared`) to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    RouterPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

impl old::Host for HostState {}

super::host_imports!(
    host,
    shared,
    host::Level,
    old::AttributeValue,
    |v| match v {
        new::AttributeValue::Value(v) => old::AttributeValue::Value(v),
        new::AttributeValue::Absent => old::AttributeValue::Absent,
        new::AttributeValue::NotSeen => old::AttributeValue::NotSeen,
    }
);

// === conversions ===

super::older::shared_conversions!();

impl From<old::Attribute> for new::Attribute {
    fn from(a: old::Attribute) -> Self {
        match a {
            old::Attribute::Header(h) => new::Attribute::Header(h),
            old::Attribute::Path => new::Attribute::Path,
            old::Attribute::Query => new::Attribute::Query,
            old::Attribute::Cookie(c) => new::Attribute::Cookie(c),
            old::Attribute::Host => new::Attribute::Host,
            old::Attribute::JsonBody(f) => new::Attribute::JsonBody(f),
            old::Attribute::BodySize => new::Attribute::BodySize,
        }
    }
}
