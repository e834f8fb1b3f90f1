//! On-disk cache of compiled components, keyed by the `.wasm` content hash
//! and the engine's compatibility hash, so a restart with unchanged plugins
//! skips compilation.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

fn entry(engine: &Engine, dir: &Path, hash: &str) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{hash}-{:016x}.cwasm", h.finish()))
}

/// Loads the compiled form of content `hash`, if cached and usable.
pub fn load(engine: &Engine, dir: &Path, hash: &str) -> Option<Component> {
    let path = entry(engine, dir, hash);
    if !path.exists() {
        return None;
    }
    // SAFETY: wasmtime requires the file to be a trusted artifact of
    // `Component::serialize` from a compatible engine. The cache directory is
    // the proxy's own; the file name binds the source content hash and the
    // engine's compatibility hash, it is written atomically by `store`, and
    // wasmtime still checks its header and version before use.
    #[allow(unsafe_code)]
    let result = unsafe { Component::deserialize_file(engine, &path) };
    match result {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e}");
            None
        }
    }
}

/// Writes the compiled form of content `hash` atomically.
pub fn store(dir: &Path, hash: &str, component: &Component) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = entry(component.engine(), dir, hash);
    // Unique per process and call: loads may race on the same entry.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{seq}", std::process::id()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
