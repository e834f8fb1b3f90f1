//! Wiring: from a validated config to a serving proxy and admin listener.

use crate::config::Config;
use crate::plugin::PluginRuntime;
use crate::proxy::{self, RunningProxy, Shared};
use crate::route::{BuildError, RouteTable};
use crate::{admin, balance::BackendState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("plugin runtime: {0:#}")]
    Runtime(anyhow::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A running proxy with its admin listener.
pub struct Switchyard {
    pub proxy: RunningProxy,
    pub admin_addr: Option<SocketAddr>,
    pub runtime: Arc<PluginRuntime>,
    /// Live backend state by `pool/backend`, kept across reloads.
    pub states: Mutex<HashMap<String, Arc<BackendState>>>,
}

impl Switchyard {
    /// Loads every plugin the config references, then starts listening:
    /// no request is accepted before its route's policy is ready.
    pub fn start(config: &Config) -> Result<Switchyard, StartError> {
        crate::admin::prometheus();
        let runtime = PluginRuntime::new(Some(config.cache_dir())).map_err(StartError::Runtime)?;
        let mut states = HashMap::new();
        let table = RouteTable::build(config, &runtime, &mut states)?;
        Self::serve(config, table, runtime, states)
    }

    fn serve(
        config: &Config,
        table: RouteTable,
        runtime: Arc<PluginRuntime>,
        states: HashMap<String, Arc<BackendState>>,
    ) -> Result<Switchyard, StartError> {
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
        let admin_addr = match &config.admin {
            Some(a) => {
                let addr: SocketAddr = a
                    .listen
                    .parse()
                    .map_err(|e| listen_err(&a.listen)(std::io::Error::other(e)))?;
                Some(admin::start(addr, shared.clone()).map_err(listen_err(&a.listen))?)
            }
            None => None,
        };
        let proxy = proxy::start(shared, listen, config.worker_count())
            .map_err(listen_err(&config.server.listen))?;
        Ok(Switchyard {
            proxy,
            admin_addr,
            runtime,
            states: Mutex::new(states),
        })
    }

    /// Address the proxy accepts on.
    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    /// Stops accepting and drains in-flight requests.
    pub fn shutdown(self) {
        self.proxy.shutdown();
    }
}
