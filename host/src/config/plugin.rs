//! `[plugins]` and plugin bindings: where plugins come from, a route's
//! router, a pool's policy plugins, and what a plugin failure means.

use super::{duration, size, yes};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Where plugins come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Directory holding `.wasm` plugins; relative to the config file.
    #[serde(default = "default_plugin_dir")]
    pub dir: PathBuf,
    /// Directory for compiled plugins; default `$XDG_CACHE_HOME/switchyard`
    /// (or `~/.cache/switchyard`). Entries are authenticated, so only this
    /// install's own are loaded.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Reload when the config file or a plugin changes.
    #[serde(default = "yes")]
    pub watch: bool,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            dir: default_plugin_dir(),
            cache_dir: None,
            watch: true,
        }
    }
}

/// A pool-level policy plugin (health check or circuit breaker).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPlugin {
    /// File name in the plugin directory.
    pub plugin: String,
    /// Table passed to the plugin's `init`, flattened to key/value strings.
    #[serde(default)]
    pub config: toml::Table,
    /// Longest one plugin call may run.
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    /// Memory limit of the plugin instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
}

/// A route's router plugin binding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// File name in the plugin directory.
    pub plugin: Spanned<String>,
    /// Table passed to the plugin's `init`, flattened to key/value strings.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// Longest one plugin call may run (wall clock) before it is stopped.
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    /// Memory limit of one plugin instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// How much of a JSON request body is read to find the `json-body`
    /// attributes the router asks for; the body is sent on unchanged. A
    /// field is only reported when the whole object fits (a later
    /// duplicate key would override it), so this must exceed the largest
    /// body routed on: agent prompts of hundreds of KiB are common.
    #[serde(default = "default_body_peek", deserialize_with = "size::deserialize")]
    pub body_peek: u64,
    /// A second router that decides on a share of requests without acting.
    #[serde(default)]
    pub shadow: Option<super::rollout::ShadowConfig>,
    /// Roll this router out over `previous` step by step, with rollback.
    #[serde(default)]
    pub canary: Option<super::rollout::CanaryConfig>,
}

fn default_body_peek() -> u64 {
    1024 * 1024
}

/// What happens when a plugin traps, runs past its deadline, or answers
/// nonsense.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The built-in least-outstanding router decides.
    #[default]
    FailOpen,
    /// The request is answered 503.
    FailClosed,
}

fn default_plugin_dir() -> PathBuf {
    "plugins".into()
}

/// Wall-clock, so it must leave room for the worker thread being preempted
/// mid-call on a busy machine: at 1 ms, CPU contention alone tripped it.
pub(super) fn default_deadline() -> Duration {
    Duration::from_millis(10)
}

pub(super) fn default_memory_mb() -> u32 {
    16
}

/// A bare `.wasm` file name: plugins come from the plugin directory only.
pub(super) fn is_plugin_file(name: &str) -> bool {
    !name.contains('/') && !name.contains('\\') && name.ends_with(".wasm")
}
