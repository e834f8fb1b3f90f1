//! The client's request body as the proxy reads it: with a deadline on
//! every wait for the next bytes, like nginx's `client_body_timeout`, so a
//! client trickling its upload cannot hold a connection, an admission slot
//! and a backend's attention for ever.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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

/// A client's request body with a read deadline between frames.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    /// Longest wait for the next frame; zero: no limit.
    gap: Duration,
    /// Made on the first wait, so bodies that arrive at once never touch a
    /// timer; re-armed for each later wait.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ClientBody {
    pub fn new(inner: Incoming, gap: Duration) -> ClientBody {
        ClientBody {
            inner,
            gap,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
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
                metrics::counter!("switchyard_timeouts_total", "route" => "", "kind" => "client_body")
                    .increment(1);
                Poll::Ready(Some(Err(ClientBodyError::Timeout(this.gap))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
