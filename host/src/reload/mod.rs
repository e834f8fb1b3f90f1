//! Live reload of the config and the plugins, as a transaction: read the
//! config, compile and initialise every changed plugin, build a whole new
//! route table, then swap it in atomically. Any failure leaves the running
//! table untouched; requests in flight finish on the table they started
//! with.

mod watcher;

pub use watcher::ReloadWatcher;

use crate::balance::LiveRegistry;
use crate::config::Config;
use crate::control::ControlLink;
use crate::plugin::PluginRuntime;
use crate::proxy::Shared;
use crate::route::RouteTable;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Reload events kept for the admin API.
const HISTORY: usize = 32;

/// One reload attempt, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadEvent {
    pub at_unix_ms: u64,
    /// What triggered it: a file name, `SIGHUP`, `admin`.
    pub cause: String,
    pub ok: bool,
    /// What changed, or why the reload was refused.
    pub message: String,
    pub duration_ms: f64,
}

/// Rebuilds and swaps the route table on demand.
pub struct Reloader {
    config_path: PathBuf,
    /// The config the running table was built from.
    config: Mutex<Config>,
    runtime: Arc<PluginRuntime>,
    pub shared: Arc<Shared>,
    /// Live backend state; its lock also keeps reloads one at a time.
    registry: Mutex<LiveRegistry>,
    control: ControlLink,
    history: Mutex<VecDeque<ReloadEvent>>,
}

// === impl Reloader ===

