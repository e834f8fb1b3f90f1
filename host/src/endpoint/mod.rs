//! How the proxy reaches one backend and what it adds to each request:
//! address and resolved IPs, TLS, HTTP version, injected credentials.
//!
//! An [`Endpoint`] is the identity of a connection: backends with the same
//! address and TLS settings share one, and with it their pooled
//! connections, resolved addresses and TLS session cache, across reloads.

mod dial;
mod rules;

pub use dial::{DialError, Dialed, Stream};
pub use rules::{RequestRules, strip_client_auth};

use crate::config::{BackendConfig, PoolConfig, Protocol, TlsSettings, split_address};
use crate::refresh::FileStamp;
use crate::secret::SecretError;
use crate::tls::{self, ALPN_H2, ALPN_HTTP1, TlsError};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a backend's host name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// A backend whose connection settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("address {0:?} is not [https://]host:port")]
    Address(String),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("header {0:?}: {1}")]
    Header(String, SecretError),
    #[error("{0:?} is not a valid header name")]
    HeaderName(String),
    #[error("protocol h2c is plain HTTP/2; it cannot be combined with tls")]
    H2cOverTls,
}

/// What identifies an endpoint; two backends with equal specs share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    host: String,
    port: u16,
    tls: Option<TlsSettings>,
    protocol: Protocol,
    /// The TLS files as they were read, so a rotated CA or client
    /// certificate makes a new endpoint.
    stamps: Vec<FileStamp>,
}

impl EndpointSpec {
    /// The spec of `backend` of `pool`: the backend's settings over the
    /// pool's; an `https://` address turns TLS on.
    pub fn new(
        pool: &PoolConfig,
        backend: &BackendConfig,
        base: &Path,
    ) -> Result<EndpointSpec, EndpointError> {
        let (scheme, host, port) = split_address(&backend.address)
            .ok_or_else(|| EndpointError::Address(backend.address.clone()))?;
        let configured = backend.tls.as_ref().or(pool.tls.as_ref());
        let tls = match (configured.map(|t| t.settings()), scheme) {
            (Some(Some(settings)), _) => Some(settings),
            (None, Some("https")) => Some(TlsSettings::default()),
            _ => None,
        };
        let protocol = backend.protocol.or(pool.protocol).unwrap_or_default();
        if tls.is_some() && protocol == Protocol::H2c {
            return Err(EndpointError::H2cOverTls);
        }
        let stamps = tls
            .iter()
            .flat_map(|t| [&t.ca_file, &t.cert_file, &t.key_file])
            .flatten()
            .map(|p| FileStamp::of(&base.join(p)))
            .collect();
        Ok(EndpointSpec {
            host: host.to_string(),
            port,
            tls,
            protocol,
            stamps,
        })
    }
}

/// TLS to one endpoint.
pub struct TlsClient {
    /// Offers the endpoint's protocols by ALPN.
    pub config: Arc<ClientConfig>,
    /// Offers HTTP/1.1 only, for protocol upgrades (WebSocket).
    pub http1: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// One reachable address: where to connect and how to speak to it.
pub struct Endpoint {
    /// `host:port`, for the `host` header, logs and errors.
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsClient>,
    pub protocol: Protocol,
    /// Key of this endpoint's connections in the per-thread upstream pool.
    pub connection_key: usize,
    /// Resolved addresses; empty until a resolution succeeds.
    addrs: Mutex<(Arc<[SocketAddr]>, Option<Instant>)>,
    /// The host is an IP address: nothing to resolve.
    literal: bool,
}

impl Endpoint {
    /// Builds an endpoint and resolves its host (on the calling thread,
    /// which is never a worker); a failed resolution is logged and tried
    /// again later, so a name that is down at start does not stop the
    /// proxy. `base` resolves TLS file paths.
    pub fn new(
        spec: &EndpointSpec,
        base: &Path,
        connection_key: usize,
    ) -> Result<Endpoint, EndpointError> {
        let authority = format!("{}:{}", spec.host, spec.port);
        let tls = match &spec.tls {
            None => None,
            Some(settings) => {
                if settings.insecure_skip_verify {
                    tracing::warn!(backend = %authority,
                        "TLS CERTIFICATE VERIFICATION IS OFF for this backend (insecure_skip_verify): anyone on the path can read and change its traffic");
                }
                let offered: &[&[u8]] = match spec.protocol {
                    Protocol::Http1 => &[ALPN_HTTP1],
                    Protocol::H2 => &[ALPN_H2],
                    Protocol::Auto | Protocol::H2c => &[ALPN_H2, ALPN_HTTP1],
                };
                let name = settings.server_name.as_deref().unwrap_or(&spec.host);
                Some(TlsClient {
                    config: tls::client_config(settings, base, offered)?,
                    http1: tls::client_config(settings, base, &[ALPN_HTTP1])?,
                    server_name: tls::server_name(name)?,
                })
            }
        };
        let literal = spec
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        let endpoint = Endpoint {
            authority,
            host: spec.host.clone(),
            port: spec.port,
            tls,
            protocol: spec.protocol,
            connection_key,
            addrs: Mutex::new((Arc::from([]), None)),
            literal: literal.is_ok(),
        };
        match literal {
            Ok(ip) => endpoint.store(Arc::from([SocketAddr::new(ip, spec.port)])),
            Err(_) => {
                if let Err(e) = endpoint.resolve() {
                    tracing::warn!("{e}; trying again in the background");
                }
            }
        }
        Ok(endpoint)
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The addresses last resolved (empty if none yet).
    pub fn addrs(&self) -> Arc<[SocketAddr]> {
        self.lock().0.clone()
    }

    /// Resolves the host again if it is a name last resolved over
    /// [`RESOLVE_EVERY`] ago, keeping the old addresses on failure.
    /// Blocking: called off the request path.
    pub fn re_resolve(&self) {
        let due = self.lock().1.is_none_or(|at| at.elapsed() >= RESOLVE_EVERY);
        if !self.literal
            && due
            && let Err(e) = self.resolve()
        {
            tracing::warn!("{e}; keeping the last addresses");
        }
    }

    /// Resolves the host now (blocking), storing what it finds.
    pub fn resolve(&self) -> Result<Arc<[SocketAddr]>, String> {
        let found: Result<Vec<SocketAddr>, String> = (
            self.host.trim_start_matches('[').trim_end_matches(']'),
            self.port,
        )
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| format!("cannot resolve {}: {e}", self.host));
        // Mark the attempt either way, so a failing name is retried on the
        // resolve interval rather than by every caller.
        self.lock().1 = Some(Instant::now());
        match found {
            Ok(addrs) if !addrs.is_empty() => {
                let addrs: Arc<[SocketAddr]> = addrs.into();
                self.store(addrs.clone());
                Ok(addrs)
            }
            Ok(_) => Err(format!("cannot resolve {}: no addresses", self.host)),
            Err(e) => Err(e),
        }
    }

    fn store(&self, addrs: Arc<[SocketAddr]>) {
        *self.lock() = (addrs, Some(Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Arc<[SocketAddr]>, Option<Instant>)> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::refresh::Refresh for Endpoint {
    fn refresh(&self) {
        self.re_resolve();
    }
}
