//! Per-thread pool of upstream HTTP/1.1 connections.
//!
//! Each worker thread keeps its own idle `SendRequest` handles per backend,
//! so taking and returning a connection is a `Vec` push/pop with no lock. A
//! handle goes back to the pool when its response body has ended.

use crate::balance::Backend;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Body of a request sent upstream: the client's body streamed, or held
/// whole (empty, or buffered so it can be sent again).
pub type UpstreamBody = Either<StreamedBody, Full<Bytes>>;

/// A client's body streamed upstream once, after the bytes already read
/// from it (to route on a field of it).
#[derive(Debug)]
pub struct StreamedBody {
    head: Option<Bytes>,
    rest: Incoming,
}

impl StreamedBody {
    /// `head` (possibly empty), then the rest of `rest`.
    pub fn after(head: Bytes, rest: Incoming) -> StreamedBody {
        StreamedBody {
            head: (!head.is_empty()).then_some(head),
            rest,
        }
    }
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
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

/// Idle connections kept per backend and thread.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// Idle connections older than this are closed rather than reused; upstream
/// servers commonly drop idle keep-alive connections after 60 s or more.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

/// Why a request could not be sent or answered.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request was not sent and is returned
    /// so the next candidate can take it.
    Connect(Box<Request<UpstreamBody>>, String),
    /// No response headers within the first-byte timeout.
    Timeout,
    /// The connection failed after the request was (partly) sent.
    Failed(hyper::Error),
}

struct IdleConnection {
    sender: Sender,
    since: Instant,
}

/// One thread's upstream connections, by backend connection key.
#[derive(Default)]
pub struct UpstreamPool {
    idle: RefCell<HashMap<usize, Vec<IdleConnection>>>,
}

/// A connection lent to one exchange; [`Lease::release`] returns it.
pub struct Lease {
    pool: Rc<UpstreamPool>,
    key: usize,
    sender: Sender,
}

impl Lease {
    /// Returns the connection to the pool once its response has ended.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.borrow_mut();
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(IdleConnection {
                sender: self.sender,
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
        connect_timeout: Duration,
        first_byte: Duration,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let key = backend.connection_key;
        while let Some(mut conn) = self.take_idle(key) {
            if conn.since.elapsed() > MAX_IDLE_AGE || conn.sender.ready().await.is_err() {
                continue;
            }
            // An idle connection the backend has just closed fails only once
            // the request is written; a request held whole is sent again.
            match with_timeout(first_byte, conn.sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::Timeout),
                Ok(Ok(resp)) => return Ok((resp, self.lease(key, conn.sender))),
                Ok(Err(mut e)) => match (e.take_message(), replay) {
                    // Not written: try the next connection with it intact.
                    (Some(back), _) => req = back,
                    (None, Some(replay)) if is_stale(e.error()) => {
                        tracing::debug!(address = %backend.address, "reused connection was closed; sending again");
                        req = replay.build(backend);
                    }
                    (None, _) => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        // Boxed: connecting is the rare path, and inline its state would
        // grow every request's future (moved whole on each poll hand-off).
        let mut sender = match Box::pin(connect(&backend.address, connect_timeout)).await {
            Ok(sender) => sender,
            Err(reason) => return Err(SendError::Connect(Box::new(req), reason)),
        };
        match with_timeout(first_byte, sender.send_request(req)).await {
            Err(_) => Err(SendError::Timeout),
            Ok(Ok(resp)) => Ok((resp, self.lease(key, sender))),
            Ok(Err(e)) => Err(SendError::Failed(e)),
        }
    }

    fn take_idle(&self, key: usize) -> Option<IdleConnection> {
        self.idle.borrow_mut().get_mut(&key)?.pop()
    }

    fn lease(self: &Rc<Self>, key: usize, sender: Sender) -> Lease {
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
    /// A copy of the request for `backend`.
    pub fn build(&self, backend: &Backend) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if !self.preserve_host {
            req.headers_mut()
                .insert(http::header::HOST, backend.host_header.clone());
        }
        req
    }
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

/// `fut` bounded by `limit` (0: unbounded), `None` when it ran out. Not an
/// `async fn`: a wrapper layer would hold a second copy of `fut`, and this
/// sits on every request's path.
fn with_timeout<F: Future>(limit: Duration, fut: F) -> tokio::time::Timeout<F> {
    // tokio treats a deadline past the clock's range as never.
    let limit = if limit.is_zero() {
        Duration::MAX
    } else {
        limit
    };
    tokio::time::timeout(limit, fut)
}

/// Opens a connection and starts its HTTP/1.1 driver on this thread.
async fn connect(address: &str, limit: Duration) -> Result<Sender, String> {
    let stream = match with_timeout(limit, TcpStream::connect(address)).await {
        Err(_) => return Err(format!("connect to {address} timed out after {limit:?}")),
        Ok(Err(e)) => return Err(format!("connect to {address}: {e}")),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {address}: {e}"))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}
