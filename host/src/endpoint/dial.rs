//! Opening a connection to an endpoint: TCP to one of its resolved
//! addresses, then TLS with ALPN where it speaks TLS; a local failure (out
//! of descriptors) is told from the backend's.

use super::Endpoint;
use crate::config::Protocol;
use crate::tls::ALPN_H2;
use std::net::SocketAddr;
use std::time::Duration;

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
