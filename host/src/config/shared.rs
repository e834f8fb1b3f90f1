//! `[shared]`: the store behind the plugins' `shared` interface.

use super::{KeyPath, Problem, duration};
use serde::Deserialize;
use std::time::Duration;

/// Where plugins' shared counters and values live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// `memory` (this process only, the default) or a `redis://host:port/db`
    /// URL that every replica names, so they share one budget.
    #[serde(default = "default_store")]
    pub store: String,
    /// Prefix of every key in Redis, so several deployments can share one.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Longest a call waits for Redis (connect, send or answer).
    #[serde(default = "default_shared_timeout", with = "duration")]
    pub timeout: Duration,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            store: default_store(),
            prefix: default_prefix(),
            timeout: default_shared_timeout(),
        }
    }
}

impl SharedConfig {
    /// The Redis URL, or `None` for the in-process store.
    pub fn redis_url(&self) -> Option<&str> {
        (self.store != "memory").then_some(self.store.as_str())
    }

    /// The store for logs and `/status`, without any password in the URL.
    pub fn describe(&self) -> String {
        match self.redis_url() {
            None => "memory".into(),
            Some(url) => match url.rsplit_once('@') {
                Some((_, host)) => format!("redis://…@{host}"),
                None => url.to_string(),
            },
        }
    }
}

fn default_store() -> String {
    "memory".into()
}

fn default_prefix() -> String {
    "switchyard".into()
}

fn default_shared_timeout() -> Duration {
    Duration::from_millis(50)
}

impl SharedConfig {
    /// A store this proxy can use, and a timeout above zero.
    pub(super) fn validate(&self) -> Result<(), Problem> {
        if self.redis_url().is_some()
            && (!self.store.starts_with("redis://")
                || redis::Client::open(self.store.as_str()).is_err())
        {
            return Err(Problem::new(
                KeyPath::of("shared.store"),
                format!(
                    "shared.store {:?}: expected \"memory\" or a redis:// URL such as redis://127.0.0.1:6379/0",
                    self.store
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Problem::new(
                KeyPath::of("shared.timeout"),
                "shared.timeout must be above zero",
            ));
        }
        Ok(())
    }
}
