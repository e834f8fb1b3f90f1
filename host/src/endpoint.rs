//! How the proxy reaches one backend and what it adds to each request:
//! address and resolved IPs, TLS, HTTP version, injected credentials.
//!
//! An [`Endpoint`] is the identity of a connection: backends with the same
//! address and TLS settings share one, and with it their pooled
//! connections, resolved addresses and TLS session cache, across reloads.

use crate::config::{
    BackendConfig, CLIENT_AUTH_HEADERS, PoolConfig, Protocol, TlsSettings, split_address,
};
use crate::refresh::FileStamp;
use crate::secret::{SecretError, SecretHeader};
use crate::tls::{self, ALPN_H2, ALPN_HTTP1, TlsError};
use http::{HeaderMap, HeaderName};
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

/// Headers a backend's requests get and lose: the pool's, then the
/// backend's own.
#[derive(Default)]
pub struct RequestRules {
    set: Vec<(HeaderName, Arc<SecretHeader>)>,
    remove: Vec<HeaderName>,
    /// Drop the client's own credentials, since the proxy brings its own.
    pub strip_client_auth: bool,
}

impl RequestRules {
    /// The rules of `backend` of `pool`; file secrets resolve against `base`.
    pub fn new(
        pool: &PoolConfig,
        backend: &BackendConfig,
        base: &Path,
    ) -> Result<RequestRules, EndpointError> {
        let mut rules = RequestRules::default();
        for (name, source) in pool.set_headers.iter().chain(&backend.set_headers) {
            let header = header_name(name)?;
            let value = SecretHeader::load(source, base)
                .map_err(|e| EndpointError::Header(name.clone(), e))?;
            rules.set.retain(|(n, _)| *n != header);
            rules.set.push((header, value));
        }
        for name in pool.remove_headers.iter().chain(&backend.remove_headers) {
            rules.remove.push(header_name(name)?);
        }
        rules.strip_client_auth = !pool.pass_client_auth && !rules.set.is_empty();
        Ok(rules)
    }

    /// Whether the rules change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty() && !self.strip_client_auth
    }

    /// Applies the rules to a request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.strip_client_auth {
            strip_client_auth(headers);
        }
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.value());
        }
    }
}

impl RequestRules {
    /// Removes what [`RequestRules::apply`] set, before a request that was
    /// not sent goes to another backend.
    pub fn undo(&self, headers: &mut HeaderMap) {
        for (name, _) in &self.set {
            headers.remove(name);
        }
    }
}

/// Removes the client's credential headers.
pub fn strip_client_auth(headers: &mut HeaderMap) {
    for name in CLIENT_AUTH_HEADERS {
        headers.remove(name);
    }
}

fn header_name(name: &str) -> Result<HeaderName, EndpointError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| EndpointError::HeaderName(name.into()))
}

impl crate::refresh::Refresh for Endpoint {
    fn refresh(&self) {
        self.re_resolve();
    }
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Resolve(String),
    #[error("connect to {authority} timed out after {after:?}")]
    Timeout { authority: String, after: Duration },
    #[error("connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    /// The proxy's own trouble (out of file descriptors, memory or
    /// buffers): not the backend's fault, never counted against it.
    #[error("the proxy cannot open a connection to {authority}: {source}")]
    Local {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {authority}: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
}

impl DialError {
    /// Whether the failure is the proxy's own, not the backend's.
    pub fn is_local(&self) -> bool {
        matches!(self, DialError::Local { .. })
    }
}

/// Errors of the local machine: descriptors, memory, buffers.
fn is_local(e: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOMEM, ENOBUFS on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 12 | 105))
}

/// A connection to a backend, plain or TLS.
pub enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// What a new connection speaks.
pub struct Dialed {
    pub stream: Stream,
    /// HTTP/2: chosen by ALPN, or prior knowledge (`h2c`, `h2`).
    pub h2: bool,
}

impl Endpoint {
    /// Opens a connection within `limit` (zero: no limit): TCP to the
    /// resolved addresses in turn, then the TLS handshake. `http1` asks for
    /// HTTP/1.1 whatever the endpoint prefers (protocol upgrades need it).
    pub async fn dial(&self, limit: Duration, http1: bool) -> Result<Dialed, DialError> {
        let limit = if limit.is_zero() {
            Duration::MAX
        } else {
            limit
        };
        match tokio::time::timeout(limit, self.dial_now(http1)).await {
            Ok(result) => result,
            Err(_) => Err(DialError::Timeout {
                authority: self.authority.clone(),
                after: limit,
            }),
        }
    }

    async fn dial_now(&self, http1: bool) -> Result<Dialed, DialError> {
        let mut addrs = self.addrs();
        if addrs.is_empty() {
            // Never resolved yet (the name failed at load): try now, on the
            // blocking pool, so the worker thread does not wait.
            let host = self
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host, self.port))
                .await
                .map_err(|e| DialError::Resolve(format!("cannot resolve {}: {e}", self.host)))?
                .collect();
            if found.is_empty() {
                return Err(DialError::Resolve(format!(
                    "cannot resolve {}: no addresses",
                    self.host
                )));
            }
            addrs = found.into();
            self.store(addrs.clone());
        }
        let tcp = tokio::net::TcpStream::connect(&addrs[..])
            .await
            .map_err(|source| {
                let authority = self.authority.clone();
                if is_local(&source) {
                    DialError::Local { authority, source }
                } else {
                    DialError::Connect { authority, source }
                }
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            let h2 = !http1 && matches!(self.protocol, Protocol::H2c | Protocol::H2);
            return Ok(Dialed {
                stream: Stream::Plain(tcp),
                h2,
            });
        };
        let config = if http1 { &tls.http1 } else { &tls.config };
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|source| DialError::Tls {
                authority: self.authority.clone(),
                source,
            })?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        Ok(Dialed {
            stream: Stream::Tls(Box::new(stream)),
            h2,
        })
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}
