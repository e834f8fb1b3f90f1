//! The lean HTTP/1.1 server: the keep-alive fast path served on the
//! connection's own task, one request at a time, without hyper's
//! dispatcher, its per-connection buffers or a boxed service future.
//!
//! It serves a connection until the first request that is not plain (see
//! [`head::parse`]): HTTP/1.0, `HEAD`, chunked or large bodies, upgrades,
//! `expect`, or anything httparse refuses. From there hyper serves the
//! connection for the rest of its life, reading first every byte the lean
//! server had not consumed, that request's head included, so every odd
//! framing and every error answer is hyper's.
//!
//! What hyper does, it does too: pipelined requests are read ahead and
//! answered in order; a client that closes while its request is in flight
//! (and nothing else is buffered) cancels it; a head must arrive within
//! `server.header_read_timeout` from its first byte, an idle connection
//! closes after `server.idle_timeout`, and a draining proxy closes idle
//! connections and ends busy ones after their response. One timer per
//! connection, re-armed only when it fires, keeps all three deadlines.

mod drain;
mod head;
mod response;

pub use drain::Drain;

use super::reply::body_failed;
use super::request_body::{ClientBodyError, Source};
use super::service::{self, ClientConn};
use super::worker::Worker;
use bytes::{Bytes, BytesMut};
use head::Parsed;
use http::Request;
use http_body::Body;
use response::Framing;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Room made for reads when little is left.
const READ_SIZE: usize = 16 * 1024;
/// Least room a read gets.
const MIN_READ: usize = 4 * 1024;
/// Most bytes read ahead while a request is served (pipelined requests).
const READ_AHEAD: usize = head::MAX_HEAD + head::MAX_BODY;
/// Response bytes gathered before they must be written.
const COALESCE: usize = 16 * 1024;

/// The connection deadlines; zero turns one off.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.idle_timeout`: no request for this long closes.
    pub idle: Duration,
    /// `server.header_read_timeout`, from a head's first byte.
    pub head: Duration,
}

/// How the lean server left a connection.
pub enum Ended<S> {
    /// Closed (or to be dropped).
    Closed,
    /// hyper serves it from here, reading these bytes first.
    Hyper(S, Bytes),
}

