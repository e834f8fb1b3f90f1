//! Why a plugin could not be loaded, or the runtime not set up: each error
//! names the file and the cause, and the interface versions involved.

use super::{INTERFACE_PACKAGE, Version};
use std::path::PathBuf;

/// A plugin that could not be loaded; each names the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{file}: is a core WebAssembly module, not a component; build it for wasm32-wasip2 with the Switchyard SDK"
    )]
    CoreModule { file: PathBuf },
    #[error("{file}: not a valid WebAssembly component: {reason}")]
    Invalid { file: PathBuf, reason: String },
    #[error(
        "{file}: built for {INTERFACE_PACKAGE}@{found}, but this host speaks {INTERFACE_PACKAGE} {} (`{export}`)",
        Version::range()
    )]
    Version {
        file: PathBuf,
        found: String,
        export: String,
    },
    #[error(
        "{file}: its SDK stamped {INTERFACE_PACKAGE}@{stamped}, but it exports `{export}`; rebuild it with one SDK"
    )]
    StampMismatch {
        file: PathBuf,
        stamped: String,
        export: String,
    },
    #[error("{file}: does not export `{wanted}`; it exports: {found}")]
    WrongWorld {
        file: PathBuf,
        wanted: String,
        found: String,
    },
    #[error(
        "{file}: imports `{import}`, but plugins get no WASI capabilities; build the plugin `no_std` with the Switchyard SDK"
    )]
    WasiImport { file: PathBuf, import: String },
    #[error("{file}: imports `{import}`, which this host does not provide")]
    UnknownImport { file: PathBuf, import: String },
    #[error(
        "{file}: its {version} does not match the released one ({reason}); it was built from an edited or unreleased WIT: rebuild it with a released SDK"
    )]
    Shape {
        file: PathBuf,
        version: Version,
        reason: String,
    },
    #[error("{file}: cannot instantiate: {reason}")]
    Instantiate { file: PathBuf, reason: String },
    /// `owner` is `route `name`` or `pool `name``.
    #[error("{file}: init for {owner} failed: {message}")]
    Init {
        file: PathBuf,
        owner: String,
        message: String,
    },
}

/// The Wasm engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Wasm engine: {0}")]
pub struct RuntimeError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl From<wasmtime::Error> for RuntimeError {
    fn from(e: wasmtime::Error) -> Self {
        RuntimeError(e.into())
    }
}