impl Reloader {
    pub fn new(
        config: Config,
        runtime: Arc<PluginRuntime>,
        shared: Arc<Shared>,
        registry: LiveRegistry,
        control: ControlLink,
    ) -> Reloader {
        Reloader {
            config_path: config.path.clone(),
            config: Mutex::new(config),
            runtime,
            shared,
            registry: Mutex::new(registry),
            control,
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// The plugins' shared store: `memory` or the Redis address.
    pub fn shared_store(&self) -> String {
        self.runtime.shared().describe()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Re-reads the config and plugins and swaps in the new table. On error
    /// the running table stays, and the error (naming file and cause) is
    /// logged, counted and kept for the admin API.
    pub fn reload(&self, cause: &str) -> Result<(), String> {
        self.rebuild(
            cause,
            Config::load(&self.config_path).map_err(|e| e.to_string()),
        )
    }

    /// The pools that discover their backends, with their settings.
    pub fn discovering_pools(&self) -> Vec<(String, crate::config::DiscoverConfig)> {
        lock(&self.config)
            .pools
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), p.discover.clone()?)))
            .collect()
    }

    /// Takes the addresses `pool`'s discovery found; when they differ from
    /// the last, rebuilds the table from the running config around them.
    pub fn discovered(&self, pool: &str, addrs: Vec<std::net::SocketAddr>) {
        if !lock(&self.registry).set_discovered(pool, addrs) {
            return;
        }
        let config = lock(&self.config).clone();
        let _ = self.rebuild(&format!("discovery of pool {pool}"), Ok(config));
    }

    fn rebuild(&self, cause: &str, loaded: Result<Config, String>) -> Result<(), String> {
        let started = Instant::now();
        let mut registry = lock(&self.registry);
        let previous = self.shared.table.load_full();
        let store = self.runtime.shared();
        let previous_store = store.config();
        let mut good = None;
        let result = loaded.and_then(|config| {
            let (now, was) = (&config.server, &self.shared.server);
            for (key, changed) in [
                ("listen", now.listen != was.listen),
                ("workers", now.workers != was.workers),
                ("cpu_affinity", now.cpu_affinity != was.cpu_affinity),
                ("http1", now.http1 != was.http1),
            ] {
                if changed {
                    tracing::warn!("server.{key} changed; it takes effect on restart");
                }
            }
            store
                .configure(&config.shared)
                .map_err(|e| format!("{}: {e}", self.config_path.display()))?;
            let table =
                crate::build::route_table(&config, &self.runtime, &mut registry, Some(&previous))
                    .map_err(|e| e.located(&config))?;
            good = Some(config);
            Ok(table)
        });
        if result.is_err() {
            // The running config keeps its store too.
            let _ = store.configure(&previous_store);
        }
        let outcome = match result {
            Ok(table) => {
                let message = describe_change(&previous, &table);
                crate::pool::forget_unused(&mut registry, &table.pools);
                let pools = table.pools.clone();
                self.shared.table.store(Arc::new(table));
                self.control.apply(pools);
                if let Some(config) = good {
                    *lock(&self.config) = config;
                }
                self.runtime.forget_unused();
                tracing::info!(cause, "reloaded: {message}");
                Ok(message)
            }
            Err(e) => {
                tracing::error!(
                    cause,
                    "reload refused, the running config keeps serving: {e}"
                );
                Err(e)
            }
        };
        drop(registry);
        let ok = outcome.is_ok();
        metrics::counter!("switchyard_reloads_total", "result" => if ok { "ok" } else { "error" })
            .increment(1);
        let message = match &outcome {
            Ok(m) | Err(m) => m.clone(),
        };
        self.record(ReloadEvent {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            cause: cause.to_string(),
            ok,
            message,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        });
        outcome.map(|_| ())
    }

    /// Compiles a plugin file no route uses yet, so a broken file dropped
    /// into the directory is reported at once rather than at first use.
    pub fn check_unreferenced(&self, path: &Path) {
        let started = Instant::now();
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let (ok, message) = match self.runtime.load(path, "router") {
            Ok((c, interface)) => (
                true,
                format!(
                    "{name} compiled (version {}, {interface}); no route uses it yet",
                    &c.hash[..12]
                ),
            ),
            Err(e) => (false, e.to_string()),
        };
        self.runtime.forget_unused();
        if ok {
            tracing::info!("{message}");
        } else {
            metrics::counter!("switchyard_reloads_total", "result" => "error").increment(1);
            tracing::error!("plugin refused: {message}");
        }
        self.record(ReloadEvent {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            cause: name,
            ok,
            message,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        });
    }

    fn record(&self, event: ReloadEvent) {
        let mut history = lock(&self.history);
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event);
    }

    /// Recent reload events, oldest first.
    pub fn history(&self) -> Vec<ReloadEvent> {
        lock(&self.history).iter().cloned().collect()
    }

    /// Whether `path` (a `.wasm` file) is referenced by the running table,
    /// or by the config file as it is on disk (which may be waiting for this
    /// very file).
    pub fn is_referenced(&self, path: &Path) -> bool {
        let name = path.file_name();
        let table = self.shared.table.load();
        let running = table
            .routes
            .iter()
            .filter_map(|r| r.router.as_ref())
            .any(|p| p.spec.file.file_name() == name);
        running
            || Config::load(&self.config_path).is_ok_and(|config| {
                config.routes.iter().any(|r| {
                    r.get_ref().router.as_ref().is_some_and(|router| {
                        Path::new(router.plugin.get_ref()).file_name() == name
                    })
                })
            })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One line on what a reload changed: routes and plugin versions.
fn describe_change(before: &RouteTable, after: &RouteTable) -> String {
    let mut parts = Vec::new();
    for r in &after.routes {
        let old = before.routes.iter().find(|o| o.name == r.name);
        let version = |route: &crate::route::Route| {
            route
                .router
                .as_ref()
                .map(|p| (p.id, format!("{}@{}", p.name(), &p.component.hash[..12])))
        };
        match (old, version(r)) {
            (None, _) => parts.push(format!("route {} added", r.name)),
            (Some(o), Some((id, v))) if version(o).map(|(i, _)| i) != Some(id) => {
                parts.push(format!("route {} now runs {v}", r.name));
            }
            (Some(o), _) if o.pool.backends.len() != r.pool.backends.len() => {
                parts.push(format!(
                    "route {} has {} backends",
                    r.name,
                    r.pool.backends.len()
                ));
            }
            _ => {}
        }
    }
    for o in &before.routes {
        if !after.routes.iter().any(|r| r.name == o.name) {
            parts.push(format!("route {} removed", o.name));
        }
    }
    if parts.is_empty() {
        "no route changed".into()
    } else {
        parts.join(", ")
    }
}
