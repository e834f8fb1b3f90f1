//! On-disk cache of compiled components, keyed by the `.wasm` content hash
//! and the engine's compatibility hash, so a restart with unchanged plugins
//! skips compilation.
//!
//! A compiled entry is native code that wasmtime loads without checking it,
//! so nobody else may be able to plant one: every entry carries an
//! HMAC-SHA256, under a key only this install has (`.key` in the cache
//! directory, created mode 0600), over the source hash and the compiled
//! bytes. An entry whose tag does not verify is deleted, logged and
//! recompiled from the `.wasm`. The directory is capped in size, oldest
//! entries going first.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bytes of compiled entries kept; the oldest go beyond it.
pub const MAX_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest entry read back.
const MAX_ENTRY_BYTES: u64 = 256 * 1024 * 1024;
const TAG_LEN: usize = 32;

/// The cache directory and its authentication key.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl CompileCache {
    /// Opens (creating) `dir` and its key; `None`, logged, if either cannot
    /// be made, and plugins are then compiled every time.
    pub fn open(dir: &Path) -> Option<CompileCache> {
        match CompileCache::try_open(dir) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "compile cache unavailable, plugins compile at every load: {e}");
                None
            }
        }
    }

    fn try_open(dir: &Path) -> std::io::Result<CompileCache> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join(".key");
        let mut key = [0u8; 32];
        match std::fs::read(&key_path) {
            Ok(bytes) if bytes.len() == key.len() => key.copy_from_slice(&bytes),
            _ => {
                key = fresh_key();
                let tmp = dir.join(format!(".key.tmp{}", std::process::id()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&key)?;
                drop(f);
                std::fs::rename(&tmp, &key_path)?;
                // Another process may have won the race: use what is there.
                let bytes = std::fs::read(&key_path)?;
                if bytes.len() == key.len() {
                    key.copy_from_slice(&bytes);
                }
            }
        }
        Ok(CompileCache {
            dir: dir.into(),
            key,
        })
    }

    fn entry(&self, engine: &Engine, hash: &str) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir.join(format!("{hash}-{:016x}.cwasm", h.finish()))
    }

    fn tag(&self, hash: &str, compiled: &[u8]) -> [u8; TAG_LEN] {
        hmac_sha256(&self.key, &[hash.as_bytes(), compiled])
    }

    /// Loads the compiled form of content `hash`, if cached, authentic and
    /// usable.
    pub fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        use std::io::Read;
        let path = self.entry(engine, hash);
        let file = std::fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_ENTRY_BYTES).read_to_end(&mut bytes).ok()?;
        let authentic = bytes.len() > TAG_LEN && {
            let (tag, compiled) = bytes.split_at(TAG_LEN);
            same(tag, &self.tag(hash, compiled))
        };
        if !authentic {
            metrics::counter!("switchyard_plugin_cache_rejected_total").increment(1);
            tracing::warn!(path = %path.display(),
                "compile cache entry failed authentication (not written by this install, or altered); deleting it and compiling the plugin again");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // SAFETY: wasmtime requires the bytes to be a trusted artifact of
        // `Component::serialize` from a compatible engine. They are: the tag
        // just verified proves this install wrote them for this source hash,
        // the file name binds the engine's compatibility hash, and wasmtime
        // still checks the header and version before use.
        #[allow(unsafe_code)]
        let result = unsafe { Component::deserialize(engine, &bytes[TAG_LEN..]) };
        match result {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e}");
                None
            }
        }
    }

    /// Writes the compiled form of content `hash` atomically, with its tag,
    /// then trims the directory to [`MAX_CACHE_BYTES`].
    pub fn store(&self, hash: &str, component: &Component) -> Result<(), CacheWriteError> {
        let path = self.entry(component.engine(), hash);
        // Unique per process and call: loads may race on the same entry.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{seq}", std::process::id()));
        let compiled = component
            .serialize()
            .map_err(|e| CacheWriteError::Serialize(e.into()))?;
        let mut bytes = Vec::with_capacity(TAG_LEN + compiled.len());
        bytes.extend_from_slice(&self.tag(hash, &compiled));
        bytes.extend_from_slice(&compiled);
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        prune(&self.dir, MAX_CACHE_BYTES);
        Ok(())
    }
}

/// Why a compiled component could not be cached (it still serves).
#[derive(Debug, thiserror::Error)]
pub enum CacheWriteError {
    #[error("cannot serialize the compiled component: {0}")]
    Serialize(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot write the cache entry: {0}")]
    Write(#[from] std::io::Error),
}

/// Deletes the oldest `.cwasm` entries of `dir` until they total at most
/// `max` bytes.
pub fn prune(dir: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// 32 random bytes from the OS.
fn fresh_key() -> [u8; 32] {
    use std::io::Read;
    let mut key = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if read.is_err() {
        // No /dev/urandom: a key from the clock and the process, still
        // unknown to anyone who cannot read the key file.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        key = Sha256::digest(seed.as_bytes()).into();
    }
    key
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2 uses a 4-byte key; padded with zeros it is
        // the same HMAC, since keys shorter than a block are zero-padded.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let tag = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pruning_drops_the_oldest_entries_first() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5u8 {
            std::fs::write(dir.path().join(format!("{i}.cwasm")), vec![i; 100]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        std::fs::write(dir.path().join(".key"), [0u8; 32]).unwrap();
        prune(dir.path(), 250);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".key", "3.cwasm", "4.cwasm"]);
    }
}
