//! Per-thread pool of upstream connections, HTTP/1.1 and HTTP/2.
//!
//! Each worker thread keeps its own idle HTTP/1.1 `SendRequest` handles per
//! endpoint, so taking and returning a connection is a `Vec` push/pop with
//! no lock; a handle goes back to the pool when its response body has
//! ended. An endpoint that speaks HTTP/2 (by ALPN, or `h2c`) gets one
//! multiplexed connection per thread, whose handle every request clones.

use super::LocalExec;
use super::request_body::{ClientBody, ClientBodyError};
use crate::endpoint::{DialError, Endpoint};
use crate::pool::Backend;
use crate::route::{Deadlines, bounded};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Body of a request sent upstream: the client's body streamed, or held
/// whole (empty, or buffered so it can be sent again).
pub type UpstreamBody = Either<StreamedBody, Full<Bytes>>;

/// A client's body streamed upstream once, after the bytes already read
/// from it (to route on a field of it).
#[derive(Debug)]
pub struct StreamedBody {
    head: Option<Bytes>,
    rest: ClientBody,
}

impl StreamedBody {
    /// `head` (possibly empty), then the rest of `rest`.
    pub fn after(head: Bytes, rest: ClientBody) -> StreamedBody {
        StreamedBody {
            head: (!head.is_empty()).then_some(head),
            rest,
        }
    }
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, ClientBodyError>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let extra = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + extra);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}
type Sender = http1::SendRequest<UpstreamBody>;
type H2Sender = http2::SendRequest<UpstreamBody>;

