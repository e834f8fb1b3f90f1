//! The built-in router: least outstanding requests, then lowest latency.

use super::Pool;
use std::cell::Cell;

thread_local! {
    /// Where the built-in router starts scanning, so ties rotate.
    static TURN: Cell<usize> = const { Cell::new(0) };
}

/// Candidates the built-in router returns: more than the default connect
/// attempts, so an unreachable backend or two still leave a choice.
pub const BUILTIN_CANDIDATES: usize = 4;

/// The built-in router: the usable backends with the fewest requests in
/// flight, then the lowest latency, best first; ties rotate. Used when a
/// route has no plugin, and when a plugin fails under `fail-open`. Picks the
/// best few in one pass, without allocating or sorting the pool.
pub fn least_outstanding(pool: &Pool) -> ([u32; BUILTIN_CANDIDATES], u8) {
    let mut best: [((u32, u32), u32); BUILTIN_CANDIDATES] =
        [((u32::MAX, u32::MAX), u32::MAX); BUILTIN_CANDIDATES];
    let mut len = 0usize;
    let n = pool.backends.len();
    if n == 0 {
        return ([0; BUILTIN_CANDIDATES], 0);
    }
    let start = TURN.with(|t| {
        let v = t.get();
        t.set(v.wrapping_add(1));
        v % n
    });
    let now = crate::clock::millis();
    for i in (0..n).map(|i| (start + i) % n) {
        let state = &pool.backends[i].state;
        if !state.is_usable() {
            continue;
        }
        // Insert into the sorted prefix; equal ranks keep scan order.
        let mut item = (state.load_rank(now), i as u32);
        for slot in best.iter_mut().take((len + 1).min(BUILTIN_CANDIDATES)) {
            if item.0 < slot.0 || slot.1 == u32::MAX {
                std::mem::swap(slot, &mut item);
            }
        }
        len = (len + 1).min(BUILTIN_CANDIDATES);
    }
    (best.map(|(_, id)| id), len as u8)
}
