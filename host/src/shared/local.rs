//! The default store: a map with expiries in this process.

use super::{MAX_LOCAL_KEYS, SharedError, expiry, not_a_counter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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
pub(super) struct LocalStore {
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

    pub(super) fn counter_add(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: u32,
    ) -> Result<i64, SharedError> {
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

    pub(super) fn counter_get(&self, key: &str) -> Result<i64, SharedError> {
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

    pub(super) fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
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

    pub(super) fn set(&self, key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
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