/// Serves `io` until it closes or needs hyper.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    worker: &Rc<Worker>,
    client: &Rc<ClientConn>,
    limits: Limits,
    drain: &Rc<Drain>,
) -> Ended<S> {
    let mut conn = Conn::new(io, limits);
    let stopped = drain.watch();
    let mut draining = stopped.started();
    loop {
        // 1. A head, within the idle deadline, then the head deadline.
        // Bytes already parsed as an incomplete head: a head can only
        // complete with a new line, so a head trickled in small reads is
        // parsed again only when one arrives.
        let mut scanned = 0;
        let head = loop {
            if conn.buf[scanned..].contains(&b'\n') || conn.buf.len() > head::MAX_HEAD {
                match head::parse(&mut conn.buf) {
                    Parsed::Head(head) => break head,
                    Parsed::Hyper => return Ended::Hyper(conn.io, conn.buf.freeze()),
                    Parsed::More => scanned = conn.buf.len(),
                }
            }
            if conn.eof || (draining && conn.buf.is_empty()) {
                return conn.close().await;
            }
            let idle = conn.buf.is_empty();
            let deadline = if idle {
                after(conn.since, limits.idle)
            } else {
                after(conn.since, limits.head)
            };
            match conn.read(deadline, idle.then_some(&stopped)).await {
                Read::Data if idle => conn.since = crate::clock::coarse_millis(),
                Read::Data => {}
                Read::Stopped => draining = true,
                Read::TimedOut => {
                    let kind = if idle { "client_idle" } else { "client_header" };
                    metrics::counter!("switchyard_timeouts_total", "route" => "", "kind" => kind)
                        .increment(1);
                    return conn.close().await;
                }
                Read::Closed => return Ended::Closed,
            }
        };
        // 2. Its body, whole, with a deadline between reads. One that
        // stalls is answered 408 before it takes an admission slot, as a
        // proxy that buffers request bodies does.
        let mut stalled = None;
        if conn.buf.len() < head.body_len {
            let gap = worker.table().body_read_timeout;
            conn.time_at_most(gap);
            let mut last = crate::clock::millis();
            conn.buf.reserve(head.body_len - conn.buf.len());
            while conn.buf.len() < head.body_len {
                match conn.read(after(last, gap), None).await {
                    Read::Data => last = crate::clock::millis(),
                    Read::TimedOut => {
                        stalled = Some(gap);
                        break;
                    }
                    Read::Stopped => {}
                    Read::Closed => return Ended::Closed,
                }
            }
        }
        let resp = if let Some(gap) = stalled {
            body_failed(&ClientBodyError::timed_out(gap))
        } else {
            // 3. The answer, reading ahead meanwhile.
            let body = Source::Whole(conn.buf.split_to(head.body_len).freeze());
            let (parts, ()) = head.request.into_parts();
            let req = Request::from_parts(parts, body);
            // Made in place: the future is kilobytes, and moving it into
            // a pinned slot would copy all of it for every request.
            let mut served = std::pin::pin!(service::serve(worker.clone(), client.clone(), req));
            tokio::select! {
                biased;
                Ok(resp) = &mut served => resp,
                () = conn.read_ahead() => {
                    // Cancels the request, as hyper does.
                    return Ended::Closed;
                }
            }
        };
        // 4. The response, then the next request or the end.
        let (mut parts, body) = resp.into_parts();
        let close = head.close || stalled.is_some() || draining || stopped.started();
        let (framing, close) =
            response::encode_head(&mut parts, body.size_hint(), close, &mut conn.out);
        drop(parts);
        if conn.send(body, framing).await.is_err() {
            return Ended::Closed;
        }
        if close {
            return conn.close().await;
        }
        conn.since = crate::clock::coarse_millis();
    }
}

/// `since` plus `limit` in clock milliseconds; 0 for no deadline.
fn after(since: u64, limit: Duration) -> u64 {
    if limit.is_zero() {
        0
    } else {
        since.saturating_add(limit.as_millis() as u64).max(1)
    }
}

/// What a read for a head or a body came to.
enum Read {
    Data,
    /// The deadline passed first.
    TimedOut,
    /// The proxy began to drain.
    Stopped,
    /// The client closed or the connection failed.
    Closed,
}

