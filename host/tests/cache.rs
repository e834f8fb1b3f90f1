//! The compile cache: entries are authenticated before they are loaded as
//! native code, and plugin versions nothing uses are forgotten.

use std::path::{Path, PathBuf};
use switchyard::plugin::PluginRuntime;

fn plugin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(name);
    assert!(path.exists(), "run ./scripts/build-plugins.sh");
    path
}

/// `bytes` with a custom section appended: the same component under a new
/// content hash.
fn variant(bytes: &[u8], n: u32) -> Vec<u8> {
    let name = b"pad";
    let payload = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

#[test]
fn a_tampered_or_foreign_cache_entry_is_recompiled_not_loaded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let file = dir.path().join("rr.wasm");
    std::fs::copy(plugin("round-robin.wasm"), &file).expect("copy");
    let first = PluginRuntime::new(Some(cache.clone())).expect("runtime");
    assert!(!first.load(&file, "router").expect("load").0.from_cache);
    let again = PluginRuntime::new(Some(cache.clone())).expect("runtime");
    assert!(
        again.load(&file, "router").expect("load").0.from_cache,
        "an authentic entry is used"
    );

    let entry = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a cache entry");
    // Flip one byte of the compiled code.
    let mut bytes = std::fs::read(&entry).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).expect("write");
    let tampered = PluginRuntime::new(Some(cache.clone())).expect("runtime");
    assert!(
        !tampered.load(&file, "router").expect("load").0.from_cache,
        "a tampered entry is not loaded"
    );

    // An entry made by another install (another key) is refused as well.
    let other = dir.path().join("other");
    let foreign = PluginRuntime::new(Some(other.clone())).expect("runtime");
    foreign.load(&file, "router").expect("load");
    for e in std::fs::read_dir(&other).expect("dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "cwasm") {
            std::fs::copy(&p, cache.join(p.file_name().expect("name"))).expect("plant");
        }
    }
    let planted = PluginRuntime::new(Some(cache)).expect("runtime");
    assert!(
        !planted.load(&file, "router").expect("load").0.from_cache,
        "a foreign entry is not loaded"
    );
}

#[test]
fn versions_nothing_uses_are_forgotten() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = std::fs::read(plugin("round-robin.wasm")).expect("read");
    let runtime = PluginRuntime::new(None).expect("runtime");
    let file = dir.path().join("rr.wasm");
    let mut kept = None;
    for n in 0..30 {
        std::fs::write(&file, variant(&bytes, n)).expect("write");
        let loaded = runtime
            .load(&file, "router")
            .expect("a padded component still loads");
        // The route holds the newest version; the one before is let go.
        kept = Some(loaded);
        runtime.forget_unused();
    }
    assert_eq!(runtime.loaded_count(), 1, "only the version in use is held");
    drop(kept);
    runtime.forget_unused();
    assert_eq!(runtime.loaded_count(), 0);
}
