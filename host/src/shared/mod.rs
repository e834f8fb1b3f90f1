//! The store behind the plugins' `shared` interface: counters with a time to
//! live and a small key/value map, in process (the default) or on Redis, so
//! that several proxy replicas agree on them.
//!
//! A Redis store never hangs a caller: each call waits at most the
//! configured timeout, and once Redis is unreachable every call fails at
//! once with `unavailable` for a second before the next connection attempt.
//! Plugins decide what a failure means for their policy; the host logs the
//! outage once, counts every failed call and reconnects by itself.

mod local;
mod mirror;
mod redis_store;
pub mod runs;

use crate::config::SharedConfig;
use local::LocalStore;
use mirror::Mirror;
use redis_store::RedisStore;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Longest key a plugin may use, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest value a plugin may store, in bytes.
pub const MAX_VALUE: usize = 4096;
/// Keys the in-process store holds at most.
const MAX_LOCAL_KEYS: usize = 65_536;
/// How long an unreachable Redis is left alone before the next attempt.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Why a shared-store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The store is unreachable or too slow; the call may succeed later.
    #[error("shared store unavailable: {0}")]
    Unavailable(String),
    /// The call itself is wrong (too long, wrong type, store full).
    #[error("shared store refused the call: {0}")]
    Invalid(String),
}

/// The proxy's shared store. Cheap to share; its backend is swapped when a
/// reloaded config names a different one.
pub struct SharedStore {
    current: RwLock<(SharedConfig, Arc<Backend>)>,
}

enum Backend {
    Local(LocalStore),
    Redis(Arc<RedisStore>, Mirror),
}

/// Whether a caller may wait for the store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Off the request path (pool plugins on the control thread): each call
    /// is a round trip, bounded by the store's timeout.
    Wait,
    /// On a worker thread (routers): calls are served from a local copy
    /// kept by a background thread, and never wait on the network.
    NoWait,
}

impl SharedStore {
    /// An in-process store.
    pub fn in_process() -> Arc<SharedStore> {
        Arc::new(SharedStore {
            current: RwLock::new((
                SharedConfig::default(),
                Arc::new(Backend::Local(LocalStore::default())),
            )),
        })
    }

    /// Switches to the store `config` names, if it differs from the current
    /// one. Redis is connected lazily, so an unreachable Redis does not keep
    /// a config from loading.
    pub fn configure(&self, config: &SharedConfig) -> Result<(), String> {
        if self.read().0 == *config {
            return Ok(());
        }
        let backend = match config.redis_url() {
            None => Backend::Local(LocalStore::default()),
            Some(url) => {
                let store = Arc::new(RedisStore::new(url, config)?);
                Backend::Redis(store.clone(), Mirror::new(store))
            }
        };
        tracing::info!(store = %config.describe(), "shared store configured");
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            (config.clone(), Arc::new(backend));
        Ok(())
    }

    /// The config of the store in use.
    pub fn config(&self) -> SharedConfig {
        self.read().0.clone()
    }

