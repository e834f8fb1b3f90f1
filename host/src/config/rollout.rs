//! Shipping a new router safely: a shadow that decides without acting, a
//! canary that takes a growing share and rolls back by itself, and a
//! record of what the router saw for offline replay.

use super::plugin::{default_deadline, default_memory_mb, is_plugin_file};
use super::{duration, size};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `router.shadow`: a second router fed the same facts and loads on a share
/// of requests. Its decision is compared with the live one, never used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    pub plugin: String,
    /// The shadow's `init` table; default: the live router's.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Share of requests the shadow decides, 0..=1.
    #[serde(default = "one")]
    pub sample: f64,
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
}

/// `router.canary`: the route's `plugin` is the new version and takes
/// `share` of requests, then `share` more each `step`, while `previous`
/// decides the rest; crossing a limit rolls back to `previous`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The version that decided before, and decides again after a rollback.
    pub previous: String,
    /// Its `init` table; default: the router's.
    #[serde(default)]
    pub previous_config: Option<toml::Table>,
    /// First share of the new version, and what each step adds, 0..1.
    #[serde(default = "default_share")]
    pub share: f64,
    #[serde(default = "default_step", with = "duration")]
    pub step: Duration,
    /// Roll back when the new version's requests fail more often than this
    /// (5xx, connect errors, timeouts, resets), 0..=1.
    #[serde(default = "default_error_rate")]
    pub max_error_rate: f64,
    /// Roll back when the new version's p99 latency exceeds the previous
    /// version's by more than this share.
    #[serde(default = "default_p99_regression")]
    pub max_p99_regression: f64,
    /// A p99 rise smaller than this never rolls back, however large a
    /// share of a small p99 it is: 1 ms to 1.3 ms is noise, not a regression.
    #[serde(default = "default_min_p99_increase", with = "duration")]
    pub min_p99_increase: Duration,
    /// Failed requests of the new version before its error rate is judged,
    /// so one early failure does not roll it back.
    #[serde(default = "default_min_failures")]
    pub min_failures: u32,
    /// Requests per version before their p99s are compared.
    #[serde(default = "default_min_latency_samples")]
    pub min_latency_samples: u32,
    /// Header whose value picks the version by a stable hash, so a thread
    /// stays with one version; without it, the client address is hashed.
    #[serde(default = "default_key")]
    pub key: String,
}

/// `record` on a route: a sampled request's facts, attributes, backend
/// loads, decision and outcome, one JSON line each, for `switchyard replay`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// The trace file; relative to the config file.
    pub path: PathBuf,
    /// Share of requests recorded, 0..=1.
    #[serde(default = "default_record_sample")]
    pub sample: f64,
    /// The file is rotated (to `.1`, `.2`, `.3`) when it reaches this size.
    #[serde(default = "default_max_size", deserialize_with = "size::deserialize")]
    pub max_size: u64,
    /// Attributes recorded on top of the routers' own, so a candidate that
    /// reads other ones can be replayed: `header:NAME`, `cookie:NAME`,
    /// `json-body:FIELD`, `path`, `query`, `host`, `body-size`.
    #[serde(default)]
    pub attributes: Vec<String>,
}

fn one() -> f64 {
    1.0
}
fn default_share() -> f64 {
    0.1
}
fn default_step() -> Duration {
    Duration::from_secs(300)
}
fn default_error_rate() -> f64 {
    0.02
}
fn default_p99_regression() -> f64 {
    0.2
}
fn default_min_p99_increase() -> Duration {
    Duration::from_millis(10)
}
fn default_min_failures() -> u32 {
    5
}
fn default_min_latency_samples() -> u32 {
    100
}
fn default_key() -> String {
    "x-thread-id".into()
}
fn default_record_sample() -> f64 {
    0.05
}
fn default_max_size() -> u64 {
    256 * 1024 * 1024
}

/// Whether `text` names a request attribute: `header:NAME`, `cookie:NAME`,
/// `json-body:FIELD`, `path`, `query`, `host` or `body-size` (the names
/// `plugin::Interest` parses).
pub fn is_attribute_name(text: &str) -> bool {
    match text.split_once(':') {
        Some(("header", h)) => http::HeaderName::from_bytes(h.as_bytes()).is_ok(),
        Some(("cookie" | "json-body", name)) => !name.is_empty(),
        Some(("prompt-prefix", sizes)) => sizes.split_once(':').is_some_and(|(b, m)| {
            let (Ok(b), Ok(m)) = (b.parse::<u32>(), m.parse::<u32>()) else {
                return false;
            };
            (16..=65536).contains(&b) && b % 8 == 0 && (b..=1 << 20).contains(&m)
        }),
        Some(_) => false,
        None => matches!(text, "path" | "query" | "host" | "body-size"),
    }
}

