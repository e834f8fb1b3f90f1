//! A local copy of the Redis keys routers use, so that a router's store
//! calls never wait on the network: they run on a worker thread, where a
//! round trip would hold up every connection of that worker.
//!
//! Reads answer from the copy and, when it is older than [`FRESH`], ask the
//! `switchyard-shared` thread to refresh it; a key never read before is
//! `unavailable` until its first copy arrives. Writes change the copy at
//! once and are sent by that thread in order. A counter's value is the last
//! value Redis returned plus the local additions not yet confirmed, so it
//! lags other replicas by about one round trip.

use super::SharedError;
use super::redis_store::RedisStore;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A copy older than this is refreshed on its next read.
pub const FRESH: Duration = Duration::from_millis(100);
/// Keys the copy holds at most.
const MAX_KEYS: usize = 4096;
/// Writes and refreshes waiting for the thread at most.
const MAX_QUEUED: usize = 4096;
/// A key no router touched for this long is dropped from the copy.
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// The local copy and the queue to the thread that keeps it.
pub(super) struct Mirror {
    keys: Arc<Mutex<HashMap<String, Copy>>>,
    store: Arc<RedisStore>,
    /// Started on the first router call, so a proxy whose routers never use
    /// the store runs no extra thread.
    queue: OnceLock<Option<SyncSender<Op>>>,
}

/// One key's copy.
#[derive(Debug, Default)]
struct Copy {
    /// What Redis last said; `None` inside `Some` is a key Redis lacks.
    value: Option<Option<String>>,
    fetched: Option<Instant>,
    /// Local counter additions Redis has not confirmed yet.
    unconfirmed: i64,
    /// A refresh is queued.
    asked: bool,
    touched: Option<Instant>,
}

impl Copy {
    fn counter(&self, key: &str) -> Result<i64, SharedError> {
        let base = match self.value.as_ref().and_then(|v| v.as_deref()) {
            None => 0,
            Some(t) => t.parse::<i64>().map_err(|_| super::not_a_counter(key))?,
        };
        Ok(base.saturating_add(self.unconfirmed))
    }
}

enum Op {
    Refresh(String),
    Add(String, i64, u32),
    Set(String, String, u32),
}

impl Mirror {
    pub(super) fn new(store: Arc<RedisStore>) -> Mirror {
        Mirror {
            keys: Arc::default(),
            store,
            queue: OnceLock::new(),
        }
    }

    fn send(&self, op: Op) -> Result<(), SharedError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(MAX_QUEUED);
            let (keys, store) = (self.keys.clone(), self.store.clone());
            std::thread::Builder::new()
                .name("switchyard-shared".into())
                .spawn(move || keep(&keys, &store, &rx))
                .map_err(|e| tracing::error!("cannot start the shared-store thread: {e}"))
                .ok()
                .map(|_| tx)
        });
        let Some(queue) = queue else {
            return Err(SharedError::Unavailable("no shared-store thread".into()));
        };
        queue.try_send(op).map_err(|e| match e {
            TrySendError::Full(_) => SharedError::Unavailable(format!(
                "{MAX_QUEUED} store calls are already waiting for Redis"
            )),
            TrySendError::Disconnected(_) => {
                SharedError::Unavailable("the shared-store thread stopped".into())
            }
        })
    }

    /// Runs `f` on the copy of `key`, making one if there is room.
    fn with_copy<T>(
        &self,
        key: &str,
        f: impl FnOnce(&mut Copy, Instant) -> T,
    ) -> Result<T, SharedError> {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.contains_key(key) {
            if keys.len() >= MAX_KEYS {
                return Err(SharedError::Unavailable(format!(
                    "a router's local copy of the store is full ({MAX_KEYS} keys)"
                )));
            }
            keys.insert(key.to_string(), Copy::default());
        }
        let copy = keys.get_mut(key).expect("inserted above");
        copy.touched = Some(now);
        Ok(f(copy, now))
    }

    /// Reads `key` from the copy, asking for a refresh when it is stale.
    fn read<T>(
        &self,
        key: &str,
        read: impl FnOnce(&Copy) -> Result<T, SharedError>,
    ) -> Result<T, SharedError> {
        let (result, refresh) = self.with_copy(key, |copy, now| {
            let stale = copy.fetched.is_none_or(|at| now - at >= FRESH);
            let refresh = stale && !copy.asked;
            copy.asked |= refresh;
            let result = match copy.value {
                Some(_) => read(copy),
                None => Err(SharedError::Unavailable(format!(
                    "`{key}` is not in the router's local copy of the store yet; it is being read"
                ))),
            };
            (result, refresh)
        })?;
        if refresh && let Err(e) = self.send(Op::Refresh(key.to_string())) {
            self.with_copy(key, |copy, _| copy.asked = false)?;
            return result.and(Err(e));
        }
        result
    }

    pub(super) fn counter_add(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: u32,
    ) -> Result<i64, SharedError> {
        let value = self.with_copy(key, |copy, _| {
            copy.unconfirmed = copy.unconfirmed.saturating_add(delta);
            copy.counter(key)
        })??;
        if let Err(e) = self.send(Op::Add(key.to_string(), delta, ttl_ms)) {
            self.with_copy(key, |copy, _| copy.unconfirmed -= delta)?;
            return Err(e);
        }
        Ok(value)
    }

    pub(super) fn counter_get(&self, key: &str) -> Result<i64, SharedError> {
        self.read(key, |copy| copy.counter(key))
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        self.read(key, |copy| {
            Ok(match copy.unconfirmed {
                0 => copy.value.clone().flatten(),
                _ => Some(copy.counter(key)?.to_string()),
            })
        })
    }

    pub(super) fn set(&self, key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
        self.with_copy(key, |copy, now| {
            copy.value = Some(Some(value.to_string()));
            copy.unconfirmed = 0;
            copy.fetched = Some(now);
        })?;
        self.send(Op::Set(key.to_string(), value.to_string(), ttl_ms))
    }
}

/// The `switchyard-shared` thread: runs queued calls against Redis (each
/// bounded by the store's timeout) and updates the copy with the answers,
/// until the mirror is dropped.
fn keep(keys: &Mutex<HashMap<String, Copy>>, store: &RedisStore, queue: &Receiver<Op>) {
    let lock = || keys.lock().unwrap_or_else(|e| e.into_inner());
    let mut last_sweep = Instant::now();
    while let Ok(op) = queue.recv() {
        match op {
            Op::Refresh(key) => {
                let answer = store.get(&key);
                if let Some(copy) = lock().get_mut(&key) {
                    copy.asked = false;
                    if let Ok(value) = answer {
                        copy.value = Some(value);
                        copy.fetched = Some(Instant::now());
                    }
                }
            }
            Op::Add(key, delta, ttl_ms) => {
                let answer = store.counter_add(&key, delta, ttl_ms);
                if let Some(copy) = lock().get_mut(&key) {
                    copy.unconfirmed = copy.unconfirmed.saturating_sub(delta);
                    if let Ok(value) = answer {
                        copy.value = Some(Some(value.to_string()));
                        copy.fetched = Some(Instant::now());
                    }
                }
            }
            Op::Set(key, value, ttl_ms) => {
                let _ = store.set(&key, &value, ttl_ms);
            }
        }
        if last_sweep.elapsed() >= FORGET_AFTER {
            last_sweep = Instant::now();
            lock().retain(|_, c| c.asked || c.touched.is_some_and(|t| t.elapsed() < FORGET_AFTER));
        }
    }
}
