//! The client's request body as the proxy reads it: with a deadline on
//! every wait for the next bytes, like nginx's `client_body_timeout`, so a
//! client trickling its upload cannot hold a connection, an admission slot
//! and a backend's attention for ever; its first bytes peeked for a router
//! that routes on a body field; and the body held whole for replay on
//! retry when it is small enough, or streamed once.

use super::upstream::{Replay, StreamedBody, UpstreamBody};
use bytes::Bytes;
use http::{Request, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

/// Why the client's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("{0}")]
    Read(#[from] hyper::Error),
    #[error("the client sent no body bytes for {0:?}")]
    Timeout(Duration),
}

/// Where a client's request body comes from: hyper's connection, or the
/// lean HTTP/1.1 server, which reads small bodies whole with their head.
#[derive(Debug)]
pub enum Source {
    Hyper(Incoming),
    /// The whole body.
    Whole(Bytes),
}

/// A client's request body with a read deadline between frames.
#[derive(Debug)]
pub struct ClientBody {
    /// `None` for a body the proxy already holds whole (a job's request).
    inner: Option<Incoming>,
    /// A body read whole before the request was served; taken by the
    /// first read.
    whole: Option<Bytes>,
    /// Longest wait for the next frame; zero: no limit.
    gap: Duration,
    /// Made on the first wait, so bodies that arrive at once never touch a
    /// timer; re-armed for each later wait.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ClientBody {
    pub fn new(source: Source, gap: Duration) -> ClientBody {
        let (inner, whole) = match source {
            Source::Hyper(body) => (Some(body), None),
            Source::Whole(bytes) => (None, Some(bytes).filter(|b| !b.is_empty())),
        };
        ClientBody {
            inner,
            whole,
            gap,
            timer: None,
            armed: false,
        }
    }

    /// A body with nothing (left) to read.
    pub fn empty() -> ClientBody {
        ClientBody {
            inner: None,
            whole: None,
            gap: Duration::ZERO,
            timer: None,
            armed: false,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if let Some(whole) = this.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(whole))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::from)))
            }
            Poll::Pending if this.gap.is_zero() => Poll::Pending,
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.gap;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    timer.as_mut().reset(deadline);
                    this.armed = true;
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(ClientBodyError::timed_out(this.gap))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.whole.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.whole, &self.inner) {
            (Some(whole), _) => SizeHint::with_exact(whole.len() as u64),
            (None, Some(inner)) => inner.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

impl ClientBodyError {
    /// The client's body stalled for `gap`: counted, and said so.
    pub fn timed_out(gap: Duration) -> ClientBodyError {
        metrics::counter!("switchyard_timeouts_total", "route" => "", "kind" => "client_body")
            .increment(1);
        ClientBodyError::Timeout(gap)
    }
}

/// Why a request could not be held whole.
pub enum Held {
    /// Its body is too large or of unknown length: it streams, once.
    Streamed(Box<Request<UpstreamBody>>),
    /// The client's body broke, or stalled, while it was read.
    Failed(ClientBodyError),
}

/// Holds the request whole when its body is empty or declares a length
/// within `limit`, so it can be sent more than once. A body-less request
/// (the common GET) is held without awaiting anything.
pub async fn hold(
    parts: http::request::Parts,
    body: ClientBody,
    peeked: Option<Peeked>,
    limit: u64,
    preserve_host: bool,
) -> Result<Replay, Held> {
    let held = |parts: http::request::Parts, body| Replay {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        preserve_host,
    };
    match peeked {
        // Read whole to find a body attribute: held, whatever its size.
        Some(Peeked {
            head,
            complete: true,
            ..
        }) => return Ok(held(parts, head)),
        Some(Peeked { head, .. }) => {
            return Err(Held::Streamed(Box::new(Request::from_parts(
                parts,
                Either::Left(StreamedBody::after(head, body)),
            ))));
        }
        None => {}
    }
    if body.is_end_stream() {
        return Ok(held(parts, Bytes::new()));
    }
    let mut body = body;
    if body.inner.is_none()
        && let Some(whole) = body.whole.take_if(|w| w.len() as u64 <= limit)
    {
        return Ok(held(parts, whole));
    }
    match body.size_hint().exact() {
        Some(n) if n <= limit => match Box::pin(body.collect()).await {
            Ok(collected) => Ok(held(parts, collected.to_bytes())),
            Err(e) => Err(Held::Failed(e)),
        },
        _ => Err(Held::Streamed(Box::new(Request::from_parts(
            parts,
            Either::Left(StreamedBody::after(Bytes::new(), body)),
        )))),
    }
}

/// The start of a request body, read before the routing decision for a
/// router that routes on a field of it.
pub struct Peeked {
    /// What was read: at least `limit` bytes unless the body is shorter;
    /// its last frame may run past `limit`.
    pub head: Bytes,
    /// Whether `head` is the whole body.
    pub complete: bool,
    limit: usize,
}

impl Peeked {
    /// A body read whole, `limit` bytes of it shown to the router.
    pub fn whole(body: Bytes, limit: usize) -> Peeked {
        Peeked {
            head: body,
            complete: true,
            limit,
        }
    }

    /// The part a router may see: the first `limit` bytes, and whether they
    /// are the whole body.
    pub fn view(&self) -> super::worker::BodyView<'_> {
        let prefix = &self.head[..self.head.len().min(self.limit)];
        super::worker::BodyView {
            prefix,
            whole: self.complete && prefix.len() == self.head.len(),
        }
    }
}

/// Whether `req` declares a JSON body.
pub fn is_json<B>(req: &Request<B>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/json")
    })
}

/// Reads up to `limit` bytes of `req`'s body, stopping early at its end.
/// The bytes read go upstream ahead of the rest, so the body is sent on
/// unchanged.
pub async fn peek(body: &mut ClientBody, limit: usize) -> Result<Peeked, ClientBodyError> {
    let mut head = bytes::BytesMut::new();
    let mut complete = body.is_end_stream();
    while !complete && head.len() < limit {
        match body.frame().await {
            None => complete = true,
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    head.extend_from_slice(&data);
                }
                // Request trailers are rare and not forwarded.
                complete = body.is_end_stream();
            }
        }
    }
    Ok(Peeked {
        head: head.freeze(),
        complete,
        limit,
    })
}
