//! The Redis store: one connection made on first use, remade after a
//! failure; every call bounded by the configured timeout, and an
//! unreachable Redis left alone for a second between attempts.

use super::{RECONNECT_AFTER, SharedError, not_a_counter};
use crate::config::SharedConfig;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One connection to Redis, made on first use and remade after a failure.
pub(super) struct RedisStore {
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
    pub(super) fn new(url: &str, config: &SharedConfig) -> Result<RedisStore, String> {
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

    pub(super) fn counter_add(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: u32,
    ) -> Result<i64, SharedError> {
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

    pub(super) fn counter_get(&self, key: &str) -> Result<i64, SharedError> {
        let text = self.get(key)?;
        match text {
            None => Ok(0),
            Some(t) => t.parse().map_err(|_| not_a_counter(key)),
        }
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        let key = self.key(key);
        self.with(|c| redis::cmd("GET").arg(&key).query(c))
    }

    pub(super) fn set(&self, key: &str, value: &str, ttl_ms: u32) -> Result<(), SharedError> {
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
