//! One client connection's life after accept: whether it starts at all
//! ([`request_starts`]), then served by hyper until it
//! ends, closed gracefully when it has been idle too long (no request in
//! progress for `server.idle_timeout`, HTTP/1.1 keep-alive and HTTP/2
//! alike) or when the proxy drains, and closed when an HTTP/1 request
//! head takes longer than `server.header_read_timeout` to arrive.
//!
//! Both guards share one timer per connection that is re-armed only when
//! it fires (at most every `header_read_timeout`), not per request: the
//! connection's reads note when a request head starts, and the timer,
//! never further out than one header timeout, finds a head that is late.
//! hyper's own header timer would arm and box a sleep for every request.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Requests in progress on one connection and when the last one ended, so
/// an idle connection can be told from a busy one without asking hyper.
#[derive(Debug)]
pub struct Activity {
    /// `clock::millis()` when the connection last became idle.
    idle_since: Cell<u64>,
    heads: Arc<Heads>,
}

/// What the connection's stream notes about request heads. Shared with the
/// stream, which hyper requires to be `Send`; only the connection's own
/// thread touches it, so relaxed loads and stores suffice.
#[derive(Debug)]
struct Heads {
    /// `clock::millis()` (at least 1) of the first bytes read since the
    /// last request started, with none in progress: a request head being
    /// read. 0 when there is none.
    since: AtomicU64,
    /// Requests in progress (their heads are in).
    open: AtomicU32,
    /// Whether heads are timed: HTTP/1 connections only (an HTTP/2 client
    /// sends pings and settings between streams).
    timed: AtomicBool,
}

impl Activity {
    pub fn new() -> Rc<Activity> {
        Rc::new(Activity {
            idle_since: Cell::new(crate::clock::millis()),
            heads: Arc::new(Heads {
                since: AtomicU64::new(0),
                open: AtomicU32::new(0),
                timed: AtomicBool::new(true),
            }),
        })
    }

    /// Marks a request started (its head is in); it ends when the returned
    /// guard drops.
    pub fn start(self: &Rc<Self>, version: http::Version) -> InProgress {
        let open = &self.heads.open;
        open.store(open.load(Relaxed) + 1, Relaxed);
        self.heads.since.store(0, Relaxed);
        if version == http::Version::HTTP_2 {
            self.untime_heads();
        }
        InProgress(self.clone())
    }

    /// Stops timing request heads: the connection speaks HTTP/2.
    pub fn untime_heads(&self) {
        self.heads.timed.store(false, Relaxed);
    }

    fn end(&self) {
        let open = self.heads.open.load(Relaxed).saturating_sub(1);
        self.heads.open.store(open, Relaxed);
        if open == 0 {
            self.idle_since.set(crate::clock::millis());
        }
    }

    fn heads_timed(&self) -> bool {
        self.heads.timed.load(Relaxed)
    }

    /// How long the current request head has been arriving, if one is.
    fn head_for(&self, now: u64) -> Option<Duration> {
        let since = self.heads.since.load(Relaxed);
        (since != 0 && self.heads_timed()).then(|| Duration::from_millis(now.saturating_sub(since)))
    }

    /// How long the connection has had no request in progress; `None`
    /// while one is.
    fn idle_for(&self, now: u64) -> Option<Duration> {
        (self.heads.open.load(Relaxed) == 0)
            .then(|| Duration::from_millis(now.saturating_sub(self.idle_since.get())))
    }
}

impl Heads {
    /// Bytes came in: with no request in progress, a head has started.
    fn note_read(&self) {
        if self.open.load(Relaxed) == 0 && self.since.load(Relaxed) == 0 && self.timed.load(Relaxed)
        {
            self.since.store(crate::clock::millis().max(1), Relaxed);
        }
    }
}

/// A client connection's stream, noting when a request head starts to
/// arrive; it reads `prefix` first (what the lean HTTP/1.1 server had read
/// when it handed the connection over).
pub struct Watched<S> {
    inner: S,
    heads: Arc<Heads>,
    prefix: bytes::Bytes,
}

