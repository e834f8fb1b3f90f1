//! hyper's client: new HTTP/1.1 and HTTP/2 connections, their drivers on
//! this thread, and how its errors and requests are read.

use super::{Answer, H2Sender, Sender, UpstreamBody};
use crate::endpoint::{DialError, Endpoint, Stream};
use crate::proxy::LocalExec;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::time::Duration;

/// `req` in HTTP/2's form: an absolute URI (`:scheme` and `:authority`)
/// in place of the `host` header.
pub(super) fn for_h2(mut req: Request<UpstreamBody>, endpoint: &Endpoint) -> Request<UpstreamBody> {
    let host = req.headers_mut().remove(http::header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&endpoint.authority);
    let scheme = if endpoint.is_tls() { "https" } else { "http" };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = format!("{scheme}://{authority}{path}").parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
    req
}

/// Whether `e` says the connection went away before any response, as an
/// idle keep-alive connection closed by the backend does.
pub(super) fn is_stale(e: &hyper::Error) -> bool {
    e.is_closed() || e.is_canceled() || e.is_incomplete_message() || {
        let mut source = std::error::Error::source(e);
        let mut io_reset = false;
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                io_reset = matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                );
            }
            source = s.source();
        }
        io_reset
    }
}

/// hyper's response, as an [`Answer`].
pub(super) fn hyper_answer(resp: Response<Incoming>) -> Response<Answer> {
    resp.map(Answer::Hyper)
}

/// A new connection of hyper's client, its driver running on this thread.
pub(super) enum Connection {
    H1(Sender),
    H2(H2Sender),
}

fn handshake_failed(endpoint: &Endpoint, e: hyper::Error) -> DialError {
    DialError::Connect {
        authority: endpoint.authority.clone(),
        source: std::io::Error::other(format!("HTTP handshake: {e}")),
    }
}

/// Starts HTTP/2 on a new connection, its driver running on this thread.
pub(super) async fn handshake_h2(
    stream: Stream,
    endpoint: &Endpoint,
) -> Result<H2Sender, DialError> {
    let (sender, conn) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| handshake_failed(endpoint, e))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Opens a connection of hyper's client to `endpoint`: HTTP/2 when the
/// endpoint speaks it (and `upgrade` does not ask for HTTP/1.1).
pub(super) async fn connect(
    endpoint: &Endpoint,
    limit: Duration,
    upgrade: bool,
) -> Result<Connection, DialError> {
    let dialed = endpoint.dial(limit, upgrade).await?;
    if dialed.h2 {
        return Ok(Connection::H2(handshake_h2(dialed.stream, endpoint).await?));
    }
    let io = TokioIo::new(dialed.stream);
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(io)
        .await
        .map_err(|e| handshake_failed(endpoint, e))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(Connection::H1(sender))
}
