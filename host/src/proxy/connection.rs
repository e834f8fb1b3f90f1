//! One client connection's life after accept: served by hyper until it
//! ends, closed gracefully when it has been idle too long (no request in
//! progress for `server.idle_timeout`, HTTP/1.1 keep-alive and HTTP/2
//! alike) or when the proxy drains.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

/// Requests in progress on one connection and when the last one ended, so
/// an idle connection can be told from a busy one without asking hyper.
#[derive(Debug)]
pub struct Activity {
    open: Cell<u32>,
    /// `clock::millis()` when the connection last became idle.
    idle_since: Cell<u64>,
}

impl Activity {
    pub fn new() -> Rc<Activity> {
        Rc::new(Activity {
            open: Cell::new(0),
            idle_since: Cell::new(crate::clock::millis()),
        })
    }

    /// Marks a request started; it ends when the returned guard drops.
    pub fn start(self: &Rc<Self>) -> InProgress {
        self.open.set(self.open.get() + 1);
        InProgress(self.clone())
    }

    fn end(&self) {
        let open = self.open.get().saturating_sub(1);
        self.open.set(open);
        if open == 0 {
            self.idle_since.set(crate::clock::millis());
        }
    }

    /// How long the connection has had no request in progress; `None`
    /// while one is.
    fn idle_for(&self) -> Option<Duration> {
        (self.open.get() == 0).then(|| {
            Duration::from_millis(crate::clock::millis().saturating_sub(self.idle_since.get()))
        })
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

/// Drives `conn` to its end: shut down gracefully (HTTP/2 `GOAWAY`, or
/// close between HTTP/1.1 requests) once it has been idle for `idle`
/// (never when zero), or when `stopped` turns true.
pub async fn drive<C>(
    conn: C,
    activity: Rc<Activity>,
    idle: Duration,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    let never = Duration::from_secs(365 * 24 * 3600);
    let timer = tokio::time::sleep(if idle.is_zero() { never } else { idle });
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
            () = timer.as_mut(), if idle_closed || (!closing && !idle.is_zero()) => {
                if idle_closed {
                    return Ok(());
                }
                match activity.idle_for() {
                    Some(d) if d >= idle => {
                        metrics::counter!("switchyard_timeouts_total", "route" => "", "kind" => "client_idle")
                            .increment(1);
                        closing = true;
                        idle_closed = true;
                        conn.as_mut().graceful_shutdown();
                        timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                    left => {
                        let wait = idle - left.unwrap_or_default();
                        timer.as_mut().reset(tokio::time::Instant::now() + wait);
                    }
                }
            }
        }
    }
}
