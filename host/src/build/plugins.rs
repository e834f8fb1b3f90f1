//! Binding plugins to routes and pools during a build: a plugin whose file
//! and binding did not change keeps its loaded version (and its instances
//! and counts); a deleted file keeps serving until the config drops it.

use crate::config::{Config, PolicyPlugin, flatten_table};
use crate::plugin::{PluginError, PluginRuntime, PolicySpec, RouterPlugin, RouterSpec, wit};
use crate::pool::Pool;
use std::sync::Arc;

/// Loads a route's router, reusing `before` (the route's plugin in the
/// table being replaced) when nothing about it changed, or when its file is
/// gone.
pub fn bind_router(
    runtime: &PluginRuntime,
    spec: RouterSpec,
    before: Option<&Arc<RouterPlugin>>,
) -> Result<Arc<RouterPlugin>, PluginError> {
    let same_file = |p: &&Arc<RouterPlugin>| p.spec.file == spec.file;
    let (component, version) = match runtime.load(&spec.file, "router") {
        Ok(loaded) => loaded,
        Err(PluginError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && before.filter(same_file).is_some() =>
        {
            let kept = before
                .filter(same_file)
                .map(|p| (p.component.clone(), p.version));
            let kept = kept.unwrap_or_else(|| unreachable!("checked by the guard"));
            tracing::warn!(route = %spec.route, file = %spec.file.display(), version = %&kept.0.hash[..12],
                "plugin file was deleted; the route keeps the loaded version until the config stops referencing it");
            kept
        }
        Err(e) => return Err(e),
    };
    if let Some(before) = before
        && Arc::ptr_eq(&before.component, &component)
        && before.spec == spec
    {
        return Ok(before.clone());
    }
    let plugin = RouterPlugin::from_component(runtime, component, version, spec)?;
    tracing::info!(route = %plugin.spec.route, plugin = %plugin.name(),
        version = %&plugin.component.hash[..12], cached = plugin.component.from_cache, "router plugin loaded");
    Ok(plugin)
}

pub fn policy_spec(config: &Config, pool: &str, plugin: &PolicyPlugin, built: &Pool) -> PolicySpec {
    PolicySpec {
        file: config.plugin_dir().join(&plugin.plugin),
        pool: pool.to_string(),
        config: flatten_table(&plugin.config),
        deadline: plugin.deadline,
        memory_mb: plugin.memory_mb,
        backends: backend_infos(built),
    }
}

/// Loads a pool's health or breaker plugin, reusing `before` (and so its
/// running instance and counts) when neither the file nor the binding
/// changed, or when the file is gone.
pub fn bind_policy<P>(
    runtime: &PluginRuntime,
    spec: PolicySpec,
    before: Option<Arc<crate::plugin::Policy<P>>>,
    interface: &str,
    load: impl FnOnce(&PluginRuntime, PolicySpec) -> Result<Arc<crate::plugin::Policy<P>>, PluginError>,
) -> Result<Arc<crate::plugin::Policy<P>>, PluginError> {
    let before = before.filter(|p| p.spec.file == spec.file);
    match runtime.load(&spec.file, interface) {
        Ok((component, _)) => {
            if let Some(before) = before
                && Arc::ptr_eq(&before.component, &component)
                && before.spec == spec
            {
                return Ok(before);
            }
        }
        Err(PluginError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && before.is_some() =>
        {
            if let Some(before) = before.filter(|b| b.spec == spec) {
                tracing::warn!(pool = %spec.pool, file = %spec.file.display(),
                    "plugin file was deleted; the pool keeps the loaded version until the config stops referencing it");
                return Ok(before);
            }
        }
        Err(e) => return Err(e),
    }
    let policy = load(runtime, spec)?;
    tracing::info!(pool = %policy.spec.pool, plugin = %policy.name(),
        version = %&policy.component.hash[..12], "{interface} plugin loaded");
    Ok(policy)
}

/// A pool's static facts in the plugin interface's shape.
pub fn backend_infos(pool: &Pool) -> Vec<wit::BackendInfo> {
    pool.backends
        .iter()
        .map(|b| wit::BackendInfo {
            id: b.id,
            name: b.name.clone(),
            address: b.address.clone(),
            weight: b.weight,
            labels: b.labels.clone(),
        })
        .collect()
}
