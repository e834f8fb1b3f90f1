//! The store behind the plugins' `shared` interface: counters with a time to
//! live and a small key/value map, in process (the default) or on Redis, so
//! that several proxy replicas agree on them.
//!
//! A Redis store never hangs a caller: each call waits at most the
//! configured timeout, and once Redis is unreachable every call fails at
//! once with `unavailable` for a second before the next connection attempt.
//! Plugins decide what a failure means for their policy; the host logs the
//! outage once, counts every failed call and reconnects by itself.

use crate::config::SharedConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
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
    Redis(Box<RedisStore>),
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
            Some(url) => Backend::Redis(Box::new(RedisStore::new(url, config)?)),
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
    pub fn counter_add(&self, key: &str, delta: i64, ttl_ms: u32) -> Result<i64, SharedError> {
        check_key(key)?;
        let backend = self.backend();
        let result = match &*backend {
            Backend::Local(l) => l.counter_add(key, delta, ttl_ms),
            Backend::Redis(r) => r.counter_add(key, delta, ttl_ms),
        };
        counted("counter-add", result)
    }

    /// The counter's value, 0 when absent.
    pub fn counter_get(&self, key: &str) -> Result<i64, SharedError> {
        check_key(key)?;
        let backend = self.backend();
        let result = match &*backend {
            Backend::Local(l) => l.counter_get(key),
            Backend::Redis(r) => r.counter_get(key),
        };
        counted("counter-get", result)
    }

    /// The text stored under `key`.
    pub fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        check_key(key)?;
        let backend = self.backend();
        let result = match &*backend {
            Backend::Local(l) => l.get(key),
            Backend::Redis(r) => r.get(key),
        };
        counted("get", result)
    }

    /// Stores `value` under `key` for `ttl_ms` (0: never expires).
    pub fn set(&self, key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
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
            Backend::Redis(r) => r.set(key, value, ttl_ms),
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

// === in process ===

enum Value {
    Counter(i64),
    Text(String),
}

struct Entry {
    value: Value,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// The default store: a map in this process, shared by its plugins.
#[derive(Default)]
struct LocalStore {
    entries: Mutex<HashMap<String, Entry>>,
}

impl LocalStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live entry under `key`, making room for a new one if needed.
    fn slot<'a>(
        entries: &'a mut HashMap<String, Entry>,
        key: &str,
        fresh: impl FnOnce() -> Entry,
    ) -> Result<&'a mut Entry, SharedError> {
        let now = Instant::now();
        if entries.get(key).is_some_and(|e| !e.live(now)) {
            entries.remove(key);
        }
        if !entries.contains_key(key) {
            if entries.len() >= MAX_LOCAL_KEYS {
                entries.retain(|_, e| e.live(now));
            }
            if entries.len() >= MAX_LOCAL_KEYS {
                return Err(SharedError::Invalid(format!(
                    "the in-process store is full ({MAX_LOCAL_KEYS} live keys)"
                )));
            }
            entries.insert(key.to_string(), fresh());
        }
        Ok(entries.get_mut(key).expect("inserted above"))
    }

    fn counter_add(&self, key: &str, delta: i64, ttl_ms: u32) -> Result<i64, SharedError> {
        let mut entries = self.lock();
        let entry = Self::slot(&mut entries, key, || Entry {
            value: Value::Counter(0),
            expires: expiry(ttl_ms),
        })?;
        match &mut entry.value {
            Value::Counter(n) => {
                *n = n.saturating_add(delta);
                Ok(*n)
            }
            Value::Text(_) => Err(not_a_counter(key)),
        }
    }

    fn counter_get(&self, key: &str) -> Result<i64, SharedError> {
        let entries = self.lock();
        match entries.get(key).filter(|e| e.live(Instant::now())) {
            None => Ok(0),
            Some(Entry {
                value: Value::Counter(n),
                ..
            }) => Ok(*n),
            Some(_) => Err(not_a_counter(key)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        let entries = self.lock();
        Ok(match entries.get(key).filter(|e| e.live(Instant::now())) {
            None => None,
            Some(Entry {
                value: Value::Text(t),
                ..
            }) => Some(t.clone()),
            Some(Entry {
                value: Value::Counter(n),
                ..
            }) => Some(n.to_string()),
        })
    }

    fn set(&self, key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
        let mut entries = self.lock();
        let entry = Self::slot(&mut entries, key, || Entry {
            value: Value::Text(String::new()),
            expires: None,
        })?;
        *entry = Entry {
            value: Value::Text(value.to_string()),
            expires: expiry(ttl_ms),
        };
        Ok(())
    }
}

fn not_a_counter(key: &str) -> SharedError {
    SharedError::Invalid(format!("`{key}` holds text, not a counter"))
}

// === Redis ===

/// One connection to Redis, made on first use and remade after a failure.
struct RedisStore {
    client: redis::Client,
    address: String,
    /// Put before every key, so deployments can share one Redis.
    prefix: String,
    timeout: Duration,
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    connection: Option<redis::Connection>,
    /// Set while Redis is unreachable: no attempt before this instant.
    retry_at: Option<Instant>,
}

impl RedisStore {
    fn new(url: &str, config: &SharedConfig) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("shared.store {url:?}: {e}"))?;
        Ok(RedisStore {
            client,
            address: config.describe(),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            link: Mutex::new(Link::default()),
        })
    }

    /// Runs `call` on the connection, connecting first if needed.
    fn with<T>(
        &self,
        call: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, SharedError> {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if link.connection.is_none() {
            if let Some(at) = link.retry_at
                && Instant::now() < at
            {
                return Err(SharedError::Unavailable(format!(
                    "redis at {} is unreachable; next attempt in {} ms",
                    self.address,
                    at.saturating_duration_since(Instant::now()).as_millis()
                )));
            }
            match self.connect() {
                Ok(c) => {
                    if link.retry_at.take().is_some() {
                        tracing::info!(store = %self.address, "shared store reachable again");
                        metrics::gauge!("switchyard_shared_store_up").set(1.0);
                    }
                    link.connection = Some(c);
                }
                Err(e) => return Err(self.down(&mut link, &e)),
            }
        }
        let connection = link.connection.as_mut().expect("connected above");
        match call(connection) {
            Ok(v) => Ok(v),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(self.down(&mut link, &e))
            }
            Err(e) if e.is_unrecoverable_error() => {
                link.connection = None;
                Err(SharedError::Unavailable(e.to_string()))
            }
            Err(e) => Err(SharedError::Invalid(e.to_string())),
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }

    /// Marks Redis unreachable: drops the connection and waits a while
    /// before the next attempt, logging the first failure only.
    fn down(&self, link: &mut Link, e: &redis::RedisError) -> SharedError {
        link.connection = None;
        if link.retry_at.is_none() {
            tracing::warn!(store = %self.address,
                "shared store unreachable ({e}); plugins get `unavailable` until it is back");
            metrics::gauge!("switchyard_shared_store_up").set(0.0);
        }
        link.retry_at = Some(Instant::now() + RECONNECT_AFTER);
        SharedError::Unavailable(format!("redis at {}: {e}", self.address))
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    fn counter_add(&self, key: &str, delta: i64, ttl_ms: u32) -> Result<i64, SharedError> {
        let key = self.key(key);
        self.with(|c| {
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("INCRBY").arg(&key).arg(delta);
            if ttl_ms > 0 {
                // Only a new counter gets an expiry: adding must not extend it.
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).arg("NX").ignore();
            }
            let (value,): (i64,) = pipe.query(c)?;
            Ok(value)
        })
    }

    fn counter_get(&self, key: &str) -> Result<i64, SharedError> {
        let text = self.get(key)?;
        match text {
            None => Ok(0),
            Some(t) => t.parse().map_err(|_| not_a_counter(key)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        let key = self.key(key);
        self.with(|c| redis::cmd("GET").arg(&key).query(c))
    }

    fn set(&self, key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
        let key = self.key(key);
        self.with(|c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(value);
            if ttl_ms > 0 {
                cmd.arg("PX").arg(ttl_ms);
            }
            cmd.query(c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_counters_count_and_expire() {
        let store = SharedStore::in_process();
        assert_eq!(store.counter_add("a", 5, 0), Ok(5));
        assert_eq!(store.counter_add("a", -2, 0), Ok(3));
        assert_eq!(store.counter_get("a"), Ok(3));
        assert_eq!(store.counter_get("missing"), Ok(0));
        assert_eq!(store.counter_add("short", 1, 30), Ok(1));
        // Adding does not extend a counter's life.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(store.counter_add("short", 1, 30), Ok(2));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(store.counter_get("short"), Ok(0));
        assert_eq!(store.counter_add("short", 1, 30), Ok(1));
    }

    #[test]
    fn local_values_and_refusals() {
        let store = SharedStore::in_process();
        assert_eq!(store.get("k"), Ok(None));
        store.set("k", "v", 0).unwrap();
        assert_eq!(store.get("k"), Ok(Some("v".into())));
        assert!(matches!(
            store.counter_add("k", 1, 0),
            Err(SharedError::Invalid(_))
        ));
        assert!(matches!(
            store.set("k", &"x".repeat(MAX_VALUE + 1), 0),
            Err(SharedError::Invalid(_))
        ));
        assert!(matches!(
            store.get(&"k".repeat(MAX_KEY + 1)),
            Err(SharedError::Invalid(_))
        ));
        store.set("t", "gone soon", 10).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(store.get("t"), Ok(None));
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
        let first = store.counter_add("a", 1, 0).unwrap_err();
        assert!(matches!(&first, SharedError::Unavailable(m) if m.contains(&port.to_string())));
        let second = store.counter_add("a", 1, 0).unwrap_err();
        assert!(matches!(&second, SharedError::Unavailable(m) if m.contains("next attempt")));
    }
}
