//! Moving averages that decay with time, kept in atomics.

use crate::clock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Half-life of an average that takes no samples.
const EWMA_HALF_LIFE_MS: f64 = 2000.0;

/// `cell`'s average as it stands at `now_ms`: halved for every
/// [`EWMA_HALF_LIFE_MS`] since its last sample (as peak-EWMA decays), so
/// an idle backend's old figure fades and it is tried again.
pub fn decayed(cell: &AtomicU32, at: &AtomicU64, now_ms: u64) -> u32 {
    let value = cell.load(Relaxed);
    let age = now_ms.saturating_sub(at.load(Relaxed));
    if value == 0 || age < 50 {
        return value;
    }
    let factor = (-(age as f64) / EWMA_HALF_LIFE_MS).exp2();
    ((f64::from(value) * factor) as u32).max(1)
}

/// Moving average with weight 1/5 for the new sample, over the old average
/// as decayed to now.
pub fn update_ewma(cell: &AtomicU32, at: &AtomicU64, sample: u32) {
    update_ewma_at(cell, at, sample, clock::millis());
}

/// [`update_ewma`] at `now` (`clock::millis()`), for a caller that has
/// read the clock already.
pub fn update_ewma_at(cell: &AtomicU32, at: &AtomicU64, sample: u32, now: u64) {
    let old = decayed(cell, at, now);
    let new = if old == 0 {
        sample.max(1)
    } else {
        ((u64::from(old) * 4 + u64::from(sample)) / 5).max(1) as u32
    };
    cell.store(new, Relaxed);
    at.store(now, Relaxed);
}
