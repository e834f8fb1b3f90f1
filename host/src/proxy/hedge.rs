//! Hedged requests: when a router asks for it and the request is held
//! whole, the first candidate gets a head start of the router's delay;
//! with no response headers by then, the same request goes to the next
//! usable candidate too (one hedge, paid from the route's retry budget).
//! The first useful answer wins and the other exchange is dropped, which
//! closes its HTTP/1.1 connection or resets its HTTP/2 stream, so only the
//! winner's response (and its tokens) reaches the client and the meters.

use super::attempt::Dispatch;
use super::retry::{RetryPolicy, RetryReason};
use super::upstream::{Answer, Lease, Replay, SendError, UpstreamBody};
use crate::balance::{InFlightGuard, Outcome, Timing};
use crate::pool::{Backend, Pool};
use http::{Request, Response};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One backend's exchange in a race: which backend, its in-flight slot,
/// and when the request went out.
pub(super) struct Leg<'a> {
    pub id: u32,
    pub backend: &'a Backend,
    pub guard: InFlightGuard,
    pub started: Instant,
}

pub(super) type Sent = Result<(Response<Answer>, Lease), SendError>;

/// How a hedged send ended: the leg whose result the attempt loop goes on
/// with, that result, and the hedge's backend if one was sent.
pub(super) struct Raced<'a> {
    pub leg: Leg<'a>,
    pub sent: Sent,
    pub hedged: Option<u32>,
}

impl Dispatch<'_> {
    /// Sends `req` on `first`; after `after` without response headers, the
    /// same request (from `replay`) to the first of `rest` that is usable
    /// and has room, when the retry budget allows. Returns the first useful
    /// result (response headers with a status not to retry), or the last
    /// one when neither is useful; the other exchange is set aside (its
    /// failure recorded) or cancelled.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn race<'p>(
        &self,
        pool: &'p Arc<Pool>,
        own: bool,
        first: Leg<'p>,
        req: Request<UpstreamBody>,
        replay: &Replay,
        after: Duration,
        rest: &[u32],
        policy: &RetryPolicy<'_>,
    ) -> Raced<'p> {
        let deadlines = &self.route.deadlines;
        let upstream = &self.worker.upstream;
        let mut primary =
            pin!(upstream.send(first.backend, req, Some(replay), deadlines, first.started));
        tokio::select! {
            biased;
            sent = &mut primary => return Raced { leg: first, sent, hedged: None },
            () = tokio::time::sleep(after) => {}
        }
        let second = rest.iter().find_map(|&id| {
            let backend = &pool.backends[id as usize];
            if id == first.id || !backend.state.is_usable() {
                return None;
            }
            let guard = backend.state.try_start(pool.max_in_flight)?;
            Some((id, backend, guard))
        });
        let Some((id, backend, mut guard)) = second else {
            self.count_hedge("no_candidate");
            let sent = primary.await;
            return Raced {
                leg: first,
                sent,
                hedged: None,
            };
        };
        if !policy.admit(RetryReason::Hedge, pool) {
            drop(guard);
            self.count_hedge("budget");
            let sent = primary.await;
            return Raced {
                leg: first,
                sent,
                hedged: None,
            };
        }
        guard.sent();
        tracing::debug!(route = %self.route.name, primary = %first.backend.name, hedge = %backend.name,
            "no response within {after:?}; hedging");
        let second = Leg {
            id,
            backend,
            guard,
            started: Instant::now(),
        };
        let mut hedge = pin!(upstream.send(
            backend,
            replay.build(backend),
            Some(replay),
            deadlines,
            second.started
        ));
        let (mut first, mut second) = (Some(first), Some(second));
        loop {
            let (leg, sent, other) = tokio::select! {
                sent = &mut primary, if first.is_some() => (first.take(), sent, &mut second),
                sent = &mut hedge, if second.is_some() => (second.take(), sent, &mut first),
            };
            let Some(leg) = leg else {
                unreachable!("a finished leg is not polled")
            };
            let useful =
                matches!(&sent, Ok((resp, _)) if policy.answer(resp.status().as_u16()).is_none());
            match other.take() {
                // The other may still do better: wait for it.
                Some(still) if !useful => {
                    *other = Some(still);
                    self.set_aside(pool, own, leg, sent);
                }
                loser => {
                    self.count_hedge(match (useful, leg.id == id) {
                        (true, true) => "won",
                        (true, false) => "lost",
                        (false, _) => "both_failed",
                    });
                    if let Some(loser) = loser {
                        cancelled(loser);
                    }
                    return Raced {
                        leg,
                        sent,
                        hedged: Some(id),
                    };
                }
            }
        }
    }

    /// Records a leg that failed, or answered with a status to retry, while
    /// the other leg is still out.
    fn set_aside(&self, pool: &Pool, own: bool, leg: Leg<'_>, sent: Sent) {
        let latency_us = micros(leg.started);
        drop(leg.guard);
        let (outcome, status) = match &sent {
            Ok((resp, _)) => {
                let status = resp.status().as_u16();
                leg.backend.state.record_ttfb(latency_us);
                (Outcome::Response(status), status)
            }
            Err(SendError::Connect(_, reason)) if reason.is_local() => return,
            Err(SendError::Connect(..)) => (Outcome::ConnectError, 502),
            Err(SendError::Timeout) => (Outcome::Timeout, 504),
            Err(SendError::Failed(_) | SendError::ClientBody(_)) => (Outcome::Reset, 502),
        };
        if let Err(e) = &sent {
            tracing::warn!(route = %self.route.name, backend = %leg.backend.name,
                "hedged exchange failed: {e}; waiting for the other");
        }
        self.route.metrics.count(pool, own, leg.backend.id, status);
        let timing = Timing {
            latency_us,
            ttfb_us: latency_us,
            ..Timing::default()
        };
        pool.record(leg.id, outcome, timing);
    }

    fn count_hedge(&self, result: &'static str) {
        metrics::counter!("switchyard_hedges_total", "route" => self.route.name.clone(), "result" => result)
            .increment(1);
    }
}

/// Drops the losing leg's exchange. It is not a failure of its backend, but
/// its time to first byte is at least this long, which the backend's
/// average learns, so a backend that stalls looks slow to routers.
fn cancelled(leg: Leg<'_>) {
    leg.backend.state.record_ttfb(micros(leg.started));
}

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}
