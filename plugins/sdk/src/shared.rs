//! State shared by every plugin of the proxy and, when the proxy's
//! `shared.store` is Redis, by all its replicas: counters with a time to
//! live and a small key/value map. Use it for what replicas must agree on,
//! such as a token budget.
//!
//! Every call can fail: with [`SharedError::Unavailable`] when the store
//! cannot be reached (the host reconnects by itself), and a policy must say
//! what it does then.
//!
//! In a router (which runs on the proxy's worker threads) no call waits on
//! Redis: reads answer from a local copy refreshed in the background (a key
//! read for the first time is `Unavailable` until its copy arrives), and
//! writes apply to that copy at once and reach Redis shortly after. Health
//! checks and breakers get Redis's own answer on every call.
//!
//! Natively (in unit tests) the store is a map in the
//! test's thread, and [`set_unavailable`] simulates an outage.

pub use crate::bindings::switchyard::policy::shared::SharedError;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::SharedError;
    use crate::bindings::switchyard::policy::shared as wit;
    use alloc::string::String;

    pub fn counter_add(key: &str, delta: i64, ttl_ms: u32) -> Result<i64, SharedError> {
        wit::counter_add(key, delta, ttl_ms)
    }
    pub fn counter_get(key: &str) -> Result<i64, SharedError> {
        wit::counter_get(key)
    }
    pub fn get(key: &str) -> Result<Option<String>, SharedError> {
        wit::get(key)
    }
    pub fn set(key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
        wit::set(key, value, ttl_ms)
    }
    pub fn wall_clock_ms() -> u64 {
        wit::wall_clock_ms()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::SharedError;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    thread_local! {
        static MAP: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
        static DOWN: Cell<bool> = const { Cell::new(false) };
        static CLOCK: Cell<Option<u64>> = const { Cell::new(None) };
    }

    fn up() -> Result<(), SharedError> {
        if DOWN.with(Cell::get) {
            return Err(SharedError::Unavailable("simulated outage".into()));
        }
        Ok(())
    }

    pub fn counter_add(key: &str, delta: i64, _ttl_ms: u32) -> Result<i64, SharedError> {
        up()?;
        MAP.with(|m| {
            let mut m = m.borrow_mut();
            let entry = m.entry(key.to_string()).or_insert_with(|| "0".into());
            let n: i64 = entry
                .parse()
                .map_err(|_| SharedError::Invalid(format!("`{key}` holds text")))?;
            *entry = (n + delta).to_string();
            Ok(n + delta)
        })
    }
    pub fn counter_get(key: &str) -> Result<i64, SharedError> {
        up()?;
        Ok(MAP.with(|m| {
            m.borrow()
                .get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }))
    }
    pub fn get(key: &str) -> Result<Option<String>, SharedError> {
        up()?;
        Ok(MAP.with(|m| m.borrow().get(key).cloned()))
    }
    pub fn set(key: &str, value: &str, _ttl_ms: u32) -> Result<(), SharedError> {
        up()?;
        MAP.with(|m| m.borrow_mut().insert(key.to_string(), value.to_string()));
        Ok(())
    }
    pub fn wall_clock_ms() -> u64 {
        CLOCK.with(Cell::get).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    }
    pub fn set_unavailable(down: bool) {
        DOWN.with(|d| d.set(down));
    }
    pub fn set_wall_clock_ms(ms: Option<u64>) {
        CLOCK.with(|c| c.set(ms));
    }
}

use alloc::string::String;

/// Adds `delta` to counter `key` and returns its new value. A new counter
/// expires `ttl_ms` after its creation (0: never); adding does not extend
/// it, so one key per time window makes a fixed-window counter.
pub fn counter_add(key: &str, delta: i64, ttl_ms: u32) -> Result<i64, SharedError> {
    imp::counter_add(key, delta, ttl_ms)
}

/// The counter's value; 0 when it does not exist.
pub fn counter_get(key: &str) -> Result<i64, SharedError> {
    imp::counter_get(key)
}

/// The value stored under `key`.
pub fn get(key: &str) -> Result<Option<String>, SharedError> {
    imp::get(key)
}

/// Stores `value` (at most 4 KiB) under `key` for `ttl_ms` (0: never expires).
pub fn set(key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
    imp::set(key, value, ttl_ms)
}

/// Wall-clock milliseconds since the Unix epoch, for time windows that
/// replicas must agree on.
pub fn wall_clock_ms() -> u64 {
    imp::wall_clock_ms()
}

/// Natively only: makes every call of this thread fail with `unavailable`
/// (or work again), to test what a policy does during an outage.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_unavailable(down: bool) {
    imp::set_unavailable(down)
}

/// Natively only: fixes [`wall_clock_ms`] for this thread (`None`: the
/// real clock), to test time windows.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_wall_clock_ms(ms: Option<u64>) {
    imp::set_wall_clock_ms(ms)
}
