//! What a plugin may take: a store with a memory cap, bounded tables and
//! instances, a deadline for every call (waits on the shared store credited
//! within bounds); and plugin files read only when regular and small.

use super::{HostState, PluginRuntime};
use crate::shared::{Access, SharedStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Engine;

/// A store for one plugin instance: host state tagged with the plugin and
/// its owner (route or pool), the instance's memory cap, and a generous
/// deadline for start-up (init may build tables).
///
/// Time spent waiting on the shared store is not the plugin's: when the
/// deadline passes during a call that waited, the call gets that much more.
pub(super) fn new_store(
    engine: &Engine,
    shared: Arc<SharedStore>,
    access: Access,
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
        Ok(wasmtime::UpdateDeadline::Continue(super::epoch::deadline(
            PluginRuntime::deadline_ticks(credit),
        )))
    });
    store.set_epoch_deadline(super::epoch::deadline(
        deadline_ticks.max(PluginRuntime::deadline_ticks(Duration::from_secs(1))),
    ));
    store
}

/// Largest plugin file accepted; real components are well under 1 MiB.
pub const MAX_PLUGIN_BYTES: u64 = 32 * 1024 * 1024;

/// Reads a plugin file: a regular file (links followed) of at most
/// [`MAX_PLUGIN_BYTES`], read with that bound, so a FIFO, a device or a
/// link to `/dev/zero` in the plugin directory is refused, never read.
pub(super) fn read_plugin_file(file: &Path) -> std::io::Result<Vec<u8>> {
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
pub(super) fn store_limits(memory_mb: u32) -> wasmtime::StoreLimits {
    wasmtime::StoreLimitsBuilder::new()
        .memory_size(memory_mb as usize * 1024 * 1024)
        .table_elements(MAX_TABLE_ELEMENTS)
        .instances(4)
        .tables(4)
        .memories(2)
        .build()
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