/// The first problem with a route's shadow, canary or record settings, as
/// (key path under the route, message).
pub fn check(
    shadow: Option<&ShadowConfig>,
    canary: Option<&CanaryConfig>,
    record: Option<&RecordConfig>,
) -> Result<(), (&'static str, String)> {
    let share = |x: f64| (0.0..=1.0).contains(&x);
    if let Some(s) = shadow {
        if !is_plugin_file(&s.plugin) {
            return Err((
                "router.shadow.plugin",
                format!(
                    "{:?} must be a `.wasm` file name in the plugin directory",
                    s.plugin
                ),
            ));
        }
        if !share(s.sample) {
            return Err(("router.shadow.sample", "must be within 0..=1".into()));
        }
        if s.deadline.is_zero() || s.memory_mb == 0 {
            return Err((
                "router.shadow",
                "deadline and memory_mb must be above zero".into(),
            ));
        }
    }
    if let Some(c) = canary {
        if !is_plugin_file(&c.previous) {
            return Err((
                "router.canary.previous",
                format!(
                    "{:?} must be a `.wasm` file name in the plugin directory",
                    c.previous
                ),
            ));
        }
        if !(c.share > 0.0 && c.share <= 1.0) {
            return Err((
                "router.canary.share",
                "must be above 0 and at most 1".into(),
            ));
        }
        if c.step.is_zero() {
            return Err(("router.canary.step", "must be above zero".into()));
        }
        if !share(c.max_error_rate) {
            return Err((
                "router.canary.max_error_rate",
                "must be within 0..=1".into(),
            ));
        }
        if !(c.max_p99_regression >= 0.0 && c.max_p99_regression.is_finite()) {
            return Err((
                "router.canary.max_p99_regression",
                "must be 0 or more".into(),
            ));
        }
        if http::HeaderName::from_bytes(c.key.as_bytes()).is_err() {
            return Err((
                "router.canary.key",
                format!("{:?} is not a header name", c.key),
            ));
        }
    }
    if let Some(r) = record {
        if !share(r.sample) {
            return Err(("record.sample", "must be within 0..=1".into()));
        }
        if r.max_size < 4096 {
            return Err(("record.max_size", "must be at least 4KiB".into()));
        }
        if let Some(bad) = r.attributes.iter().find(|a| !is_attribute_name(a)) {
            return Err((
                "record.attributes",
                format!(
                    "{bad:?} is not an attribute (header:NAME, cookie:NAME, json-body:FIELD, path, query, host, body-size, prompt-prefix:BLOCK:MAX_BYTES)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(route: &str) -> Result<Config, crate::config::ConfigError> {
        let text = format!(
            "[pools.p]\nbackends = [{{ name = \"a\", address = \"127.0.0.1:9\" }}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n{route}\n"
        );
        Config::parse(&text, Path::new("t.toml"), ".".into())
    }

    #[test]
    fn shadow_canary_and_record_settings_parse_with_defaults() {
        let c = parse(
            "router = { plugin = \"v2.wasm\", shadow = { plugin = \"v3.wasm\" }, canary = { previous = \"v1.wasm\" } }\n\
             record = { path = \"t.jsonl\" }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = c.routes[0].get_ref();
        let router = r.router.as_ref().unwrap_or_else(|| unreachable!());
        let shadow = router.shadow.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!(shadow.sample, 1.0);
        let canary = router.canary.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!((canary.share, canary.step.as_secs()), (0.1, 300));
        assert_eq!(canary.key, "x-thread-id");
        let record = r.record.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!((record.sample, record.max_size), (0.05, 256 << 20));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_line() {
        for (route, says) in [
            (
                "router = { plugin = \"v2.wasm\", shadow = { plugin = \"v3.wasm\", sample = 2 } }",
                "router.shadow.sample: must be within 0..=1",
            ),
            (
                "router = { plugin = \"v2.wasm\", canary = { previous = \"../v1.wasm\" } }",
                "router.canary.previous",
            ),
            (
                "router = { plugin = \"v2.wasm\", canary = { previous = \"v1.wasm\", share = 0 } }",
                "router.canary.share: must be above 0",
            ),
            (
                "record = { path = \"t.jsonl\", attributes = [\"header:\"] }",
                "record.attributes",
            ),
            (
                "record = { path = \"t.jsonl\", max_size = 10 }",
                "record.max_size",
            ),
        ] {
            let e = parse(route)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with("t.toml:7:"), "{route}: {e}");
            assert!(e.contains(says), "{route}: {e}");
        }
        let e = parse("mode = \"job\"\nrecord = { path = \"t.jsonl\" }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("t.toml:8:") && e.contains("record is not supported on a job route"),
            "{e}"
        );
    }
}
