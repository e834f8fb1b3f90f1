//! The plugin runtime: one wasmtime engine, components compiled once and
//! cached on disk by content hash, matched to one of the interface versions
//! this host speaks, and run with a deadline and a memory limit per call.

mod bindings;
mod cache;
mod decision;
mod epoch;
mod error;
mod host_api;
mod interest;
mod limits;
mod policy;
mod router;
mod stats;

pub use bindings::{INTERFACE_PACKAGE, VERSION_SECTION, Version, wit};
pub use decision::{Candidates, Choice, MAX_REJECT_BODY, ask, check};
pub use epoch::ticks as epoch_ticks;
pub use error::{PluginError, RuntimeError};
pub use host_api::HostState;
pub use limits::{MAX_PLUGIN_BYTES, MAX_TABLE_ELEMENTS};
use limits::{new_store, read_plugin_file};
pub use policy::{
    BreakerInstance, BreakerPolicy, HealthInstance, HealthPolicy, Policy, PolicySpec,
};
pub use router::{
    Answer, CallFailure, Interest, LOAD_WORDS, RouterInstance, RouterPlugin, RouterSpec,
};
pub use stats::{CallStats, CallTimer, LastError};

use crate::shared::SharedStore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

/// A component compiled for this engine, with its identity.
pub struct LoadedComponent {
    pub file: PathBuf,
    /// Hex SHA-256 of the `.wasm` bytes.
    pub hash: String,
    pub loaded_at: std::time::SystemTime,
    /// Whether it came from the on-disk cache rather than a fresh compile.
    pub from_cache: bool,
    /// The interface version its SDK stamped in it, if any.
    pub stamp: Option<String>,
    pub component: Component,
}

/// The engine, the linker with the host's imports, and the compile cache.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<cache::CompileCache>,
    /// Components by content hash, so routes sharing a plugin compile once.
    loaded: Mutex<HashMap<String, Arc<LoadedComponent>>>,
    /// The store behind the plugins' `shared` interface.
    shared: Arc<SharedStore>,
}

// === impl PluginRuntime ===

