//! The plugin runtime: one wasmtime engine, components compiled once and
//! cached on disk by content hash, matched to one of the interface versions
//! this host speaks, and run with a deadline and a memory limit per call.

mod bindings;
mod cache;
mod host_api;
mod policy;
mod router;
mod stats;

pub use bindings::{INTERFACE_PACKAGE, VERSION_SECTION, Version, wit};
pub use host_api::HostState;
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

/// How often the epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

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
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<PluginRuntime>> {
        PluginRuntime::with_deadlines(cache_dir, true)
    }

    /// Like [`PluginRuntime::new`]; with `deadlines` off, compiled code has
    /// no epoch checks and calls run unbounded. Only for measuring what the
    /// deadline costs: the proxy always runs with deadlines.
    pub fn with_deadlines(
        cache_dir: Option<PathBuf>,
        deadlines: bool,
    ) -> anyhow::Result<Arc<PluginRuntime>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(deadlines);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        bindings::add_to_linker(&mut linker)?;
        spawn_epoch_ticker(&engine);
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
        deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1
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

/// A store for one plugin instance: host state tagged with the plugin and
/// its owner (route or pool), the instance's memory cap, and a generous
/// deadline for start-up (init may build tables).
///
/// Time spent waiting on the shared store is not the plugin's: when the
/// deadline passes during a call that waited, the call gets that much more.
fn new_store(
    engine: &Engine,
    shared: Arc<SharedStore>,
    access: crate::shared::Access,
    name: Arc<str>,
    owner: Arc<str>,
    memory_mb: u32,
    deadline_ticks: u64,
) -> wasmtime::Store<HostState> {
    let limits = store_limits(memory_mb);
    let mut store =
        wasmtime::Store::new(engine, HostState::new(name, owner, limits, shared, access));
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|mut ctx| {
        let credit = ctx.data_mut().take_credit();
        if credit.is_zero() {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(wasmtime::UpdateDeadline::Continue(
            PluginRuntime::deadline_ticks(credit),
        ))
    });
    store.set_epoch_deadline(
        deadline_ticks.max(PluginRuntime::deadline_ticks(Duration::from_secs(1))),
    );
    store
}

/// Largest plugin file accepted; real components are well under 1 MiB.
pub const MAX_PLUGIN_BYTES: u64 = 32 * 1024 * 1024;

/// Reads a plugin file: a regular file (links followed) of at most
/// [`MAX_PLUGIN_BYTES`], read with that bound, so a FIFO, a device or a
/// link to `/dev/zero` in the plugin directory is refused, never read.
fn read_plugin_file(file: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(file)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (plugins must be .wasm files, not devices, pipes or directories)",
        ));
    }
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_PLUGIN_BYTES >> 20),
        )
    };
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(file)?
        .take(MAX_PLUGIN_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Elements one Wasm table may hold: Rust components need a few hundred;
/// unbounded, a plugin could grow tables to gigabytes outside its memory
/// cap.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;

/// What one plugin instance may hold: `memory_mb` of linear memory, and
/// few, bounded tables, memories and instances.
fn store_limits(memory_mb: u32) -> wasmtime::StoreLimits {
    wasmtime::StoreLimitsBuilder::new()
        .memory_size(memory_mb as usize * 1024 * 1024)
        .table_elements(MAX_TABLE_ELEMENTS)
        .instances(4)
        .tables(4)
        .memories(2)
        .build()
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

/// Advances the engine's epoch every tick so running calls meet their
/// deadline; stops when the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("switchyard-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the plugin epoch ticker, deadlines will not fire: {e}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn tables_and_memories_are_bounded() {
        let mut limits = store_limits(16);
        assert!(limits.table_growing(100, 1_000, None).unwrap());
        assert!(
            !limits
                .table_growing(100, MAX_TABLE_ELEMENTS + 1, None)
                .unwrap()
        );
        assert!(!limits.table_growing(0, usize::MAX, None).unwrap());
        assert!(limits.memory_growing(0, 16 << 20, None).unwrap());
        assert!(!limits.memory_growing(0, (16 << 20) + 65536, None).unwrap());
    }
}
