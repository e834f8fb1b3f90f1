//! Sending a request to a pool's candidates in order: each attempt ends in
//! an [`AttemptOutcome`], either a response for the client or a reason to
//! try the next candidate, which the [`RetryPolicy`] may allow.

use super::body::{Exchange, ProxiedBody, UsageMeter};
use super::fallback::Exhausted;
use super::headers::{X_SWITCHYARD_BACKEND, strip_hop_by_hop};
use super::hedge::Leg;
use super::job::JobTicket;
use super::outgoing::Outgoing;
use super::reply::{body_failed, reply};
use super::request_body::{ClientBody, Peeked};
use super::retry::{RetryPolicy, RetryReason};
use super::service::{ClientConn, ResponseBody, full};
use super::tunnel::tunnel;
use super::upstream::{Answer, Lease, SendError};
use super::usage::UsageScan;
use super::worker::Worker;
use crate::balance::{InFlightGuard, Outcome, QuotaReport, Timing};
use crate::pool::{Backend, Pool};
use crate::route::{Deadlines, Permit, Route};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Either;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one request needs while it is forwarded.
pub struct Dispatch<'a> {
    pub worker: &'a Worker,
    pub route: &'a Route,
    pub backend_header: bool,
    /// The authenticated caller's key name.
    pub caller: Option<Arc<str>>,
    /// Set for a job's request: notes the backend that answered.
    pub job: Option<&'a JobTicket>,
    /// The run the request names, counted in the table's run ledger.
    pub run: Option<Arc<str>>,
    pub runs: Option<Arc<crate::shared::runs::RunLedger>>,
    /// Follows a canaried or recorded request; the exchange that answers
    /// takes it, to report the outcome when the body ends.
    pub watch: std::cell::Cell<Option<Box<crate::rollout::Watch>>>,
    /// When to hedge the first candidate, as the router asked.
    pub hedge: Option<Duration>,
}

/// How one attempt on one backend ended. Returned at once, never stored,
/// so the large variant is not boxed (that would allocate per request).
#[allow(clippy::large_enum_variant)]
enum AttemptOutcome {
    /// The response for the client: the backend's, or the proxy's own
    /// about this backend.
    Done(Response<ResponseBody>),
    /// The next candidate may do better.
    Next(RetryReason),
}

/// The backend of one attempt and what is known about it.
struct Attempt<'a> {
    pool: &'a Arc<Pool>,
    id: u32,
    backend: &'a Backend,
    /// Whether `pool` is the route's own (not its fallback pool).
    own: bool,
    started: Instant,
    /// Whether another usable candidate is left, should this one fail.
    more: bool,
    guard: InFlightGuard,
}

