//! A lean HTTP/1.1 client for the keep-alive fast path: a request held
//! whole is written in one go on a pooled connection, and its response is
//! read by the request's own task. hyper's client drives each connection
//! from a task of its own and hands every request to it over a channel and
//! every response back over a oneshot; here there is no hand-off at all.
//! HTTP/2, protocol upgrades and streamed request bodies keep hyper.
//!
//! Responses are framed as RFC 9112 §6.3 says: no body after `HEAD`, 1xx,
//! 204 and 304; `transfer-encoding` ending in `chunked` decoded (trailers
//! kept); otherwise `content-length` (every value the same, or the response
//! is refused); otherwise the body runs to the connection's end. A
//! connection is reused only after a body framed by length or chunks that
//! was read to its end, with no stray bytes behind it, on a response that
//! did not ask to close.

mod framing;
mod head;

use super::Home;
use crate::endpoint::Stream;
use bytes::{Bytes, BytesMut};
use framing::{Chunk, Decoded, Framing, decode, framing};
use head::{Head, encode_head, parse_head};
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::time::Sleep;

/// Largest response head (and trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Fields parsed on the first try (each slot is zeroed); more: parsed again.
const FEW_HEADERS: usize = 24;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;
/// A write buffer grown past this (a head and a coalesced body, with room
/// for a large head) is not kept for the next request: an idle connection
/// holds at most this much besides its read buffer.
const KEEP_OUT: usize = COALESCE + 4 * 1024;

/// Why an exchange on a lean connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection ended before any byte of a response: on a reused
    /// connection, the backend had closed it while it was idle.
    #[error("connection closed before a response")]
    Closed,
    #[error("connection closed mid-response")]
    Incomplete,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid response from the backend: {0}")]
    Invalid(&'static str),
    /// No response head within the first-byte limit.
    #[error("no response head in time")]
    TimedOut,
}

impl Error {
    /// Whether the failure says the connection was gone before the request
    /// reached a live peer, as an idle keep-alive connection the backend
    /// closed is: the request may be sent again on another connection.
    pub fn is_stale(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// An HTTP/1.1 connection to a backend with what was read past the last
/// response.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
    /// Where each request is encoded; kept for the next one.
    out: Vec<u8>,
    /// The first-byte timer, made with the connection's first request and
    /// moved only when it fires before the current request's deadline (see
    /// [`poll_deadline`]): a request costs no timer registration of its own.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            timer: None,
        }
    }

    /// Whether the connection has been silent while idle. Data or an end
    /// from the backend now means it closed the connection (or broke the
    /// protocol): either way it must not carry a request. Costs no system
    /// call unless the socket was marked readable.
    pub fn is_quiet(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = match &self.io {
            Stream::Plain(tcp) => tcp,
            // Under TLS, unasked bytes while idle are a close_notify or a
            // late handshake message: not worth keeping the connection for.
            Stream::Tls(tls) => tls.get_ref().0,
        };
        let mut byte = [0u8; 1];
        // Peeking costs a system call only when the socket was marked
        // readable (possibly left over from the last read); it clears a
        // stale mark.
        tcp.poll_peek(&mut cx, &mut tokio::io::ReadBuf::new(&mut byte))
            .is_pending()
    }

    /// Writes `req` with `body` and reads the response head (skipping
    /// interim 1xx answers), all within `first_byte` of `since` (zero: no
    /// limit). The body comes back with the connection in it; `home` takes
    /// the connection back once the body has ended cleanly.
    pub async fn send(
        mut self,
        req: &Request<()>,
        body: &Bytes,
        home: Home,
        first_byte: Duration,
        since: Instant,
    ) -> Result<Response<Body>, Error> {
        let deadline = (!first_byte.is_zero()).then(|| since + first_byte);
        let head = {
            let Conn {
                io,
                buf,
                out,
                timer,
            } = &mut self;
            let mut exchange = std::pin::pin!(exchange(io, buf, out, req, body));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(done) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(done);
                }
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                poll_deadline(timer, deadline.into(), cx).map(|()| Err(Error::TimedOut))
            })
            .await?
        };
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        }
        let (parts, framing, keep_alive) = head;
        let mut body = Body {
            conn: Some(self),
            framing,
            keep_alive,
            home: Some(home),
            ended: false,
        };
        if let Framing::Length(0) = body.framing {
            body.end();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = parts.status;
        *resp.version_mut() = parts.version;
        *resp.headers_mut() = parts.headers;
        Ok(resp)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, cx)
    }
}

