//! Wiring: from a validated config to a serving proxy, admin listener and
//! reload watcher.

use crate::balance::LiveRegistry;
use crate::config::Config;
use crate::control::Control;
use crate::plugin::PluginRuntime;
use crate::proxy::{self, RunningProxy, Shared};
use crate::reload::{ReloadWatcher, Reloader};
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config could not be put into service; names file and line.
    #[error("{0}")]
    Config(String),
    #[error("plugin runtime: {0}")]
    Runtime(#[from] crate::plugin::RuntimeError),
    #[error("cannot start the control thread: {0}")]
    Control(#[source] std::io::Error),
    #[error("shared store: {0}")]
    Shared(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Proxy(#[from] proxy::ListenError),
}

/// A running proxy with its admin listener and reload watcher.
pub struct Switchyard {
    pub proxy: RunningProxy,
    pub admin_addr: Option<SocketAddr>,
    /// Reloads the config and plugins: on file changes, `SIGHUP`, or call.
    pub reloader: Arc<Reloader>,
    _watcher: Option<ReloadWatcher>,
    /// Health probes and breakers; stopped after the proxy drains.
    control: Option<Control>,
}

impl Switchyard {
    /// Loads every plugin the config references, then starts listening:
    /// no request is accepted before its route's policy is ready.
    pub fn start(config: &Config) -> Result<Switchyard, StartError> {
        Switchyard::start_with(config, Arc::new(crate::discovery::SystemResolver))
    }

    /// Like [`Switchyard::start`], with the resolver pools' `discover`
    /// names go through.
    pub fn start_with(
        config: &Config,
        resolver: Arc<dyn crate::discovery::Resolve>,
    ) -> Result<Switchyard, StartError> {
        crate::admin::prometheus();
        crate::proxy::raise_open_file_limit();
        let runtime = PluginRuntime::new(Some(config.cache_dir())).map_err(StartError::Runtime)?;
        let control = Control::start().map_err(StartError::Control)?;
        let mut registry = LiveRegistry::with_control(control.sender());
        runtime
            .shared()
            .configure(&config.shared)
            .map_err(StartError::Shared)?;
        for (name, pool) in &config.pools {
            if let Some(d) = &pool.discover {
                let found = crate::discovery::resolve_once(resolver.as_ref(), name, &d.dns);
                registry.set_discovered(name, found);
            }
        }
        let table = crate::build::route_table(config, &runtime, &mut registry, None)
            .map_err(|e| StartError::Config(e.located(config)))?;
        control.link().apply(table.pools.clone());
        let listen_err = |addr: &str| {
            let addr = addr.to_string();
            move |source| StartError::Listen { addr, source }
        };
        let listen: SocketAddr = config
            .server
            .listen
            .parse()
            .map_err(|e| listen_err(&config.server.listen)(std::io::Error::other(e)))?;
        let shared = Shared::new(table, config.server.clone());
        let reloader = Arc::new(Reloader::new(
            config.clone(),
            runtime,
            shared.clone(),
            registry,
            control.link(),
        ));
        let admin_addr = match &config.admin {
            Some(a) => {
                let addr: SocketAddr = a
                    .listen
                    .parse()
                    .map_err(|e| listen_err(&a.listen)(std::io::Error::other(e)))?;
                Some(
                    crate::admin::start(addr, reloader.clone(), a.bearer_token())
                        .map_err(listen_err(&a.listen))?,
                )
            }
            None => None,
        };
        let proxy = proxy::start(shared, listen, config.worker_count()).map_err(|e| match e {
            proxy::ListenError::Io(source) => listen_err(&config.server.listen)(source),
            other => StartError::Proxy(other),
        })?;
        if config.pools.values().any(|p| p.discover.is_some())
            && let Err(e) = crate::discovery::start(Arc::downgrade(&reloader), resolver)
        {
            tracing::error!("cannot start discovery; pools keep the backends found at start: {e}");
        }
        let watcher = if config.plugins.watch {
            match ReloadWatcher::start(reloader.clone(), &config.plugin_dir()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("cannot watch files, reload with SIGHUP: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Switchyard {
            proxy,
            admin_addr,
            reloader,
            _watcher: watcher,
            control: Some(control),
        })
    }

    /// Address the proxy accepts on.
    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    /// Stops watching, stops accepting and drains in-flight requests.
    pub fn shutdown(mut self) {
        drop(self._watcher);
        self.proxy.shutdown();
        if let Some(control) = self.control.take() {
            control.stop();
        }
    }
}
