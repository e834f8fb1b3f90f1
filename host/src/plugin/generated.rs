//! Bindings generated from the WIT package; only what the host needs is
//! re-exported. The three worlds share one set of types and one `host`
//! interface, generated with the router world.

mod bindings {
    wasmtime::component::bindgen!({
        world: "router-plugin",
        path: "../wit/policy@0.1.0",
        additional_derives: [PartialEq],
    });
}

mod health_bindings {
    wasmtime::component::bindgen!({
        world: "health-plugin",
        path: "../wit/policy@0.1.0",
        with: {
            "switchyard:policy/types": super::bindings::switchyard::policy::types,
            "switchyard:policy/host": super::bindings::switchyard::policy::host,
            "switchyard:policy/shared": super::bindings::switchyard::policy::shared,
        },
    });
}

mod breaker_bindings {
    wasmtime::component::bindgen!({
        world: "breaker-plugin",
        path: "../wit/policy@0.1.0",
        with: {
            "switchyard:policy/types": super::bindings::switchyard::policy::types,
            "switchyard:policy/host": super::bindings::switchyard::policy::host,
            "switchyard:policy/shared": super::bindings::switchyard::policy::shared,
        },
    });
}

/// The interface's types as the host sees them.
pub mod wit {
    pub use super::bindings::switchyard::policy::host::Level;
    pub use super::bindings::switchyard::policy::types::*;
}

pub use bindings::switchyard::policy::host::Host;
pub use bindings::switchyard::policy::shared as shared_wit;
pub use bindings::{RouterPlugin, RouterPluginPre};
pub use breaker_bindings::{BreakerPlugin, BreakerPluginPre};
pub use health_bindings::{HealthPlugin, HealthPluginPre};
pub use shared_wit::Host as SharedHost;

use super::HostState;
use wasmtime::component::{HasSelf, Linker};

/// Adds the host's imports (`switchyard:policy/host`) to `linker`; every
/// world imports the same interface.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    RouterPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