    /// What the store is, for `/status`: `memory` or the Redis address.
    pub fn describe(&self) -> String {
        self.read().0.describe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (SharedConfig, Arc<Backend>)> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn backend(&self) -> Arc<Backend> {
        self.read().1.clone()
    }

    /// Adds `delta` to counter `key`; a new counter expires `ttl_ms` after
    /// its creation (0: never). Returns the new value.
    pub fn counter_add(
        &self,
        access: Access,
        key: &str,
        delta: i64,
        ttl_ms: u32,
    ) -> Result<i64, SharedError> {
        check_key(key)?;
        let backend = self.backend();
        let result = match &*backend {
            Backend::Local(l) => l.counter_add(key, delta, ttl_ms),
            Backend::Redis(r, _) if access == Access::Wait => r.counter_add(key, delta, ttl_ms),
            Backend::Redis(_, mirror) => mirror.counter_add(key, delta, ttl_ms),
        };
        counted("counter-add", result)
    }

    /// The counter's value, 0 when absent.
    pub fn counter_get(&self, access: Access, key: &str) -> Result<i64, SharedError> {
        check_key(key)?;
        let backend = self.backend();
        let result = match &*backend {
            Backend::Local(l) => l.counter_get(key),
            Backend::Redis(r, _) if access == Access::Wait => r.counter_get(key),
            Backend::Redis(_, mirror) => mirror.counter_get(key),
        };
        counted("counter-get", result)
    }

    /// The text stored under `key`.
    pub fn get(&self, access: Access, key: &str) -> Result<Option<String>, SharedError> {
        check_key(key)?;
        let backend = self.backend();
        let result = match &*backend {
            Backend::Local(l) => l.get(key),
            Backend::Redis(r, _) if access == Access::Wait => r.get(key),
            Backend::Redis(_, mirror) => mirror.get(key),
        };
        counted("get", result)
    }

    /// Stores `value` under `key` for `ttl_ms` (0: never expires).
    pub fn set(
        &self,
        access: Access,
        key: &str,
        value: &str,
        ttl_ms: u32,
    ) -> Result<(), SharedError> {
        check_key(key)?;
        if value.len() > MAX_VALUE {
            return Err(SharedError::Invalid(format!(
                "value of {} bytes is over the {MAX_VALUE}-byte limit",
                value.len()
            )));
        }
        let backend = self.backend();
        let result = match &*backend {
            Backend::Local(l) => l.set(key, value, ttl_ms),
            Backend::Redis(r, _) if access == Access::Wait => r.set(key, value, ttl_ms),
            Backend::Redis(_, mirror) => mirror.set(key, value, ttl_ms),
        };
        counted("set", result)
    }
}

fn check_key(key: &str) -> Result<(), SharedError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(SharedError::Invalid(format!(
            "key of {} bytes: keys are 1 to {MAX_KEY} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Counts a failed call by operation and kind.
fn counted<T>(op: &'static str, result: Result<T, SharedError>) -> Result<T, SharedError> {
    if let Err(e) = &result {
        let kind = match e {
            SharedError::Unavailable(_) => "unavailable",
            SharedError::Invalid(_) => "invalid",
        };
        metrics::counter!("switchyard_shared_errors_total", "op" => op, "kind" => kind)
            .increment(1);
    }
    result
}

fn expiry(ttl_ms: u32) -> Option<Instant> {
    (ttl_ms > 0).then(|| Instant::now() + Duration::from_millis(u64::from(ttl_ms)))
}

fn not_a_counter(key: &str) -> SharedError {
    SharedError::Invalid(format!("`{key}` holds text, not a counter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_counters_count_and_expire() {
        let store = SharedStore::in_process();
        assert_eq!(store.counter_add(Access::Wait, "a", 5, 0), Ok(5));
        assert_eq!(store.counter_add(Access::Wait, "a", -2, 0), Ok(3));
        assert_eq!(store.counter_get(Access::Wait, "a"), Ok(3));
        assert_eq!(store.counter_get(Access::Wait, "missing"), Ok(0));
        assert_eq!(store.counter_add(Access::Wait, "short", 1, 30), Ok(1));
        // Adding does not extend a counter's life.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(store.counter_add(Access::Wait, "short", 1, 30), Ok(2));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(store.counter_get(Access::Wait, "short"), Ok(0));
        assert_eq!(store.counter_add(Access::Wait, "short", 1, 30), Ok(1));
    }

    #[test]
    fn local_values_and_refusals() {
        let store = SharedStore::in_process();
        assert_eq!(store.get(Access::Wait, "k"), Ok(None));
        store.set(Access::Wait, "k", "v", 0).unwrap();
        assert_eq!(store.get(Access::Wait, "k"), Ok(Some("v".into())));
        assert!(matches!(
            store.counter_add(Access::Wait, "k", 1, 0),
            Err(SharedError::Invalid(_))
        ));
        assert!(matches!(
            store.set(Access::Wait, "k", &"x".repeat(MAX_VALUE + 1), 0),
            Err(SharedError::Invalid(_))
        ));
        assert!(matches!(
            store.get(Access::Wait, &"k".repeat(MAX_KEY + 1)),
            Err(SharedError::Invalid(_))
        ));
        store.set(Access::Wait, "t", "gone soon", 10).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(store.get(Access::Wait, "t"), Ok(None));
    }

    #[test]
    fn unreachable_redis_fails_fast_and_names_the_address() {
        let store = SharedStore::in_process();
        // A port nothing listens on: the first call fails to connect, the
        // next ones fail at once until the retry time.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = SharedConfig {
            store: format!("redis://127.0.0.1:{port}"),
            ..SharedConfig::default()
        };
        store.configure(&config).unwrap();
        let first = store.counter_add(Access::Wait, "a", 1, 0).unwrap_err();
        assert!(matches!(&first, SharedError::Unavailable(m) if m.contains(&port.to_string())));
        let second = store.counter_add(Access::Wait, "a", 1, 0).unwrap_err();
        assert!(matches!(&second, SharedError::Unavailable(m) if m.contains("next attempt")));
    }

    #[test]
    fn a_router_never_waits_on_a_redis_that_does_not_answer() {
        // Accepts connections and never answers: each waiting call takes the
        // whole 2 s timeout.
        let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = SharedConfig {
            store: format!("redis://{}", frozen.local_addr().unwrap()),
            timeout: Duration::from_secs(2),
            ..SharedConfig::default()
        };
        let store = SharedStore::in_process();
        store.configure(&config).unwrap();
        let started = Instant::now();
        for i in 0..200 {
            let read = store.get(Access::NoWait, "k");
            assert!(
                matches!(&read, Err(SharedError::Unavailable(m)) if m.contains("being read")),
                "{read:?}"
            );
            // Additions count locally at once, sent in the background.
            assert_eq!(store.counter_add(Access::NoWait, "c", 1, 0), Ok(i + 1));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "200 router calls took {:?}",
            started.elapsed()
        );
        let waited = Instant::now();
        assert!(store.get(Access::Wait, "k").is_err());
        assert!(waited.elapsed() >= Duration::from_secs(1));
    }
}
