//! The proxy's config file: TOML, parsed and validated as a whole.
//!
//! Every error names the file and, where it can, the line, so a broken config
//! is fixed at a glance and never half-applied.

mod duration;
mod jobs;
mod locate;
mod plugin;
mod pool;
mod rollout;
mod route;
mod server;
mod shared;
mod size;
mod upstream;

pub use duration::parse_duration;
pub use jobs::{JobsConfig, RouteMode};
pub use plugin::{FailurePolicy, PluginSettings, PolicyPlugin, RouterConfig};
pub use pool::{BackendConfig, HealthConfig, PoolConfig};
pub use rollout::{CanaryConfig, RecordConfig, ShadowConfig, is_attribute_name};
pub use route::{
    AuthConfig, ClientKeyConfig, FallbackConfig, LimitsConfig, MatchConfig, RetryConfig,
    RouteConfig, TimeoutConfig,
};
pub use server::{AdminConfig, CpuAffinity, Http1Server, ListenerTls, ServerConfig};
pub use shared::SharedConfig;
pub use upstream::{
    CLIENT_AUTH_HEADERS, DiscoverConfig, HeaderSource, Protocol, TlsOption, TlsSettings,
    split_address,
};

pub use locate::KeyPath;

use locate::Locator;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A config file that failed to load: which file, where in it, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a value of the wrong type.
    #[error("{}: {message}", at(file, *line))]
    Syntax {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A key the section does not have, with the closest one it does.
    #[error("{}: unknown key `{key}`{}; expected one of {expected}", at(file, *line),
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        file: PathBuf,
        line: Option<usize>,
        key: String,
        suggestion: Option<String>,
        expected: String,
    },
    /// Well-formed, but not a config the proxy can run.
    #[error("{}: {message}", at(file, *line))]
    Invalid {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. }
            | ConfigError::UnknownKey { line, .. }
            | ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// A TOML error; an [`ConfigError::UnknownKey`] with a suggestion when
    /// that is what it reports.
    fn from_toml(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| line_of(text, s.start));
        let message = e.message();
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((key, tail)) = rest.split_once('`')
        {
            let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
            return ConfigError::UnknownKey {
                file: file.into(),
                line,
                key: key.to_string(),
                suggestion: locate::did_you_mean(key, expected.iter().copied()).map(String::from),
                expected: expected
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
        }
        ConfigError::Syntax {
            file: file.into(),
            line,
            message: message.to_string(),
        }
    }
}

/// `file:line`, or `file` without a line.
fn at(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", file.display()),
        None => file.display().to_string(),
    }
}

/// What validation found wrong, and where: the key path of the value.
#[derive(Debug)]
pub struct Problem {
    pub at: KeyPath,
    pub message: String,
}

impl Problem {
    pub fn new(at: KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            at,
            message: message.into(),
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub plugins: PluginSettings,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// The store behind the plugins' `shared` interface.
    #[serde(default)]
    pub shared: SharedConfig,
    /// Directory relative paths in the file resolve against.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was read from.
    #[serde(skip)]
    pub path: PathBuf,
    /// Line of each route's router `plugin`, so a plugin that fails to
    /// load later is reported at its line.
    #[serde(skip)]
    pub plugin_lines: BTreeMap<String, usize>,
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.into(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ".".into());
        Config::parse(&text, path, base_dir)
    }

    /// Parses and validates config `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
        if let Some(tls) = &mut config.server.tls {
            tls.cert = base_dir.join(&tls.cert);
            tls.key = base_dir.join(&tls.key);
        }
        config.base_dir = base_dir;
        config.path = file.to_path_buf();
        config.plugin_lines = config
            .routes
            .iter()
            .filter_map(|r| {
                let r = r.get_ref();
                let plugin = r.router.as_ref()?;
                Some((r.name.clone(), line_of(text, plugin.plugin.span().start)))
            })
            .collect();
        config.validate().map_err(|problem| ConfigError::Invalid {
            file: file.into(),
            line: Locator::new(text).line(&problem.at),
            message: problem.message,
        })?;
        Ok(config)
    }

    /// Semantic checks the TOML grammar cannot express, section by section.
    fn validate(&self) -> Result<(), Problem> {
        self.server.validate()?;
        if let Some(admin) = &self.admin {
            admin.validate()?;
        }
        self.shared.validate()?;
        for (name, pool) in &self.pools {
            pool.validate(name)?;
        }
        route::validate_all(
            &self.routes,
            |pool| self.pools.contains_key(pool),
            &self.shared,
        )
    }

    /// `file:line` of route `route`'s router plugin, or the file alone.
    pub fn plugin_location(&self, route: &str) -> String {
        match self.plugin_lines.get(route) {
            Some(line) => format!("{}:{line}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    /// The plugin directory, resolved against the config file's directory.
    pub fn plugin_dir(&self) -> PathBuf {
        self.base_dir.join(&self.plugins.dir)
    }

    /// The compiled-plugin cache directory: `plugins.cache_dir`, else the
    /// user's cache directory (`$XDG_CACHE_HOME` or `~/.cache`), never the
    /// plugin directory, so whoever may drop a `.wasm` there cannot drop
    /// compiled code beside it.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.plugins.cache_dir {
            return self.base_dir.join(dir);
        }
        let user_cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        match user_cache {
            Some(dir) => dir.join("switchyard"),
            None => std::env::temp_dir().join("switchyard-cache"),
        }
    }

    /// Number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Flattens a plugin config table to the key/value strings the plugin
/// interface carries: nested keys joined with `.`, arrays with `,`.
pub fn flatten_table(table: &toml::Table) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), scalar_text(other))),
        }
    }
    let mut out = Vec::new();
    for (k, v) in table {
        walk(k, v, &mut out);
    }
    out
}

/// Text of a TOML value as a plugin sees it: strings bare, arrays comma-joined.
pub fn scalar_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(scalar_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// 1-based line number of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
