//! What the proxy offers a plugin: logging, a monotonic clock, randomness and
//! plugin metrics. Natively (in unit tests) logs go to stderr, the clock is
//! the process clock, and metrics are dropped.

/// Log level of a plugin log line.
pub use crate::bindings::switchyard::policy::host::Level;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::switchyard::policy::host as wit;

    pub fn log(level: Level, message: &str) {
        wit::log(level, message)
    }
    pub fn now() -> u64 {
        wit::now()
    }
    pub fn random() -> u64 {
        wit::random()
    }
    pub fn counter_add(name: &str, value: u64) {
        wit::counter_add(name, value)
    }
    pub fn gauge_set(name: &str, value: f64) {
        wit::gauge_set(name, value)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    pub fn log(level: Level, message: &str) {
        eprintln!("[plugin {level:?}] {message}");
    }
    pub fn now() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
    pub fn random() -> u64 {
        // xorshift64*: deterministic across runs, which tests want.
        static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
        let mut x = STATE.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        STATE.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn counter_add(_name: &str, _value: u64) {}
    pub fn gauge_set(_name: &str, _value: f64) {}
}

/// Writes `message` to the proxy's log, tagged with plugin and route.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Monotonic time in nanoseconds since an arbitrary start.
pub fn now() -> u64 {
    imp::now()
}

/// A random number.
pub fn random() -> u64 {
    imp::random()
}

/// Adds `value` to the plugin counter `name`.
pub fn counter_add(name: &str, value: u64) {
    imp::counter_add(name, value)
}

/// Sets the plugin gauge `name`.
pub fn gauge_set(name: &str, value: f64) {
    imp::gauge_set(name, value)
}
