//! Per-thread pool of upstream connections, HTTP/1.1 and HTTP/2.
//!
//! Each worker thread keeps its own idle HTTP/1.1 connections per endpoint,
//! so taking and returning one is a `Vec` push/pop with no lock; a
//! connection goes back to the pool when its response body has ended. A
//! request held whole goes out on the [`lean`] client, driven by the
//! request's own task; a streamed body or a protocol upgrade goes through
//! hyper's client, whose connections are pooled apart. An endpoint that
//! speaks HTTP/2 (by ALPN, or `h2c`) gets one multiplexed connection per
//! thread, whose handle every request clones.

mod error;
mod hyper_client;
mod lean;
mod request;

pub use error::SendError;
use hyper_client::{Connection, connect, for_h2, handshake_h2, hyper_answer, is_stale};
pub use request::{Replay, StreamedBody};

/// Header slots kept free in maps the proxy fills and then adds to.
const SPARE_HEADERS: usize = 4;

use super::body::BodyError;
use crate::pool::Backend;
use crate::route::{Deadlines, bounded};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Body of a request sent upstream: the client's body streamed, or held
/// whole (empty, or buffered so it can be sent again).
pub type UpstreamBody = Either<StreamedBody, Full<Bytes>>;

type Sender = http1::SendRequest<UpstreamBody>;
type H2Sender = http2::SendRequest<UpstreamBody>;

/// Idle connections kept per backend and thread.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// Idle connections older than this are closed rather than reused; upstream
/// servers commonly drop idle keep-alive connections after 60 s or more.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

/// A response body from a backend: hyper's, or the lean client's.
pub enum Answer {
    Hyper(Incoming),
    Lean(lean::Body),
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let frame = match self.get_mut() {
            Answer::Hyper(b) => std::task::ready!(std::pin::Pin::new(b).poll_frame(cx))
                .map(|f| f.map_err(BodyError::from)),
            Answer::Lean(b) => std::task::ready!(std::pin::Pin::new(b).poll_frame(cx))
                .map(|f| f.map_err(BodyError::from)),
        };
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Hyper(b) => b.is_end_stream(),
            Answer::Lean(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Answer::Hyper(b) => b.size_hint(),
            Answer::Lean(b) => b.size_hint(),
        }
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Where a lean connection goes when its response body has ended.
pub struct Home {
    pool: Rc<UpstreamPool>,
    key: usize,
}

impl Home {
    fn put(self, conn: lean::Conn) {
        let mut idle = self.pool.lean.borrow_mut();
        let list = idle.entry(self.key).or_default();
        park(list, conn);
    }
}

/// Keeps `conn` idle in `list`, closing first the ones too old to reuse
/// (the oldest sit at the front), so a backend that stops getting requests
/// is not left holding connections it closed long ago.
fn park<C>(list: &mut Vec<Idle<C>>, conn: C) {
    let now = Instant::now();
    let expired = list
        .iter()
        .take_while(|c| now.duration_since(c.since) > MAX_IDLE_AGE)
        .count();
    list.drain(..expired);
    if list.len() < MAX_IDLE_PER_BACKEND {
        list.push(Idle { conn, since: now });
    }
}

/// One thread's upstream connections, by endpoint connection key.
#[derive(Default)]
pub struct UpstreamPool {
    /// Idle connections of hyper's client.
    idle: RefCell<HashMap<usize, Vec<Idle<Sender>>>>,
    /// Idle connections of the lean client.
    lean: RefCell<HashMap<usize, Vec<Idle<lean::Conn>>>>,
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
        park(idle.entry(self.key).or_default(), sender);
    }
}

// === impl UpstreamPool ===

impl UpstreamPool {
    /// Sends `req` to `backend` over an idle connection, or a new one, and
    /// waits for the response headers up to `first_byte` (counted from
    /// `since`, when the attempt started, on the lean client). `replay` is
    /// a copy of a request held whole, used if a reused connection turns
    /// out to be closed.
    pub async fn send(
        self: &Rc<Self>,
        backend: &Backend,
        req: Request<UpstreamBody>,
        replay: Option<&Replay>,
        deadlines: &Deadlines,
        since: Instant,
    ) -> Result<(Response<Answer>, Lease), SendError> {
        let key = backend.endpoint.connection_key;
        let upgrade = req.extensions().get::<WantsUpgrade>().is_some();
        let h2 = if upgrade { None } else { self.shared_h2(key) };
        if h2.is_none()
            && !upgrade
            && let Some(replay) = replay
        {
            return self.send_lean(backend, req, replay, deadlines, since).await;
        }
        // Boxed: only the lean client's state is in every request's
        // future, which each `.await` up the chain copies whole.
        Box::pin(self.send_hyper(backend, h2, req, replay, deadlines, upgrade)).await
    }