/// Idle connections kept per backend and thread.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// Idle connections older than this are closed rather than reused; upstream
/// servers commonly drop idle keep-alive connections after 60 s or more.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made; the request was not sent and is returned
    /// so the next candidate can take it.
    #[error("{1}")]
    Connect(Box<Request<UpstreamBody>>, #[source] DialError),
    /// No response headers within the first-byte timeout.
    #[error("no response headers within the first-byte timeout")]
    Timeout,
    /// The connection failed after the request was (partly) sent.
    #[error("{0}")]
    Failed(#[source] hyper::Error),
    /// Sending failed because the client's body broke off or was
    /// malformed: the client's fault, not the backend's.
    #[error("{0}")]
    ClientBody(#[source] hyper::Error),
}

impl SendError {
    /// A failed send, blamed on the client when its body is what broke.
    fn failed(e: hyper::Error) -> SendError {
        let client = std::error::Error::source(&e).is_some_and(|s| s.is::<ClientBodyError>());
        if client {
            SendError::ClientBody(e)
        } else {
            SendError::Failed(e)
        }
    }

    /// The client-body error behind a [`SendError::ClientBody`].
    pub fn client_body(&self) -> Option<&ClientBodyError> {
        match self {
            SendError::ClientBody(e) => std::error::Error::source(e)?.downcast_ref(),
            _ => None,
        }
    }
}

struct IdleConnection {
    sender: Sender,
    since: Instant,
}

/// One thread's upstream connections, by endpoint connection key.
#[derive(Default)]
pub struct UpstreamPool {
    idle: RefCell<HashMap<usize, Vec<IdleConnection>>>,
    /// The HTTP/2 connection of each endpoint that speaks it.
    h2: RefCell<HashMap<usize, H2Sender>>,
}

/// A connection lent to one exchange; [`Lease::release`] returns it. An
/// HTTP/2 stream's lease holds nothing: its connection stays shared.
pub struct Lease {
    pool: Rc<UpstreamPool>,
    key: usize,
    sender: Option<Sender>,
}

impl Lease {
    /// Returns the connection to the pool once its response has ended.
    pub fn release(self) {
        let Some(sender) = self.sender else { return };
        if sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.borrow_mut();
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }
}

// === impl UpstreamPool ===

impl UpstreamPool {
    /// Sends `req` to `backend` over an idle connection, or a new one, and
    /// waits for the response headers up to `first_byte`. `replay` is a
    /// copy of a request held whole, used if a reused connection turns out
    /// to be closed.
    pub async fn send(
        self: &Rc<Self>,
        backend: &Backend,
        mut req: Request<UpstreamBody>,
        replay: Option<&Replay>,
        deadlines: &Deadlines,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let first_byte = deadlines.first_byte;
        let endpoint = &*backend.endpoint;
        let key = endpoint.connection_key;
        let upgrade = req.extensions().get::<WantsUpgrade>().is_some();
        if !upgrade && let Some(h2) = self.shared_h2(key) {
            return self.send_h2(backend, h2, req, replay, deadlines).await;
        }
        while let Some(mut conn) = self.take_idle(key) {
            if conn.since.elapsed() > MAX_IDLE_AGE || conn.sender.ready().await.is_err() {
                continue;
            }
            // An idle connection the backend has just closed fails only once
            // the request is written; a request held whole is sent again.
            match bounded(first_byte, conn.sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::Timeout),
                Ok(Ok(resp)) => return Ok((resp, self.lease(key, Some(conn.sender)))),
                Ok(Err(mut e)) => match (e.take_message(), replay) {
                    // Not written: try the next connection with it intact.
                    (Some(back), _) => req = back,
                    (None, Some(replay)) if is_stale(e.error()) => {
                        tracing::debug!(address = %backend.address, "reused connection was closed; sending again");
                        req = replay.build(backend);
                    }
                    (None, _) => return Err(SendError::failed(e.into_error())),
                },
            }
        }
        // Boxed: connecting is the rare path, and inline its state would
        // grow every request's future (moved whole on each poll hand-off).
        let conn = match Box::pin(connect(endpoint, deadlines.connect, upgrade)).await {
            Ok(conn) => conn,
            Err(reason) => return Err(SendError::Connect(Box::new(req), reason)),
        };
        let mut sender = match conn {
            Connection::H1(sender) => sender,
            Connection::H2(h2) => {
                // Requests that raced to connect converge on one connection;
                // the extra ones close as their handles drop.
                let shared = match self.shared_h2(key) {
                    Some(open) => open,
                    None => {
                        self.h2.borrow_mut().insert(key, h2.clone());
                        h2
                    }
                };
                return self.send_h2(backend, shared, req, replay, deadlines).await;
            }
        };
        match bounded(first_byte, sender.send_request(req)).await {
            Err(_) => Err(SendError::Timeout),
            Ok(Ok(resp)) => Ok((resp, self.lease(key, Some(sender)))),
            Ok(Err(e)) => Err(SendError::failed(e)),
        }
    }

    /// The endpoint's HTTP/2 connection on this thread, if it is open.
    fn shared_h2(&self, key: usize) -> Option<H2Sender> {
        let mut h2 = self.h2.borrow_mut();
        match h2.get(&key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                h2.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Sends `req` as one stream of an HTTP/2 connection. A connection that
    /// turns out to be gone is forgotten; a request held whole is then sent
    /// once more over a new one.
    async fn send_h2(
        self: &Rc<Self>,
        backend: &Backend,
        mut sender: H2Sender,
        req: Request<UpstreamBody>,
        replay: Option<&Replay>,
        deadlines: &Deadlines,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let first_byte = deadlines.first_byte;
        let endpoint = &*backend.endpoint;
        let key = endpoint.connection_key;
        let req = for_h2(req, endpoint);
        let sent = Box::pin(bounded(first_byte, async {
            sender.ready().await?;
            sender.send_request(req).await
        }))
        .await;
        match sent {
            Err(_) => Err(SendError::Timeout),
            Ok(Ok(resp)) => Ok((resp, self.lease(key, None))),
            Ok(Err(e)) => {
                if sender.is_closed() {
                    self.h2.borrow_mut().remove(&key);
                }
                match replay {
                    Some(replay) if is_stale(&e) || e.is_canceled() => {
                        tracing::debug!(endpoint = %endpoint.authority, "HTTP/2 connection was closed; sending again");
                        let again = replay.build(backend);
                        match Box::pin(connect(endpoint, deadlines.connect, false)).await {
                            Ok(Connection::H2(mut fresh)) => {
                                self.h2.borrow_mut().insert(key, fresh.clone());
                                match bounded(
                                    first_byte,
                                    fresh.send_request(for_h2(again, endpoint)),
                                )
                                .await
                                {
                                    Err(_) => Err(SendError::Timeout),
                                    Ok(Ok(resp)) => Ok((resp, self.lease(key, None))),
                                    Ok(Err(e)) => Err(SendError::failed(e)),
                                }
                            }
                            Ok(Connection::H1(mut h1)) => {
                                match bounded(first_byte, h1.send_request(again)).await {
                                    Err(_) => Err(SendError::Timeout),
                                    Ok(Ok(resp)) => Ok((resp, self.lease(key, Some(h1)))),
                                    Ok(Err(e)) => Err(SendError::failed(e)),
                                }
                            }
                            Err(_) => Err(SendError::failed(e)),
                        }
                    }
                    _ => Err(SendError::failed(e)),
                }
            }
        }
    }

    fn take_idle(&self, key: usize) -> Option<IdleConnection> {
        self.idle.borrow_mut().get_mut(&key)?.pop()
    }

    fn lease(self: &Rc<Self>, key: usize, sender: Option<Sender>) -> Lease {
        Lease {
            pool: self.clone(),
            key,
            sender,
        }
    }
}

/// A request held whole (head and a buffered or empty body), so it can be
/// sent more than once: to the next candidate, or again over a fresh
/// connection.
pub struct Replay {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Send the client's `host` rather than the backend's address.
    pub preserve_host: bool,
}

impl Replay {
    /// A copy of the request for `backend`, with its header rules applied.
    pub fn build(&self, backend: &Backend) -> Request<UpstreamBody> {
        let mut req = self.copy();
        if !self.preserve_host {
            req.headers_mut()
                .insert(http::header::HOST, backend.host_header.clone());
        }
        backend.rules.apply(req.headers_mut());
        req
    }

    fn copy(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Marks a request that asks to switch protocols, which only HTTP/1.1
/// carries upstream.
#[derive(Clone, Copy)]
pub struct WantsUpgrade;

/// `req` in HTTP/2's form: an absolute URI (`:scheme` and `:authority`)
/// in place of the `host` header.
fn for_h2(mut req: Request<UpstreamBody>, endpoint: &Endpoint) -> Request<UpstreamBody> {
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
fn is_stale(e: &hyper::Error) -> bool {
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

/// A new upstream connection, its driver running on this thread.
enum Connection {
    H1(Sender),
    H2(H2Sender),
}

/// Opens a connection to `endpoint` and starts its driver: HTTP/2 when the
/// endpoint speaks it (and `upgrade` does not ask for HTTP/1.1).
async fn connect(
    endpoint: &Endpoint,
    limit: Duration,
    upgrade: bool,
) -> Result<Connection, DialError> {
    let dialed = endpoint.dial(limit, upgrade).await?;
    let io = TokioIo::new(dialed.stream);
    let handshake_failed = |e: hyper::Error| DialError::Connect {
        authority: endpoint.authority.clone(),
        source: std::io::Error::other(format!("HTTP handshake: {e}")),
    };
    if dialed.h2 {
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(handshake_failed)?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream HTTP/2 connection ended: {e}");
            }
        });
        return Ok(Connection::H2(sender));
    }
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(io)
        .await
        .map_err(handshake_failed)?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(Connection::H1(sender))
}
