//! Assembles a route table from a config, the plugin runtime and the live
//! registry: pools with their live state and policies, routes with their
//! routers, admission and fallbacks. Runs on the thread that loads a
//! config, never on a worker.

mod plugins;

use crate::balance::LiveRegistry;
use crate::config::flatten_table;
use crate::config::{Config, HealthConfig};
use crate::jobs::JobStore;
use crate::plugin::PluginRuntime;
use crate::plugin::{BreakerPolicy, HealthPolicy, PluginError, RouterSpec};
use crate::pool::{OutcomeFeed, Pool, PoolHealth};
use crate::rollout::{Canary, Recorder, Shadow};
use crate::route::{
    Admission, ClientKeys, Fallback, JobRoute, Matcher, RetryBudget, Route, RouteMetrics,
    RouteTable, auth,
};
pub use plugins::backend_infos;
use plugins::{bind_policy, bind_router, policy_spec};
use std::collections::HashMap;
use std::sync::Arc;

/// A config that passed validation but could not be put into service.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    // The cause is part of the message, not a `source`, so that printing
    // the error with its chain does not repeat it.
    #[error("route `{route}`: {error}")]
    Plugin { route: String, error: PluginError },
    #[error("pool `{pool}`: {message}")]
    Pool { pool: String, message: String },
    #[error("pool `{pool}`: {error}")]
    PoolPlugin { pool: String, error: PluginError },
    #[error("route `{route}`: {message}")]
    Record { route: String, message: String },
    #[error("jobs: {message}")]
    Jobs { message: String },
    #[error("route `{route}`: auth: {error}")]
    Auth {
        route: String,
        error: auth::AuthError,
    },
}

impl BuildError {
    /// The error prefixed with where in `config` it stands: `file:line`
    /// for a route's plugin, the file otherwise.
    pub fn located(&self, config: &Config) -> String {
        match self {
            BuildError::Plugin { route, .. }
            | BuildError::Auth { route, .. }
            | BuildError::Record { route, .. } => {
                format!("{}: {self}", config.plugin_location(route))
            }
            _ => format!("{}: {self}", config.path.display()),
        }
    }
}

/// Builds the table: pools with their live state from `registry` (so
/// counts survive reloads), and every route's plugin loaded and
/// initialised. A route whose plugin file and binding are unchanged from
/// `previous` keeps its loaded plugin, instances and all; one whose
/// plugin file was deleted keeps its loaded version.
pub fn route_table(
    config: &Config,
    runtime: &PluginRuntime,
    registry: &mut LiveRegistry,
    previous: Option<&RouteTable>,
) -> Result<RouteTable, BuildError> {
    let mut pools = HashMap::new();
    for (name, pool_config) in &config.pools {
        let discovered = registry.discovered(name);
        let mut pool = Pool::new(name, pool_config, registry, &config.base_dir, &discovered)
            .map_err(|message| BuildError::Pool {
                pool: name.clone(),
                message,
            })?;
        let before = previous.and_then(|t| t.pools.iter().find(|p| p.name == *name));
        let plugin_err = |error| BuildError::PoolPlugin {
            pool: name.clone(),
            error,
        };
        if let Some(health) = &pool_config.health {
            let plugin = match health.plugin() {
                Some(p) => {
                    let spec = policy_spec(config, name, &p, &pool);
                    let old = before.and_then(|b| b.health.as_ref()?.plugin.clone());
                    Some(
                        bind_policy(runtime, spec, old, "health-check", HealthPolicy::load)
                            .map_err(plugin_err)?,
                    )
                }
                None => None,
            };
            pool.health = Some(PoolHealth {
                config: HealthConfig::clone(health),
                plugin,
            });
        }
        for (i, breaker) in pool_config.breakers.iter().enumerate() {
            let spec = policy_spec(config, name, breaker, &pool);
            let old = before.and_then(|b| b.breakers.get(i).cloned());
            pool.breakers.push(
                bind_policy(runtime, spec, old, "circuit-breaker", BreakerPolicy::load)
                    .map_err(plugin_err)?,
            );
        }
        if !pool.breakers.is_empty() {
            pool.feed = registry.control().map(|tx| OutcomeFeed {
                tx,
                pool: name.as_str().into(),
            });
        }
        pools.insert(name.clone(), Arc::new(pool));
    }
    let jobs = job_store(config, previous).map_err(|message| BuildError::Jobs { message })?;
    let mut routes = Vec::new();
    for route in &config.routes {
        let r = route.get_ref();
        let Some(pool) = pools.get(r.pool.get_ref()).cloned() else {
            continue; // validation guarantees the pool exists
        };
        let before = previous.and_then(|t| t.routes.iter().find(|x| x.name == r.name));
        let plugin_err = |error| BuildError::Plugin {
            route: r.name.clone(),
            error,
        };
        let (router, rollout) = match &r.router {
            None => (None, Rollout::default()),
            Some(router) => {
                let spec = |file: &str, table: Option<&toml::Table>| RouterSpec {
                    file: config.plugin_dir().join(file),
                    route: r.name.clone(),
                    config: flatten_table(table.unwrap_or(&router.config)),
                    on_failure: router.on_failure,
                    deadline: router.deadline,
                    memory_mb: router.memory_mb,
                    backends: backend_infos(&pool),
                    body_peek: router.body_peek as usize,
                };
                let live = bind_router(
                    runtime,
                    spec(router.plugin.get_ref(), None),
                    before.and_then(|x| x.router.as_ref()),
                )
                .map_err(plugin_err)?;
                let rollout = load_rollout(r, router, &live, &pool, before, spec, runtime)
                    .map_err(plugin_err)?;
                (Some(live), rollout)
            }
        };
        let record = match &r.record {
            None => None,
            Some(rc) => {
                let routers: Vec<_> = router
                    .iter()
                    .chain(rollout.canary.as_ref().map(|c| &c.previous))
                    .collect();
                let peek = r
                    .router
                    .as_ref()
                    .map_or(1024 * 1024, |x| x.body_peek as usize);
                Some(Arc::new(
                    Recorder::new(
                        &r.name,
                        rc,
                        &config.base_dir,
                        &routers,
                        &backend_infos(&pool),
                        peek,
                    )
                    .map_err(|message| BuildError::Record {
                        route: r.name.clone(),
                        message,
                    })?,
                ))
            }
        };
        let auth =
            match &r.auth {
                None => None,
                Some(a) => Some(ClientKeys::load(a, &config.base_dir).map_err(|error| {
                    BuildError::Auth {
                        route: r.name.clone(),
                        error,
                    }
                })?),
            };
        routes.push(
            Route {
                auth,
                name: r.name.clone(),
                matcher: Matcher::new(r),
                metrics: RouteMetrics::new(&r.name, &pool),
                pool,
                router,
                strip_prefix: r
                    .strip_prefix
                    .then(|| r.matches.path_prefix.clone())
                    .flatten()
                    .map(|p| p.trim_end_matches('/').to_string()),
                preserve_host: r.preserve_host,
                deadlines: crate::route::Deadlines::of(&r.timeouts),
                retries: r.retries.clone(),
                budget: RetryBudget::new(&r.retries),
                admission: r.limits.as_ref().and_then(|l| Admission::new(&r.name, l)),
                fallback: r.fallback.as_ref().map(|f| {
                    let pool = f
                        .pool
                        .as_ref()
                        .and_then(|p| pools.get(p.get_ref()).cloned());
                    Fallback::new(f, pool)
                }),
                body_peek: None,
                shadow: rollout.shadow,
                canary: rollout.canary,
                record,
                jobs: r.job_settings().zip(jobs.clone()).map(|(settings, store)| {
                    Arc::new(JobRoute {
                        counts: store.route_jobs(&r.name),
                        settings,
                        store,
                    })
                }),
            }
            .with_body_peek(),
        );
    }
    Ok(RouteTable {
        routes,
        pools: pools.into_values().collect(),
        backend_header: config.server.backend_header,
        access_log: config.server.access_log,
        debug_header: config.server.debug_header,
        body_read_timeout: config.server.body_read_timeout,
        jobs,
        runs: http::HeaderName::from_bytes(config.server.run_header.as_bytes())
            .ok()
            .map(|header| {
                Arc::new(crate::shared::runs::RunLedger::new(
                    header,
                    config.server.run_ttl,
                    runtime.shared().clone(),
                ))
            }),
    })
}