    /// [`send`](Self::send) over hyper's client: HTTP/2 (`h2`: the shared
    /// connection, if one is open), upgrades, and bodies not held whole.
    async fn send_hyper(
        self: &Rc<Self>,
        backend: &Backend,
        h2: Option<H2Sender>,
        mut req: Request<UpstreamBody>,
        replay: Option<&Replay>,
        deadlines: &Deadlines,
        upgrade: bool,
    ) -> Result<(Response<Answer>, Lease), SendError> {
        let first_byte = deadlines.first_byte;
        let endpoint = &*backend.endpoint;
        let key = endpoint.connection_key;
        if let Some(h2) = h2 {
            return self.send_h2(backend, h2, req, replay, deadlines).await;
        }
        while let Some(mut conn) = self.take_idle(key) {
            if conn.since.elapsed() > MAX_IDLE_AGE || conn.conn.ready().await.is_err() {
                continue;
            }
            let mut sender = conn.conn;
            // An idle connection the backend has just closed fails only once
            // the request is written; a request held whole is sent again.
            match bounded(first_byte, sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::Timeout),
                Ok(Ok(resp)) => return Ok((hyper_answer(resp), self.lease(key, Some(sender)))),
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
                let shared = self.share_h2(key, h2);
                return self.send_h2(backend, shared, req, replay, deadlines).await;
            }
        };
        match bounded(first_byte, sender.send_request(req)).await {
            Err(_) => Err(SendError::Timeout),
            Ok(Ok(resp)) => Ok((hyper_answer(resp), self.lease(key, Some(sender)))),
            Ok(Err(e)) => Err(SendError::failed(e)),
        }
    }

    /// Sends a request held whole on the lean client: over an idle
    /// connection that has stayed quiet, or a new one. A reused connection
    /// found closed before any answer gets the request again on the next.
    async fn send_lean(
        self: &Rc<Self>,
        backend: &Backend,
        req: Request<UpstreamBody>,
        replay: &Replay,
        deadlines: &Deadlines,
        since: Instant,
    ) -> Result<(Response<Answer>, Lease), SendError> {
        // Lets the other requests that became ready in this turn of the
        // event loop reach this point too, so a backend is woken once for
        // a burst of requests instead of once for each. hyper's client gets
        // the same from its connection task, which runs after the requests
        // that fed it. Measured in BENCHMARKS.md ("Sending upstream in
        // bursts").
        tokio::task::yield_now().await;
        let first_byte = deadlines.first_byte;
        let endpoint = &*backend.endpoint;
        let key = endpoint.connection_key;
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let home = || Home {
            pool: self.clone(),
            key,
        };
        while let Some(conn) = self.take_lean(key, since) {
            match conn
                .send(&head, &replay.body, home(), first_byte, since)
                .await
            {
                Ok(resp) => return Ok((resp.map(Answer::Lean), self.lease(key, None))),
                Err(e) if e.is_stale() => {
                    tracing::debug!(address = %backend.address, "reused connection was closed; sending again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let dialed = Box::pin(async {
            let dialed = endpoint.dial(deadlines.connect, false).await?;
            if dialed.h2 {
                return handshake_h2(dialed.stream, endpoint).await.map(Err);
            }
            Ok(Ok(lean::Conn::new(dialed.stream)))
        })
        .await;
        let conn = match dialed {
            Ok(Ok(conn)) => conn,
            Ok(Err(h2)) => {
                // The endpoint chose HTTP/2 by ALPN.
                let shared = self.share_h2(key, h2);
                let (parts, ()) = head.into_parts();
                let req = Request::from_parts(parts, body);
                return Box::pin(self.send_h2(backend, shared, req, Some(replay), deadlines)).await;
            }
            Err(reason) => {
                let (parts, ()) = head.into_parts();
                return Err(SendError::Connect(
                    Box::new(Request::from_parts(parts, body)),
                    reason,
                ));
            }
        };
        match conn
            .send(&head, &replay.body, home(), first_byte, since)
            .await
        {
            Ok(resp) => Ok((resp.map(Answer::Lean), self.lease(key, None))),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes `h2` the endpoint's shared HTTP/2 connection, unless another
    /// request's connect got there first: requests that raced to connect
    /// converge on one connection, and the extra ones close as their
    /// handles drop.
    fn share_h2(&self, key: usize, h2: H2Sender) -> H2Sender {
        match self.shared_h2(key) {
            Some(open) => open,
            None => {
                self.h2.borrow_mut().insert(key, h2.clone());
                h2
            }
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
    ) -> Result<(Response<Answer>, Lease), SendError> {
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
            Ok(Ok(resp)) => Ok((hyper_answer(resp), self.lease(key, None))),
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
                                    Ok(Ok(resp)) => Ok((hyper_answer(resp), self.lease(key, None))),
                                    Ok(Err(e)) => Err(SendError::failed(e)),
                                }
                            }
                            Ok(Connection::H1(mut h1)) => {
                                match bounded(first_byte, h1.send_request(again)).await {
                                    Err(_) => Err(SendError::Timeout),
                                    Ok(Ok(resp)) => {
                                        Ok((hyper_answer(resp), self.lease(key, Some(h1))))
                                    }
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

    fn take_idle(&self, key: usize) -> Option<Idle<Sender>> {
        self.idle.borrow_mut().get_mut(&key)?.pop()
    }

    /// The most recently parked lean connection that is young enough and
    /// has stayed quiet; the others are closed.
    /// An idle lean connection to `key` that is young and quiet enough to
    /// carry a request; `now` is the attempt's start (no clock read here).
    fn take_lean(&self, key: usize, now: Instant) -> Option<lean::Conn> {
        let mut idle = self.lean.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(idle) = list.pop() {
            if now.saturating_duration_since(idle.since) <= MAX_IDLE_AGE && idle.conn.is_quiet() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn lease(self: &Rc<Self>, key: usize, sender: Option<Sender>) -> Lease {
        Lease {
            pool: self.clone(),
            key,
            sender,
        }
    }
}

/// Marks a request that asks to switch protocols, which only HTTP/1.1
/// carries upstream.
#[derive(Clone, Copy)]
pub struct WantsUpgrade;
