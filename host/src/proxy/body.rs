//! The response body streamed back to the client, frame by frame.
//!
//! It enforces the idle and total timeouts, and when the exchange ends it
//! records the outcome in the backend's live state and returns the upstream
//! connection to the pool. A failure after the first byte ends the body with
//! an error, so the client sees a broken response, never a clean-looking end.

use super::upstream::Lease;
use crate::balance::{BackendState, InFlightGuard, Outcome};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// Error type of bodies sent to clients.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Book-keeping of one exchange with a backend, settled when it ends.
pub struct Exchange {
    pub state: Arc<BackendState>,
    pub guard: InFlightGuard,
    pub lease: Option<Lease>,
    pub started: Instant,
    pub status: u16,
}

impl Exchange {
    fn settle(mut self, outcome: Option<Outcome>) {
        if let Some(outcome) = outcome {
            let micros = self.started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            self.state.record_outcome(outcome, micros);
        }
        if matches!(outcome, Some(Outcome::Response(_)))
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
        drop(self.guard);
    }
}

/// A proxied response body with timeouts and accounting.
pub struct ProxiedBody {
    inner: Incoming,
    exchange: Option<Exchange>,
    idle: Duration,
    deadline: Option<Instant>,
    /// Created on the first wait, so fast bodies never touch a timer; reused
    /// for later waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is set for the current wait.
    armed: bool,
}

impl ProxiedBody {
    pub fn new(inner: Incoming, exchange: Exchange, idle: Duration, total: Duration) -> Self {
        ProxiedBody {
            inner,
            deadline: (!total.is_zero()).then(|| exchange.started + total),
            exchange: Some(exchange),
            idle,
            timer: None,
            armed: false,
        }
    }

    fn finish(&mut self, outcome: Option<Outcome>) {
        if let Some(exchange) = self.exchange.take() {
            exchange.settle(outcome);
        }
    }

    fn status(&self) -> u16 {
        self.exchange.as_ref().map_or(0, |e| e.status)
    }

    /// When the current wait must end, if any limit applies.
    fn wait_limit(&self) -> Option<Instant> {
        let idle = (!self.idle.is_zero()).then(|| Instant::now() + self.idle);
        match (idle, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Body for ProxiedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some(Outcome::Reset));
                Poll::Ready(Some(Err(
                    format!("upstream failed mid-response: {e}").into()
                )))
            }
            Poll::Ready(None) => {
                let status = this.status();
                this.finish(Some(Outcome::Response(status)));
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.armed {
                    let Some(at) = this.wait_limit() else {
                        return Poll::Pending;
                    };
                    match this.timer.as_mut() {
                        Some(timer) => timer.as_mut().reset(at.into()),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(at.into()))),
                    }
                    this.armed = true;
                }
                if let Some(timer) = this.timer.as_mut() {
                    ready!(timer.as_mut().poll(cx));
                }
                this.finish(Some(Outcome::Timeout));
                Poll::Ready(Some(Err(
                    "upstream response timed out (idle or total timeout)".into(),
                )))
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

impl Drop for ProxiedBody {
    fn drop(&mut self) {
        // Dropped unread: either the body was complete (hyper stops polling
        // once `is_end_stream`), or the client went away, which says nothing
        // about the backend.
        let outcome = self
            .inner
            .is_end_stream()
            .then(|| Outcome::Response(self.status()));
        self.finish(outcome);
    }
}