/// One connection's stream and buffers.
struct Conn<S> {
    io: S,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Response bytes not yet written, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// The client sent its last byte.
    eof: bool,
    /// `clock::millis()` when the connection last became idle, or when the
    /// head being read began; read from `clock::coarse_millis()` on the
    /// per-request path, so its deadlines may pass up to a tick early.
    since: u64,
    /// The one timer; it fires no later than the shortest limit after it
    /// was last armed, so every deadline is seen in time.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The shortest limit, or a year with none.
    shortest: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S, limits: Limits) -> Conn<S> {
        let shortest = [limits.idle, limits.head]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        Conn {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(4096),
            written: 0,
            eof: false,
            since: crate::clock::millis(),
            timer: Box::pin(tokio::time::sleep(shortest)),
            shortest,
        }
    }

    /// Makes the timer look at least every `limit` from now on.
    fn time_at_most(&mut self, limit: Duration) {
        if !limit.is_zero() && limit < self.shortest {
            self.shortest = limit;
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + limit);
        }
    }

    /// Reads more into `buf`, up to `deadline` (clock milliseconds, 0 for
    /// none); with `stopped`, also ends when the worker drains.
    async fn read(&mut self, deadline: u64, stopped: Option<&drain::Watcher>) -> Read {
        let Conn {
            io,
            buf,
            eof,
            timer,
            shortest,
            ..
        } = self;
        loop {
            tokio::select! {
                biased;
                read = fill(io, buf) => return match read {
                    Ok(0) => {
                        *eof = true;
                        Read::Closed
                    }
                    Ok(_) => Read::Data,
                    Err(_) => Read::Closed,
                },
                () = timer.as_mut() => {
                    let now = crate::clock::millis();
                    if deadline != 0 && now >= deadline {
                        return Read::TimedOut;
                    }
                    let left = if deadline == 0 {
                        *shortest
                    } else {
                        Duration::from_millis(deadline - now).min(*shortest)
                    };
                    timer.as_mut().reset(tokio::time::Instant::now() + left);
                }
                () = poll_fn(|cx| stopped.map_or(Poll::Pending, |s| s.poll_started(cx))) => {
                    return Read::Stopped;
                }
            }
        }
    }

    /// Reads ahead while a request is served; resolves when the client
    /// closed with nothing left to serve, and never otherwise.
    async fn read_ahead(&mut self) {
        let _gone = poll_fn(|cx| self.poll_watch(cx)).await;
    }

    /// Writes the encoded head in `out` and the body after it, framed as
    /// `framing` says, gathering frames that are ready into one write.
    /// Reads ahead meanwhile; a client that closes with nothing buffered
    /// ends it, as does a body that fails or does not match its length.
    async fn send<B>(&mut self, body: B, framing: Framing) -> Result<(), ()>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        // Dropped as soon as it ends, before the last write: the request's
        // admission slot and backend state are free by the time the client
        // reads its answer and sends the next request.
        let mut body = (framing != Framing::Empty).then_some(body);
        // The answers that become ready in one scheduler pass go out back
        // to back, so a client that sleeps is woken once for all of them.
        super::gate::pass().await;
        poll_fn(|cx| {
            loop {
                // Gather what the body has ready, then write it with the
                // head in one go.
                let mut waiting = false;
                if let Some(b) = body.as_mut().filter(|_| self.out.len() < COALESCE) {
                    let ended = match Pin::new(&mut *b).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            // Trailers are not sent.
                            if let Ok(data) = frame.into_data() {
                                match framing {
                                    _ if data.is_empty() => {}
                                    Framing::Length(_) => {
                                        let n = data.len() as u64;
                                        if n > left {
                                            return Poll::Ready(Err(()));
                                        }
                                        left -= n;
                                        self.out.extend_from_slice(&data);
                                    }
                                    Framing::Chunked => {
                                        response::chunk_line(data.len(), &mut self.out);
                                        self.out.extend_from_slice(&data);
                                        self.out.extend_from_slice(b"\r\n");
                                    }
                                    Framing::Empty => {}
                                }
                            }
                            b.is_end_stream()
                        }
                        Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(())),
                        Poll::Ready(None) => true,
                        Poll::Pending => {
                            waiting = true;
                            false
                        }
                    };
                    if ended {
                        if left != 0 {
                            return Poll::Ready(Err(()));
                        }
                        if framing == Framing::Chunked {
                            self.out.extend_from_slice(response::LAST_CHUNK);
                        }
                        body = None;
                    } else if !waiting {
                        continue;
                    }
                }
                self.write_out(cx)?;
                if self.written < self.out.len() {
                    return self.poll_watch(cx);
                }
                ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(drop)?;
                if body.is_none() {
                    return Poll::Ready(Ok(()));
                }
                if waiting {
                    return self.poll_watch(cx);
                }
            }
        })
        .await
    }

    /// Writes as much of `out` as the stream takes now; what is left
    /// starts at `written`.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Result<(), ()> {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Pending => return Ok(()),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Reads ahead while a request is served or its response written:
    /// pending, unless the client closed with nothing buffered (an error:
    /// the request is dropped).
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        while !self.eof && self.buf.len() < READ_AHEAD {
            make_room(&mut self.buf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    if self.buf.is_empty() {
                        return Poll::Ready(Err(()));
                    }
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Ends the connection: what is written is flushed and the write side
    /// shut, so the client reads the last response before the close.
    async fn close(mut self) -> Ended<S> {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        Ended::Closed
    }
}

/// Grows `buf` only when little room is left: the heads split off it may
/// still be shared when the next read comes, and growing then allocates.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_SIZE);
    }
}

/// Reads once into `buf`, making room first.
async fn fill<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> std::io::Result<usize> {
    make_room(buf);
    poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)).await
}