fn poll_fill(
    io: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes `req` with `body` on `io` and reads the final response head into
/// `buf`, skipping interim 1xx answers.
async fn exchange(
    io: &mut Stream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    req: &Request<()>,
    body: &Bytes,
) -> Result<(Head, Framing, bool), Error> {
    out.clear();
    encode_head(req, body.len(), out);
    if body.len() <= COALESCE {
        out.extend_from_slice(body);
        io.write_all(out).await?;
    } else {
        io.write_all(out).await?;
        io.write_all(body).await?;
    }
    io.flush().await?;
    loop {
        let parsed = match buf.is_empty() {
            true => None,
            false => parse_head(buf)?,
        };
        let Some(mut parts) = parsed else {
            if buf.len() >= MAX_HEAD {
                return Err(Error::Invalid("response head larger than 64 KiB"));
            }
            let n = std::future::poll_fn(|cx| poll_fill(io, buf, cx)).await?;
            if n == 0 {
                return Err(if buf.is_empty() {
                    Error::Closed
                } else {
                    Error::Incomplete
                });
            }
            continue;
        };
        if parts.status.is_informational() {
            if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Invalid("101 to a request that asked no upgrade"));
            }
            continue;
        }
        let (framing, keep_alive) = framing(req.method(), &parts)?;
        if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
            // The transfer coding frames the body, never a length sent with
            // it, which the client must not see either.
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        return Ok((parts, framing, keep_alive));
    }
}

/// Ready once `deadline` has passed. `timer` is the connection's: set at
/// an earlier request's deadline, it is left alone while that is sooner
/// than this one (the usual case, with one first-byte limit per route), and
/// re-armed at this deadline when it fires. So a request moves it at most
/// once, and most requests not at all.
fn poll_deadline(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: tokio::time::Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    loop {
        ready!(timer.as_mut().poll(cx));
        if timer.deadline() >= deadline {
            return Poll::Ready(());
        }
        timer.as_mut().reset(deadline);
    }
}

/// A response body read off its connection.
pub struct Body {
    /// `None` once the body has ended (the connection went home or closed).
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Home>,
    /// Read to its end (not broken off).
    ended: bool,
}

impl Body {
    /// The body is complete: a connection that may be reused goes home.
    fn end(&mut self) {
        self.ended = true;
        let conn = self.conn.take();
        if let (Some(conn), Some(home), true) = (conn, self.home.take(), self.keep_alive)
            && conn.buf.is_empty()
        {
            home.put(conn);
        }
    }

    /// The next frame, with the connection at hand.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let needed = match &mut self.framing {
                Framing::Length(left) => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let n = (*left).min(conn.buf.len() as u64);
                        let data = conn.buf.split_to(n as usize).freeze();
                        *left -= n;
                        if *left == 0 {
                            self.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match decode(state, &mut conn.buf)? {
                    Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Decoded::End(trailers) => {
                        self.end();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Decoded::More => {
                        let waiting = match state {
                            Chunk::Size => conn.buf.len() > MAX_CHUNK_LINE,
                            Chunk::Trailers => conn.buf.len() > MAX_HEAD,
                            _ => false,
                        };
                        if waiting {
                            return Poll::Ready(Some(Err(Error::Invalid(
                                "chunk line or trailers too long",
                            ))));
                        }
                        true
                    }
                    Decoded::Again => false,
                },
            };
            if needed && ready!(conn.poll_fill(cx))? == 0 {
                if self.framing == Framing::Close {
                    self.end();
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Error::Incomplete)));
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let next = ready!(this.poll_next(cx));
        if let Some(Err(_)) = &next {
            // A broken body leaves the connection in an unknown state.
            this.conn = None;
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.ended => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