impl<S> Watched<S> {
    pub fn new(inner: S, prefix: bytes::Bytes, activity: &Activity) -> Self {
        Watched {
            inner,
            heads: activity.heads.clone(),
            prefix,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            this.heads.note_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.heads.note_read();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One request in progress on a connection, from the service call until
/// its response body ends or is dropped.
#[derive(Debug)]
pub struct InProgress(Rc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that holds its request's [`InProgress`] until the body
/// is done, so a long stream keeps its connection busy.
pub struct Tracked<B> {
    inner: B,
    request: Option<InProgress>,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, request: InProgress) -> Self {
        Tracked {
            inner,
            request: Some(request),
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.request = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a connection closed for idleness may take to finish closing
/// (an HTTP/2 client that does not answer the `GOAWAY`'s ping) before it
/// is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The connection-level limits [`drive`] enforces; zero turns one off.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.idle_timeout`.
    pub idle: Duration,
    /// `server.header_read_timeout`, from a head's first byte.
    pub head: Duration,
}

/// Drives `conn` to its end: shut down gracefully (HTTP/2 `GOAWAY`, or
/// close between HTTP/1.1 requests) once it has been idle for
/// `limits.idle`, or when `stopped` turns true; closed at once when a
/// request head has been arriving for `limits.head`.
pub async fn drive<C>(
    conn: C,
    activity: Rc<Activity>,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    let first = next_check(
        &activity,
        limits,
        crate::clock::millis(),
        tokio::time::Instant::now(),
    );
    let timer = tokio::time::sleep_until(first);
    let mut timer = std::pin::pin!(timer);
    let mut closing = *stopped.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let mut idle_closed = false;
    loop {
        tokio::select! {
            out = conn.as_mut() => return out,
            changed = stopped.changed(), if !closing => {
                if changed.is_err() || *stopped.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = timer.as_mut() => {
                if idle_closed {
                    return Ok(());
                }
                let now = crate::clock::millis();
                if activity.head_for(now).is_some_and(|d| !limits.head.is_zero() && d >= limits.head) {
                    metrics::counter!("switchyard_timeouts_total", "route" => "", "kind" => "client_header")
                        .increment(1);
                    return Ok(());
                }
                let idle = activity.idle_for(now);
                if !closing && !limits.idle.is_zero() && idle.is_some_and(|d| d >= limits.idle) {
                    metrics::counter!("switchyard_timeouts_total", "route" => "", "kind" => "client_idle")
                        .increment(1);
                    closing = true;
                    idle_closed = true;
                    conn.as_mut().graceful_shutdown();
                    timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    continue;
                }
                let next = next_check(&activity, limits, now, tokio::time::Instant::now());
                timer.as_mut().reset(next);
            }
        }
    }
}

/// When the connection's timer must next look: the idle deadline, the
/// current head's deadline, or, with no head arriving, one header timeout
/// from now (no later head can be due sooner).
fn next_check(
    activity: &Activity,
    limits: Limits,
    now_ms: u64,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    let never = Duration::from_secs(365 * 24 * 3600);
    let mut wait = never;
    if !limits.idle.is_zero()
        && let Some(idle) = activity.idle_for(now_ms)
    {
        wait = wait.min(limits.idle.saturating_sub(idle));
    }
    if !limits.head.is_zero() && activity.heads_timed() {
        let arriving = activity.head_for(now_ms).unwrap_or_default();
        wait = wait.min(limits.head.saturating_sub(arriving));
    }
    // A millisecond at least, so a deadline reached within the clock's
    // rounding does not spin.
    now + wait.max(Duration::from_millis(1))
}

/// The HTTP/2 client preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits, up to `limit`, until a new connection has sent something worth
/// serving: for TLS, any byte (the handshake has its own timer); for plain
/// HTTP, a byte that is not the start of the HTTP/2 preface, or the whole
/// preface. [`Start::Silent`]: close it.
pub async fn request_starts(
    stream: &tokio::net::TcpStream,
    limit: std::time::Duration,
    tls: bool,
) -> Start {
    let wait = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            if stream.readable().await.is_err() {
                return Start::Silent;
            }
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Start::Silent,
                Ok(_) if tls => return Start::Http1,
                Ok(n) if n == buf.len() && buf[..] == *H2_PREFACE => return Start::Http2,
                Ok(n) if n == buf.len() || !H2_PREFACE.starts_with(&buf[..n]) => {
                    return Start::Http1;
                }
                // Part of the preface so far: look again shortly (the bytes
                // stay readable, so `readable` alone would spin).
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or(Start::Silent)
}

/// How a client connection began, seen before hyper reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Nothing, or part of an HTTP/2 preface, within the time allowed.
    Silent,
    /// Anything else over plain TCP, or any TLS handshake.
    Http1,
    /// A whole HTTP/2 preface.
    Http2,
}
