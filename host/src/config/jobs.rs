//! A job route's `jobs` table: where a long job's events are kept, for how
//! long, and how many jobs may run at once.

use super::{KeyPath, Problem, SharedConfig, duration, size};
use serde::Deserialize;
use std::time::Duration;

/// What a route does with a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// Forward it and relay the answer (the default).
    #[default]
    Proxy,
    /// Start a long job: the worker's events come back through the job
    /// store, and the client may disconnect and resume on any replica.
    Job,
}

/// Settings of a job route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// `memory` (this process, the default), `redis` (the `[shared]` Redis),
    /// or a `redis://` URL. Every replica that should resume a job must name
    /// the same Redis.
    #[serde(default = "default_store")]
    pub store: String,
    /// How long a job's events, its result included, are kept; also the
    /// longest a client connection follows one job.
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
    /// Keep-alive sent to a waiting client (WebSocket ping, SSE comment).
    #[serde(default = "default_heartbeat", with = "duration")]
    pub heartbeat: Duration,
    /// A running job with no event from its worker for this long ends with
    /// an `error` event.
    #[serde(default = "default_job_timeout", with = "duration")]
    pub job_timeout: Duration,
    /// Jobs of this route running at once on this replica; beyond it a new
    /// job is refused with 429.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Largest job request body (or first WebSocket message).
    #[serde(default = "default_max_body", deserialize_with = "size::deserialize")]
    pub max_body: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            store: default_store(),
            ttl: default_ttl(),
            heartbeat: default_heartbeat(),
            job_timeout: default_job_timeout(),
            max_in_flight: default_max_in_flight(),
            max_body: default_max_body(),
        }
    }
}

impl JobsConfig {
    /// The Redis URL the store names, or `None` for the in-process store.
    pub fn redis_url<'a>(&'a self, shared: &'a SharedConfig) -> Option<&'a str> {
        match self.store.as_str() {
            "memory" => None,
            "redis" => shared.redis_url(),
            url => Some(url),
        }
    }

    pub(super) fn validate(
        &self,
        at: &KeyPath,
        route: &str,
        shared: &SharedConfig,
    ) -> Result<(), Problem> {
        let problem = |key: &str, message: String| Err(Problem::new(at.clone().key(key), message));
        match self.store.as_str() {
            "memory" => {}
            "redis" if shared.redis_url().is_none() => {
                return problem(
                    "store",
                    format!(
                        "route `{route}`: jobs.store = \"redis\" uses [shared] store, which is \"memory\"; set shared.store to a redis:// URL or give the URL here"
                    ),
                );
            }
            "redis" => {}
            url if url.starts_with("redis://") && redis::Client::open(url).is_ok() => {}
            other => {
                return problem(
                    "store",
                    format!(
                        "route `{route}`: jobs.store {other:?}: expected \"memory\", \"redis\" or a redis:// URL"
                    ),
                );
            }
        }
        for (key, value) in [
            ("ttl", self.ttl),
            ("heartbeat", self.heartbeat),
            ("job_timeout", self.job_timeout),
        ] {
            if value.is_zero() {
                return problem(
                    key,
                    format!("route `{route}`: jobs.{key} must be above zero"),
                );
            }
        }
        if self.job_timeout > self.ttl {
            return problem(
                "job_timeout",
                format!("route `{route}`: jobs.job_timeout is longer than jobs.ttl"),
            );
        }
        if self.max_in_flight == 0 || self.max_body == 0 {
            return problem(
                "max_in_flight",
                format!("route `{route}`: jobs.max_in_flight and jobs.max_body must be above zero"),
            );
        }
        Ok(())
    }
}

fn default_store() -> String {
    "memory".into()
}

fn default_ttl() -> Duration {
    Duration::from_secs(2 * 3600)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}

fn default_job_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_in_flight() -> u32 {
    10_000
}

fn default_max_body() -> u64 {
    8 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), ".".into())
    }

    const BASE: &str = "[pools.models]\nbackends = [{ name = \"a\", address = \"127.0.0.1:9001\" }]\n\n\
                        [[routes]]\nname = \"research\"\npool = \"models\"\nmatch = { path_prefix = \"/r\" }\n";

    #[test]
    fn job_routes_are_checked_with_their_store() {
        let job = |extra: &str| {
            format!(
                "{BASE}\n[[routes]]\nname = \"agents\"\npool = \"models\"\nmatch = {{ path_prefix = \"/agents\" }}\n{extra}\n"
            )
        };
        let c = parse(&job("mode = \"job\"")).unwrap();
        let jobs = c.routes[1].get_ref().job_settings().expect("a job route");
        assert_eq!(jobs.store, "memory");
        assert_eq!(jobs.ttl, Duration::from_secs(7200));
        assert_eq!(c.routes[0].get_ref().job_settings(), None);
        let cases = [
            ("jobs = { ttl = \"1h\" }", "jobs needs mode = \"job\""),
            (
                "mode = \"job\"\njobs = { store = \"redis\" }",
                "uses [shared] store, which is \"memory\"",
            ),
            (
                "mode = \"job\"\njobs = { store = \"mysql://x\" }",
                "expected \"memory\", \"redis\" or a redis:// URL",
            ),
            (
                "mode = \"job\"\njobs = { ttl = \"1m\", job_timeout = \"2m\" }",
                "job_timeout is longer than jobs.ttl",
            ),
            (
                "mode = \"job\"\njobs = { heartbeat = \"0s\" }",
                "jobs.heartbeat must be above zero",
            ),
            ("mode = \"jobs\"", "unknown variant"),
        ];
        for (extra, want) in cases {
            let e = parse(&job(extra)).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
            assert!(
                e.starts_with("test.toml:"),
                "{extra}: the error names the file: {e}"
            );
        }
        // Two job routes on different stores cannot both be found by /jobs/<id>.
        let two = format!(
            "{}\n[[routes]]\nname = \"more\"\npool = \"models\"\nmode = \"job\"\njobs = {{ store = \"redis://127.0.0.1:1\" }}\n",
            job("mode = \"job\"")
        );
        let e = parse(&two).unwrap_err().to_string();
        assert!(e.contains("every job route must use one job store"), "{e}");
    }
}