/// A route's shadow and canary, when its router has them.
#[derive(Default)]
struct Rollout {
    shadow: Option<Arc<Shadow>>,
    canary: Option<Arc<Canary>>,
}

/// Loads the shadow and the canary's previous version of `r`, reusing
/// what `before` (the route in the table being replaced) had loaded.
fn load_rollout(
    r: &crate::config::RouteConfig,
    router: &crate::config::RouterConfig,
    live: &Arc<crate::plugin::RouterPlugin>,
    pool: &Pool,
    before: Option<&Route>,
    spec: impl Fn(&str, Option<&toml::Table>) -> RouterSpec,
    runtime: &PluginRuntime,
) -> Result<Rollout, PluginError> {
    let mut out = Rollout::default();
    if let Some(c) = &router.canary {
        let old = before.and_then(|b| b.canary.as_ref()).map(|c| &c.previous);
        let previous = bind_router(runtime, spec(&c.previous, c.previous_config.as_ref()), old)?;
        out.canary = Some(Arc::new(Canary::new(&r.name, live, previous, c.clone())));
    }
    if let Some(s) = &router.shadow {
        let mut shadow_spec = spec(&s.plugin, s.config.as_ref());
        shadow_spec.deadline = s.deadline;
        shadow_spec.memory_mb = s.memory_mb;
        let old = before.and_then(|b| b.shadow.as_deref());
        let plugin = bind_router(runtime, shadow_spec, old.map(|o| &o.plugin))?;
        let names = pool.backends.iter().map(|b| b.name.clone()).collect();
        out.shadow = Some(Arc::new(Shadow::new(plugin, s.sample, &r.name, names, old)));
    }
    Ok(out)
}

/// The job store of the config's job routes: the previous table's when it
/// names the same one (so running jobs and counts carry over), else a new
/// one. `None` without job routes.
fn job_store(
    config: &Config,
    previous: Option<&RouteTable>,
) -> Result<Option<Arc<JobStore>>, String> {
    let Some(settings) = config
        .routes
        .iter()
        .find_map(|r| r.get_ref().job_settings())
    else {
        return Ok(None);
    };
    let url = settings.redis_url(&config.shared);
    if let Some(store) = previous.and_then(|t| t.jobs.as_ref())
        && store.names(url)
    {
        return Ok(Some(store.clone()));
    }
    Ok(Some(match url {
        None => JobStore::memory(),
        Some(url) => {
            let timeout = config
                .shared
                .timeout
                .max(std::time::Duration::from_millis(500));
            JobStore::redis(url, &config.shared.prefix, describe_url(url), timeout)?
        }
    }))
}

/// A Redis URL without its password.
fn describe_url(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) => format!("redis://…@{host}"),
        None => url.to_string(),
    }
}