impl PluginRuntime {
    /// Creates the engine and starts its epoch ticker. `cache_dir` holds
    /// compiled components; `None` compiles every time.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<PluginRuntime>, RuntimeError> {
        PluginRuntime::with_deadlines(cache_dir, true)
    }

    /// Like [`PluginRuntime::new`]; with `deadlines` off, compiled code has
    /// no epoch checks and calls run unbounded. Only for measuring what the
    /// deadline costs: the proxy always runs with deadlines.
    pub fn with_deadlines(
        cache_dir: Option<PathBuf>,
        deadlines: bool,
    ) -> Result<Arc<PluginRuntime>, RuntimeError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(deadlines);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        bindings::add_to_linker(&mut linker)?;
        epoch::register(&engine);
        Ok(Arc::new(PluginRuntime {
            engine,
            linker,
            cache: cache_dir.as_deref().and_then(cache::CompileCache::open),
            loaded: Mutex::new(HashMap::new()),
            shared: SharedStore::in_process(),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The store behind the plugins' `shared` interface; in process until
    /// a config names Redis.
    pub fn shared(&self) -> &Arc<SharedStore> {
        &self.shared
    }

    /// Converts a call deadline into epoch ticks, rounding up, plus one tick
    /// because the current tick may be about to end.
    pub fn deadline_ticks(deadline: Duration) -> u64 {
        deadline.as_nanos().div_ceil(epoch::EPOCH_TICK.as_nanos()) as u64 + 1
    }

    /// Reads and compiles `file` (or takes it from the cache), and finds the
    /// interface version at which it exports `wanted` (an interface of this
    /// package), one this host speaks.
    pub fn load(
        &self,
        file: &Path,
        wanted: &str,
    ) -> Result<(Arc<LoadedComponent>, Version), PluginError> {
        let bytes = read_plugin_file(file).map_err(|source| PluginError::Read {
            file: file.into(),
            source,
        })?;
        let hash = hex(&Sha256::digest(&bytes));
        let known = self.loaded_lock().get(&hash).cloned();
        let loaded = match known {
            Some(l) => l,
            None => {
                let (component, from_cache) = self.compile(file, &bytes, &hash)?;
                let loaded = Arc::new(LoadedComponent {
                    file: file.into(),
                    hash: hash.clone(),
                    loaded_at: std::time::SystemTime::now(),
                    from_cache,
                    stamp: bindings::stamped_version(&bytes),
                    component,
                });
                self.loaded_lock().insert(hash, loaded.clone());
                loaded
            }
        };
        let version = self.check_interface(file, &loaded, wanted)?;
        Ok((loaded, version))
    }

    /// Links `component` against the host's imports of `version`, ready to
    /// instantiate; errors name `file` and the version.
    fn pre_instantiate(
        &self,
        file: &Path,
        component: &Component,
        version: Version,
    ) -> Result<wasmtime::component::InstancePre<HostState>, PluginError> {
        self.linker
            .instantiate_pre(component)
            .map_err(|e| shape_error(file, version, &e))
    }

    /// Forgets compiled components nothing uses any more (a plugin version
    /// replaced by a reload), so loading version after version does not
    /// grow memory.
    pub fn forget_unused(&self) {
        self.loaded_lock().retain(|_, c| Arc::strong_count(c) > 1);
    }

    /// Compiled components held, for tests and the admin API.
    pub fn loaded_count(&self) -> usize {
        self.loaded_lock().len()
    }

    fn loaded_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LoadedComponent>>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile(
        &self,
        file: &Path,
        bytes: &[u8],
        hash: &str,
    ) -> Result<(Component, bool), PluginError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::Invalid {
                file: file.into(),
                reason: "not a WebAssembly file (no `\\0asm` header)".into(),
            });
        }
        if bytes.len() >= 8 && bytes[4..8] == [1, 0, 0, 0] {
            return Err(PluginError::CoreModule { file: file.into() });
        }
        if let Some(cache) = &self.cache
            && let Some(component) = cache.load(&self.engine, hash)
        {
            return Ok((component, true));
        }
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(|e| PluginError::Invalid {
            file: file.into(),
            reason: format!("{e:#}"),
        })?;
        tracing::debug!(file = %file.display(), elapsed = ?started.elapsed(), "compiled plugin");
        if let Some(cache) = &self.cache
            && let Err(e) = cache.store(hash, &component)
        {
            tracing::warn!("cannot cache compiled plugin: {e}");
        }
        Ok((component, false))
    }

    /// Finds the version of the component's `wanted` export and checks its
    /// imports against the same version, so a mismatch is reported with
    /// both versions instead of a link error.
    fn check_interface(
        &self,
        file: &Path,
        loaded: &LoadedComponent,
        wanted: &str,
    ) -> Result<Version, PluginError> {
        let ty = loaded.component.component_type();
        let prefix = format!("{INTERFACE_PACKAGE}/{wanted}@");
        let exports: Vec<&str> = ty.exports(&self.engine).map(|(n, _)| n).collect();
        let Some(export) = exports.iter().find(|e| e.starts_with(&prefix)) else {
            return Err(PluginError::WrongWorld {
                file: file.into(),
                wanted: format!("{prefix}{}", Version::NEWEST.as_str()),
                found: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
            });
        };
        let found = &export[prefix.len()..];
        let Some(version) = Version::parse(found) else {
            return Err(PluginError::Version {
                file: file.into(),
                found: found.into(),
                export: export.to_string(),
            });
        };
        // Both speak a version this host knows, but not the same one: the
        // component mixes SDKs, and neither can be trusted.
        if let Some(stamp) = &loaded.stamp
            && stamp != found
        {
            return Err(PluginError::StampMismatch {
                file: file.into(),
                stamped: stamp.clone(),
                export: export.to_string(),
            });
        }
        let ours = |name: &str| format!("{INTERFACE_PACKAGE}/{name}@{}", version.as_str());
        let (host_import, types_import, shared_import) =
            (ours("host"), ours("types"), ours("shared"));
        for (import, _) in ty.imports(&self.engine) {
            if import == host_import || import == types_import || import == shared_import {
                continue;
            }
            if import.starts_with("wasi:") {
                return Err(PluginError::WasiImport {
                    file: file.into(),
                    import: import.into(),
                });
            }
            if let Some(other) = import
                .strip_prefix(INTERFACE_PACKAGE)
                .and_then(|rest| rest.split_once('@'))
                .map(|(_, v)| v)
                .filter(|v| *v != version.as_str())
            {
                return Err(PluginError::Version {
                    file: file.into(),
                    found: other.into(),
                    export: import.into(),
                });
            }
            return Err(PluginError::UnknownImport {
                file: file.into(),
                import: import.into(),
            });
        }
        Ok(version)
    }
}

/// A failed instantiation of `file`.
fn instantiate_error(file: &Path, e: &wasmtime::Error) -> PluginError {
    PluginError::Instantiate {
        file: file.into(),
        reason: format!("{e:#}"),
    }
}

/// A component whose exports name a version this host speaks but whose
/// types do not link against it: built from an edited or unreleased WIT.
fn shape_error(file: &Path, version: Version, e: &wasmtime::Error) -> PluginError {
    PluginError::Shape {
        file: file.into(),
        version,
        reason: format!("{e:#}"),
    }
}

/// File name of a plugin, as logs and metrics show it.
fn file_name(file: &Path) -> Arc<str> {
    file.file_name()
        .map_or_else(|| "plugin".into(), |n| n.to_string_lossy().into())
}

/// Maps a failed call to why it failed.
fn call_failure(e: &wasmtime::Error) -> CallFailure {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => CallFailure::Deadline,
        _ => CallFailure::Trap(format!("{e:#}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
