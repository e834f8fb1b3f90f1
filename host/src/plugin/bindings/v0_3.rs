//! `switchyard:policy@0.3.0`, the newest version: its types are the host's
//! own (re-exported as `plugin::wit`), so calls need no conversion.

mod router {
    wasmtime::component::bindgen!({
        world: "router-plugin",
        path: "../wit/policy@0.3.0",
        additional_derives: [PartialEq],
    });
}

mod health {
    wasmtime::component::bindgen!({
        world: "health-plugin",
        path: "../wit/policy@0.3.0",
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
        path: "../wit/policy@0.3.0",
        with: {
            "switchyard:policy/types": super::router::switchyard::policy::types,
            "switchyard:policy/host": super::router::switchyard::policy::host,
            "switchyard:policy/shared": super::router::switchyard::policy::shared,
        },
    });
}

use super::super::HostState;
use router::switchyard::policy::{host, shared};
use wasmtime::component::{HasSelf, Linker};

pub use breaker::{BreakerPlugin, BreakerPluginPre};
pub use health::{HealthPlugin, HealthPluginPre};
pub use host::Level;
pub use router::switchyard::policy::types;
pub use router::{RouterPlugin, RouterPluginPre};

/// Adds this version's imports (`host`, `shared`) to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    RouterPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

impl types::Host for HostState {}

super::host_imports!(host, shared, Level, types::AttributeValue, |v| v);
