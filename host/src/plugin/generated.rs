//! Bindings generated from the WIT package; only what the host needs is
//! re-exported.

mod bindings {
    wasmtime::component::bindgen!({
        world: "router-plugin",
        path: "../wit/policy@0.1.0",
        additional_derives: [PartialEq],
    });
}

/// The interface's types as the host sees them.
pub mod wit {
    pub use super::bindings::switchyard::policy::host::Level;
    pub use super::bindings::switchyard::policy::types::*;
}

pub use bindings::switchyard::policy::host::Host;
pub use bindings::{RouterPlugin, RouterPluginPre};

use super::HostState;
use wasmtime::component::{HasSelf, Linker};

/// Adds the host's imports (`switchyard:policy/host`) to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    RouterPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
