//! The response body streamed back to the client, frame by frame.
//!
//! It enforces the idle and total timeouts, and when the exchange ends it
//! records the outcome in the backend's live state and returns the upstream
//! connection to the pool. A failure after the first byte ends the body with
//! an error, so the client sees a broken response, never a clean-looking end;
//! an event stream first gets a final `event: error`, which SSE clients
//! surface to the application.

use super::upstream::{Answer, Lease};
use super::usage::UsageScan;
use crate::balance::{InFlightGuard, Outcome, Timing};
use crate::pool::Pool;
use crate::route::Permit;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// Error type of bodies sent to clients.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Book-keeping of one exchange with a backend, settled when it ends.
pub struct Exchange {
    pub pool: Arc<Pool>,
    /// The backend's id in `pool`.
    pub backend: u32,
    pub guard: InFlightGuard,
    pub lease: Option<Lease>,
    pub started: Instant,
    pub status: u16,
    pub ttfb_us: u32,
    pub retry_after_ms: Option<u64>,
    /// `switchyard_request_duration_seconds` of the route and backend.
    pub duration: Option<crate::histogram::Histogram>,
    /// Token accounting, for JSON and event-stream answers.
    pub meter: Option<Box<UsageMeter>>,
    /// The request's canary or record, told how it ended.
    pub watch: Option<Box<crate::rollout::Watch>>,
}

/// Reads a response's `usage` as it streams and counts it when it ends.
pub struct UsageMeter {
    pub scan: UsageScan,
    pub route: String,
    pub backend: String,
    /// The authenticated caller, on routes with client keys.
    pub client: Option<Arc<str>>,
    /// USD per million prompt and completion tokens.
    pub prices: (f64, f64),
    /// The run the request named, and where runs are counted.
    pub run: Option<(Arc<str>, Arc<crate::shared::runs::RunLedger>)>,
}

impl UsageMeter {
    fn record(&self) {
        let Some(usage) = self.scan.found else { return };
        // Bounded: key names come from the route's keys only.
        let client = self.client.as_deref().unwrap_or("").to_string();
        let labels = |kind: &'static str| {
            [
                ("route", self.route.clone()),
                ("backend", self.backend.clone()),
                ("client", client.clone()),
                ("kind", kind.to_string()),
            ]
        };
        metrics::counter!("switchyard_tokens_total", &labels("prompt")).increment(usage.prompt);
        metrics::counter!("switchyard_tokens_total", &labels("completion"))
            .increment(usage.completion);
        let usd =
            (usage.prompt as f64 * self.prices.0 + usage.completion as f64 * self.prices.1) / 1e6;
        if let Some((run, ledger)) = &self.run {
            ledger.add(
                run,
                usage.prompt,
                usage.completion,
                (usd * 1e6).round() as u64,
            );
        }
        if usd > 0.0 {
            let labels = [
                ("route", self.route.clone()),
                ("backend", self.backend.clone()),
                ("client", client),
            ];
            metrics::counter!("switchyard_cost_microdollars_total", &labels)
                .increment((usd * 1e6).round() as u64);
        }
    }
}

impl Exchange {
    fn settle(mut self, outcome: Option<Outcome>) {
        if let Some(watch) = self.watch.take() {
            let usage = self.meter.as_ref().and_then(|m| m.scan.found);
            let error = match outcome {
                Some(Outcome::Response(_)) => None,
                Some(Outcome::ConnectError) => Some("connect"),
                Some(Outcome::Timeout) => Some("timeout"),
                Some(Outcome::Reset) => Some("reset"),
                None => Some("client_gone"),
            };
            let latency_us = micros(watch.started);
            watch.finish(crate::rollout::Ending {
                backend: Some(self.pool.backends[self.backend as usize].name.clone()),
                status: self.status,
                latency_us,
                ttfb_us: self.ttfb_us,
                prompt_tokens: usage.map_or(0, |u| u.prompt),
                completion_tokens: usage.map_or(0, |u| u.completion),
                error,
            });
        }
        if let Some(outcome) = outcome {
            let usage = self.meter.as_ref().and_then(|m| m.scan.found);
            let clamp = |n: u64| n.min(u64::from(u32::MAX)) as u32;
            // One clock read for the figure and the backend's state.
            let now = Instant::now();
            let timing = Timing {
                latency_us: now
                    .saturating_duration_since(self.started)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32,
                ttfb_us: self.ttfb_us,
                retry_after_ms: self.retry_after_ms,
                prompt_tokens: usage.map_or(0, |u| clamp(u.prompt)),
                completion_tokens: usage.map_or(0, |u| clamp(u.completion)),
            };
            let at = crate::clock::millis_at(now);
            self.pool.record_at(self.backend, outcome, timing, at);
            if let Some(h) = &self.duration {
                h.record_us(u64::from(timing.latency_us));
            }
            if let (Outcome::Response(_), Some(meter)) = (outcome, &self.meter) {
                meter.record();
            }
        }
        if matches!(outcome, Some(Outcome::Response(_)))
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
        drop(self.guard);
    }
}

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}

/// A proxied response body with timeouts and accounting.
pub struct ProxiedBody {
    inner: Answer,
    exchange: Option<Exchange>,
    idle: Duration,
    deadline: Option<Instant>,
    /// Created on the first wait, so fast bodies never touch a timer; reused
    /// for later waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is set for the current wait.
    armed: bool,
    /// The response is an event stream: failures get a final error event.
    sse: bool,
    /// The error to end with, after the error event went out, and whether
    /// the connection has had a chance to flush that event.
    failed: Option<(BodyError, bool)>,
    /// The route's admission slot, held until the body ends.
    permit: Option<Permit>,
}

impl ProxiedBody {
    pub fn new(
        inner: Answer,
        exchange: Exchange,
        deadlines: &crate::route::Deadlines,
        sse: bool,
        permit: Option<Permit>,
    ) -> Self {
        ProxiedBody {
            inner,
            deadline: (!deadlines.total.is_zero()).then(|| exchange.started + deadlines.total),
            exchange: Some(exchange),
            idle: deadlines.idle,
            timer: None,
            armed: false,
            sse,
            failed: None,
            permit,
        }
    }

    /// Ends the body with `error`; an event stream first gets an error
    /// event saying why.
    fn fail(&mut self, error: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if !self.sse {
            return Poll::Ready(Some(Err(error.into())));
        }
        let event = format!(
            "event: error\ndata: {{\"error\":{{\"type\":\"upstream_error\",\"message\":{}}}}}\n\n",
            json_string(&error)
        );
        self.failed = Some((error.into(), false));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }

    /// Settles the exchange and frees the admission slot, once: the slot
    /// is free before the connection writes the last bytes out, so a client
    /// that sends its next request on seeing the answer finds it free.
    fn finish(&mut self, outcome: Option<Outcome>) {
        self.permit = None;
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
        if let Some((error, flushed)) = this.failed.take() {
            if flushed {
                return Poll::Ready(Some(Err(error)));
            }
            // The connection aborts on the error, dropping what it has not
            // written yet: yield once so it flushes the error event first.
            this.failed = Some((error, true));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                if let Some(meter) = this.exchange.as_mut().and_then(|e| e.meter.as_mut())
                    && let Some(data) = frame.data_ref()
                {
                    meter.scan.scan(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some(Outcome::Reset));
                this.fail(format!("upstream failed mid-response: {e}"))
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
                this.fail("upstream response timed out (idle or total timeout)".into())
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

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
