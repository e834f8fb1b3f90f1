//! DNS discovery: a pool whose backends are the addresses a name resolves
//! to, such as a Kubernetes headless service of agent workers.
//!
//! One thread resolves each discovering pool's name on its interval. When
//! the set of addresses changes, the route table is rebuilt around it:
//! backends are named by address, so one that stays keeps its live and
//! breaker state, one that goes drains on the table it started with, and
//! routers get the new backend list. A failed resolution keeps the last
//! good set and is logged once until the name resolves again.

use crate::reload::Reloader;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Turns a `host:port` into addresses. The system resolver by default;
/// tests and embedders may bring their own.
pub trait Resolve: Send + Sync {
    fn resolve(&self, name: &str) -> std::io::Result<Vec<SocketAddr>>;
}

/// The operating system's resolver (`getaddrinfo`, so `/etc/hosts` and
/// `resolv.conf` apply as for any program).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
        Ok(name.to_socket_addrs()?.collect())
    }
}

/// How often the thread looks for a pool that is due.
const TICK: Duration = Duration::from_millis(250);

/// Resolves `name` once, for start-up; an error is logged.
pub fn resolve_once(resolver: &dyn Resolve, pool: &str, name: &str) -> Vec<SocketAddr> {
    match resolver.resolve(name) {
        Ok(addrs) => addrs,
        Err(e) => {
            tracing::warn!(
                pool,
                name,
                "discovery: cannot resolve: {e}; the pool starts without those backends"
            );
            Vec::new()
        }
    }
}

/// Starts the discovery thread; it ends when the reloader is gone.
pub fn start(reloader: Weak<Reloader>, resolver: Arc<dyn Resolve>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("switchyard-discovery".into())
        .spawn(move || {
            let mut due: HashMap<String, Instant> = HashMap::new();
            let mut failing: HashMap<String, bool> = HashMap::new();
            loop {
                std::thread::sleep(TICK);
                let Some(reloader) = reloader.upgrade() else { return };
                for (pool, discover) in reloader.discovering_pools() {
                    let now = Instant::now();
                    if due.get(&pool).is_some_and(|at| *at > now) {
                        continue;
                    }
                    due.insert(pool.clone(), now + discover.every);
                    let was_failing = failing.get(&pool).copied().unwrap_or(false);
                    match resolver.resolve(&discover.dns) {
                        Ok(addrs) if !addrs.is_empty() => {
                            if was_failing {
                                tracing::info!(pool, name = %discover.dns, "discovery: resolving again");
                            }
                            failing.insert(pool.clone(), false);
                            reloader.discovered(&pool, addrs);
                        }
                        result => {
                            metrics::counter!("switchyard_discovery_errors_total", "pool" => pool.clone())
                                .increment(1);
                            if !was_failing {
                                let why = match result {
                                    Err(e) => e.to_string(),
                                    Ok(_) => "no addresses".into(),
                                };
                                tracing::warn!(pool, name = %discover.dns,
                                    "discovery: cannot resolve ({why}); keeping the last good backends");
                            }
                            failing.insert(pool.clone(), true);
                        }
                    }
                }
            }
        })
        .map(|_| ())
}
