//! Watches the config file and the plugin directory and reloads after a
//! burst of changes has settled.
//!
//! Editors and `cp` write a file in several steps, and tools replace files
//! by renaming; every such step is an event, and the reload runs once the
//! events stop for [`DEBOUNCE`]. A file read while still half-written fails
//! to compile, leaves the running version in place, and the write that
//! completes it triggers the next attempt.

use super::Reloader;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

/// Quiet time after the last file event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(60);

/// Keeps the file watch alive; dropping it stops watching.
pub struct ReloadWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl ReloadWatcher {
    /// Watches the directory of the config file and `plugin_dir`.
    pub fn start(reloader: Arc<Reloader>, plugin_dir: &Path) -> notify::Result<ReloadWatcher> {
        // The directory is resolved, the file is not: a config that is a
        // symlink (a Kubernetes ConfigMap mount) keeps its name when its
        // target is swapped.
        let given = reloader.config_path();
        let config_dir = std::fs::canonicalize(
            given
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        let config = config_dir.join(given.file_name().unwrap_or_default());
        let plugin_dir = std::fs::canonicalize(plugin_dir).ok();
        let (tx, rx) = channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })?;
        watcher.watch(&config_dir, RecursiveMode::NonRecursive)?;
        match &plugin_dir {
            Some(dir) if *dir != config_dir => watcher.watch(dir, RecursiveMode::NonRecursive)?,
            Some(_) => {}
            None => {
                tracing::warn!("plugin directory does not exist; new plugins need a config reload")
            }
        }
        let plugins_at = plugin_dir.clone();
        let is_plugin = move |p: &Path| {
            p.extension().is_some_and(|e| e == "wasm")
                && p.parent().is_some_and(|d| Some(d) == plugins_at.as_deref())
        };
        // Only these paths start or extend a burst: other files in the
        // config's directory (a trace being recorded, logs) change all the
        // time and must not hold a reload back.
        let watched = {
            let (config, config_dir, plugin_dir) =
                (config.clone(), config_dir.clone(), plugin_dir.clone());
            let is_plugin = is_plugin.clone();
            move |p: &Path| {
                p == config
                    || is_plugin(p)
                    || swapped(p, &config_dir)
                    || plugin_dir.as_deref().is_some_and(|d| swapped(p, d))
            }
        };
        std::thread::Builder::new()
            .name("switchyard-reload".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut changed = BTreeSet::new();
                    if !collect(first, &mut changed, &watched) {
                        continue;
                    }
                    let mut quiet_at = std::time::Instant::now() + DEBOUNCE;
                    loop {
                        let wait = quiet_at.saturating_duration_since(std::time::Instant::now());
                        match rx.recv_timeout(wait) {
                            Ok(event) => {
                                if collect(event, &mut changed, &watched) {
                                    quiet_at = std::time::Instant::now() + DEBOUNCE;
                                }
                            }
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    let config_changed = changed.contains(&config)
                        || changed.iter().any(|p| swapped(p, &config_dir));
                    let plugins_swapped = plugin_dir
                        .as_deref()
                        .is_some_and(|dir| changed.iter().any(|p| swapped(p, dir)));
                    let plugins: Vec<&PathBuf> = changed.iter().filter(|p| is_plugin(p)).collect();
                    let used = plugins.iter().any(|p| reloader.is_referenced(p));
                    if config_changed || used || plugins_swapped {
                        let cause = changed
                            .iter()
                            .filter(|p| **p == config || is_plugin(p) || p.ends_with("..data"))
                            .filter_map(|p| p.file_name())
                            .map(|n| n.to_string_lossy())
                            .collect::<Vec<_>>()
                            .join(", ");
                        let _ = reloader.reload(&cause);
                    }
                    for p in plugins {
                        // The entry itself, not its target: a dangling link
                        // or a link loop is reported, not skipped.
                        if p.symlink_metadata().is_ok() && !reloader.is_referenced(p) {
                            reloader.check_unreferenced(p);
                        }
                    }
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(ReloadWatcher { _watcher: watcher })
    }
}

/// Whether `path` is the `..data` link of a Kubernetes volume (ConfigMap,
/// Secret) in `dir`: the kubelet updates such a volume by pointing that
/// link at a new directory in one rename, so no file event names the files.
fn swapped(path: &Path, dir: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "..data") && path.parent() == Some(dir)
}

/// Adds the `watched` paths of a content-changing event to `changed`;
/// says whether there were any.
fn collect(
    event: notify::Result<notify::Event>,
    changed: &mut BTreeSet<PathBuf>,
    watched: &impl Fn(&Path) -> bool,
) -> bool {
    let Ok(event) = event else { return false };
    let relevant = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
    );
    let mut any = false;
    if relevant {
        for p in event.paths.into_iter().filter(|p| watched(p)) {
            changed.insert(p);
            any = true;
        }
    }
    any
}