impl Dispatch<'_> {
    /// Forwards `req` to the first of `candidates` that serves it, then to
    /// the route's fallback if none does.
    pub async fn forward(
        &self,
        client: &ClientConn,
        req: Request<ClientBody>,
        peeked: Option<Peeked>,
        candidates: &[u32],
        add_headers: Vec<(http::HeaderName, HeaderValue)>,
        permit: Option<Permit>,
    ) -> Response<ResponseBody> {
        let mut out = match Outgoing::prepare(self.route, client, req, peeked, add_headers).await {
            Ok(out) => out,
            Err(e) => return body_failed(&e),
        };
        let mut permit = permit;
        match self
            .attempt(
                &self.route.pool,
                candidates,
                &mut out,
                &mut permit,
                self.hedge,
            )
            .await
        {
            Ok(resp) => resp,
            // Boxed: the rare path's state stays out of every request's future.
            Err(exhausted) => Box::pin(self.fall_back(exhausted, &mut out, &mut permit)).await,
        }
    }

    /// Tries `candidates` of `pool` in order, the first hedged after
    /// `hedge` when the request is held whole. Returns the response to
    /// send, or how the attempts ran out.
    pub(super) async fn attempt(
        &self,
        pool: &Arc<Pool>,
        candidates: &[u32],
        out: &mut Outgoing,
        permit: &mut Option<Permit>,
        hedge: Option<Duration>,
    ) -> Result<Response<ResponseBody>, Exhausted> {
        let policy = RetryPolicy::of(self.route);
        let deadlines = &self.route.deadlines;
        let mut exhausted = Exhausted::new();
        let own = Arc::ptr_eq(pool, &self.route.pool);
        let mut attempts = 0;
        let mut previous: Option<RetryReason> = None;
        let mut hedged: Option<u32> = None;
        for (i, &id) in candidates.iter().enumerate() {
            let backend = &pool.backends[id as usize];
            if attempts == policy.attempts() {
                break;
            }
            if hedged == Some(id) {
                continue;
            }
            let Some(mut guard) = backend.state.try_start(pool.max_in_flight) else {
                exhausted.saw_full |=
                    pool.max_in_flight != 0 && backend.state.in_flight() >= pool.max_in_flight;
                continue;
            };
            if let Some(reason) = previous
                && !policy.admit(reason, pool)
            {
                break;
            }
            let Some(req) = out.take(backend) else { break };
            attempts += 1;
            exhausted.tried = true;
            guard.sent();
            let leg = Leg {
                id,
                backend,
                guard,
                started: Instant::now(),
            };
            let rest = &candidates[i + 1..];
            let (leg, sent) = match (hedge, out.replay.take()) {
                // One hedge per request, only for a request held whole
                // that is not an upgrade, and only while a retry is left.
                (Some(after), Some(replay))
                    if attempts == 1 && out.upgrade.is_none() && policy.attempts() > 1 =>
                {
                    // Boxed: two exchanges' state would double every
                    // request's future, hedged or not.
                    let raced =
                        Box::pin(self.race(pool, own, leg, req, &replay, after, rest, &policy))
                            .await;
                    out.replay = Some(replay);
                    if raced.hedged.is_some() {
                        attempts += 1;
                        hedged = raced.hedged;
                    }
                    (raced.leg, raced.sent)
                }
                (_, replay) => {
                    out.replay = replay;
                    let sent = self
                        .worker
                        .upstream
                        .send(backend, req, out.replay.as_ref(), deadlines, leg.started)
                        .await;
                    (leg, sent)
                }
            };
            let more = attempts < policy.attempts()
                && rest
                    .iter()
                    .any(|&n| hedged != Some(n) && pool.backends[n as usize].state.is_usable());
            let attempt = Attempt {
                pool,
                id: leg.id,
                backend: leg.backend,
                own,
                started: leg.started,
                more,
                guard: leg.guard,
            };
            let outcome = match sent {
                Ok((resp, lease)) => self.answered(
                    attempt,
                    resp,
                    lease,
                    out,
                    permit,
                    &policy,
                    deadlines,
                    &mut exhausted,
                ),
                Err(e) => self.failed(attempt, e, out, &policy, deadlines, &mut exhausted),
            };
            match outcome {
                AttemptOutcome::Done(resp) => return Ok(resp),
                AttemptOutcome::Next(reason) => previous = Some(reason),
            }
        }
        Err(exhausted)
    }

    /// A backend answered: its response goes to the client, unless the
    /// answer is one to retry and the request may go to the next candidate.
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &self,
        a: Attempt<'_>,
        mut resp: Response<Answer>,
        lease: Lease,
        out: &mut Outgoing,
        permit: &mut Option<Permit>,
        policy: &RetryPolicy<'_>,
        deadlines: &Deadlines,
        exhausted: &mut Exhausted,
    ) -> AttemptOutcome {
        let route = self.route;
        let status = resp.status().as_u16();
        // One clock read for the figure and the average.
        let now = Instant::now();
        let ttfb_us = micros_between(a.started, now);
        a.backend
            .state
            .record_ttfb_at(ttfb_us, crate::clock::millis_at(now));
        let quota = QuotaReport::from_headers(resp.headers());
        if let Some(quota) = &quota {
            a.backend.state.record_quota(quota);
        }
        route.metrics.count(a.pool, a.own, a.backend.id, status);
        if a.own {
            route.metrics.ttfb(a.id, ttfb_us);
        }
        let retry_after_ms = quota.and_then(|q| q.retry_after_ms);
        if let Some(reason) = policy.answer(status)
            && a.more
            && policy.may_repeat(reason, out)
        {
            // Given up on before its body: the connection is not reused.
            drop((resp, lease, a.guard));
            let timing = Timing {
                latency_us: ttfb_us,
                ttfb_us,
                retry_after_ms,
                ..Timing::default()
            };
            a.pool.record(a.id, Outcome::Response(status), timing);
            exhausted.gave_up_on(status, a.backend);
            return AttemptOutcome::Next(reason);
        }
        if let Some(ticket) = self.job {
            ticket.reached(a.pool, a.id, status);
        }
        strip_hop_by_hop(resp.headers_mut(), status == 101);
        if self.backend_header {
            resp.headers_mut()
                .insert(X_SWITCHYARD_BACKEND.clone(), a.backend.name_header.clone());
        }
        let mut exchange = Exchange {
            pool: a.pool.clone(),
            backend: a.id,
            guard: a.guard,
            lease: Some(lease),
            started: a.started,
            status,
            ttfb_us,
            retry_after_ms,
            duration: if a.own {
                route.metrics.duration(a.id)
            } else {
                None
            },
            meter: None,
            watch: self.watch.take(),
        };
        if status == 101 {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            if let Some(client_upgrade) = out.upgrade.take() {
                tokio::task::spawn_local(tunnel(
                    client_upgrade,
                    upstream_upgrade,
                    exchange,
                    (permit.take(), out.slot.take()),
                ));
            }
            return AttemptOutcome::Done(resp.map(|_| full(Bytes::new())));
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes());
        let sse = content_type.starts_with(b"text/event-stream");
        if (sse || content_type.starts_with(b"application/json")) && (200..300).contains(&status) {
            exchange.meter = Some(Box::new(UsageMeter {
                scan: UsageScan::default(),
                route: route.name.clone(),
                backend: a.backend.name.clone(),
                client: self.caller.clone(),
                prices: a.backend.prices,
                run: self.run.clone().zip(self.runs.clone()),
            }));
        }
        let permit = permit.take();
        AttemptOutcome::Done(
            resp.map(|body| Either::Left(ProxiedBody::new(body, exchange, deadlines, sse, permit))),
        )
    }

    /// No answer came: a connect error, a first-byte timeout, a broken
    /// exchange, or a failure of the proxy's own or of the client's body.
    fn failed(
        &self,
        a: Attempt<'_>,
        error: SendError,
        out: &mut Outgoing,
        policy: &RetryPolicy<'_>,
        deadlines: &Deadlines,
        exhausted: &mut Exhausted,
    ) -> AttemptOutcome {
        let route = self.route;
        let (pool, backend) = (a.pool, a.backend);
        drop(a.guard);
        let timing = Timing {
            latency_us: micros(a.started),
            ..Timing::default()
        };
        match error {
            SendError::Connect(_, reason) if reason.is_local() => {
                // Out of descriptors here: no backend is to blame, and the
                // next candidate would fail the same way.
                metrics::counter!("switchyard_local_errors_total", "kind" => "connect")
                    .increment(1);
                tracing::error!(route = %route.name, "{reason}; answering 503");
                let mut resp = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the proxy is out of resources (open files); try again shortly\n",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                AttemptOutcome::Done(resp)
            }
            SendError::Connect(back, reason) => {
                pool.record(a.id, Outcome::ConnectError, timing);
                tracing::warn!(route = %route.name, backend = %backend.name, "{reason}; trying the next candidate");
                exhausted.connect_error = Some(reason.to_string());
                if out.replay.is_none() {
                    let mut back = back;
                    // The next backend gets its own credentials only.
                    backend.rules.undo(back.headers_mut());
                    out.streamed = Some(back);
                }
                AttemptOutcome::Next(RetryReason::Connect)
            }
            SendError::Timeout => {
                pool.record(a.id, Outcome::Timeout, timing);
                route.metrics.count(pool, a.own, backend.id, 504);
                metrics::counter!("switchyard_timeouts_total", "route" => route.name.clone(), "kind" => "first_byte")
                    .increment(1);
                let first_byte = deadlines.first_byte;
                // Nothing came back: a request that may be repeated tries
                // the next candidate, as after a 504.
                if a.more && policy.may_repeat(RetryReason::Timeout, out) {
                    tracing::warn!(route = %route.name, backend = %backend.name,
                        "no response within {first_byte:?}; trying the next candidate");
                    exhausted.gave_up_on(504, backend);
                    return AttemptOutcome::Next(RetryReason::Timeout);
                }
                let body = format!(
                    "backend {} sent no response within {first_byte:?}\n",
                    backend.name
                );
                AttemptOutcome::Done(self.tagged(reply(StatusCode::GATEWAY_TIMEOUT, body), backend))
            }
            SendError::ClientBody(_) => {
                // The client's body broke off or was malformed: not the
                // backend's failure, and nothing a retry could mend.
                let fault = error.client_body();
                tracing::debug!(route = %route.name, "request body failed while streaming: {error}");
                route.metrics.count(pool, a.own, backend.id, 400);
                AttemptOutcome::Done(match fault {
                    Some(fault) => body_failed(fault),
                    None => reply(StatusCode::BAD_REQUEST, "cannot read the request body\n"),
                })
            }
            SendError::Failed(e) => {
                pool.record(a.id, Outcome::Reset, timing);
                route.metrics.count(pool, a.own, backend.id, 502);
                tracing::warn!(route = %route.name, backend = %backend.name, "upstream failed: {e}");
                if a.more && policy.may_repeat(RetryReason::Reset, out) {
                    exhausted.gave_up_on(502, backend);
                    return AttemptOutcome::Next(RetryReason::Reset);
                }
                let body = format!("backend {} failed: {e}\n", backend.name);
                AttemptOutcome::Done(self.tagged(reply(StatusCode::BAD_GATEWAY, body), backend))
            }
        }
    }

    /// `resp` tagged with the backend it is about.
    fn tagged(
        &self,
        mut resp: Response<ResponseBody>,
        backend: &Backend,
    ) -> Response<ResponseBody> {
        if self.backend_header {
            resp.headers_mut()
                .insert(X_SWITCHYARD_BACKEND.clone(), backend.name_header.clone());
        }
        resp
    }
}

fn micros(since: Instant) -> u32 {
    micros_between(since, Instant::now())
}

fn micros_between(since: Instant, now: Instant) -> u32 {
    now.saturating_duration_since(since)
        .as_micros()
        .min(u128::from(u32::MAX)) as u32
}
