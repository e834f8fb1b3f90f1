//! The data path of one request: match a route, decide, forward to the first
//! candidate that takes it, stream the response back.

use super::body::{Exchange, ProxiedBody, UsageMeter};
use super::headers::{
    X_SWITCHYARD_BACKEND, X_SWITCHYARD_DEBUG, add_forwarded_for, is_upgrade, strip_hop_by_hop,
};
use super::path;
use super::request_body::{ClientBody, ClientBodyError};
use super::upstream::{Replay, SendError, StreamedBody, UpstreamBody, WantsUpgrade};
use super::usage::UsageScan;
use super::worker::{Choice, Worker};
use crate::balance::{Backend, Outcome, Pool, QuotaReport, Timing, least_outstanding};
use crate::endpoint::strip_client_auth;
use crate::route::{Permit, Route, auth};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Body of every response the proxy sends: streamed from a backend, or a
/// short reply of its own.
pub type ResponseBody = Either<ProxiedBody, Full<Bytes>>;

/// Facts about the client connection, computed once per connection.
pub struct ClientConn {
    pub peer: SocketAddr,
    /// The peer's IP, ready for `x-forwarded-for`.
    pub forwarded_for: HeaderValue,
}

impl ClientConn {
    pub fn new(peer: SocketAddr) -> ClientConn {
        let ip = peer.ip().to_canonical();
        ClientConn {
            peer,
            forwarded_for: HeaderValue::from_str(&ip.to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
        }
    }
}

/// Serves one request. Never fails: every problem becomes a response.
pub async fn serve(
    worker: Rc<Worker>,
    client: Rc<ClientConn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let table = worker.table();
    let mut req = req.map(|body| ClientBody::new(body, table.body_read_timeout));
    match path::normalize(req.uri().path()) {
        Ok(None) => {}
        Ok(Some(canonical)) => match with_path(req.uri(), &canonical) {
            Some(uri) => *req.uri_mut() = uri,
            None => return Ok(reply(StatusCode::BAD_REQUEST, "invalid path\n")),
        },
        Err(e) => {
            metrics::counter!("switchyard_paths_refused_total").increment(1);
            return Ok(reply(StatusCode::BAD_REQUEST, format!("{e}\n")));
        }
    }
    let Some(route) = table.find(&req) else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "no route matches this request\n",
        ));
    };
    // Before admission: a caller without a key takes no slot.
    let caller = match &route.auth {
        None => {
            auth::remove_identity(req.headers_mut());
            None
        }
        Some(keys) => match keys.authenticate(req.headers()) {
            Ok(caller) => {
                auth::set_identity(req.headers_mut(), Some(&caller));
                Some(caller)
            }
            Err(refusal) => {
                route.metrics.local_replies.increment(1);
                metrics::counter!("switchyard_auth_refused_total", "route" => route.name.clone())
                    .increment(1);
                return Ok(unauthorized(refusal));
            }
        },
    };
    let permit = match &route.admission {
        None => None,
        Some(admission) => match Box::pin(admission.admit()).await {
            Ok(permit) => Some(permit),
            Err(refusal) => {
                route.metrics.local_replies.increment(1);
                let status = StatusCode::from_u16(admission.status)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut resp = reply(
                    status,
                    format!(
                        "route {} is at capacity ({}); try again later\n",
                        route.name,
                        refusal.label()
                    ),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, admission.retry_after.clone());
                return Ok(resp);
            }
        },
    };
    let debug = table.debug_header && req.headers().contains_key(&X_SWITCHYARD_DEBUG);
    // Boxed, like the other rarely used state: every byte of this future
    // is copied once per request when hyper stores it.
    let logged = table
        .access_log
        .then(|| Box::new((req.method().clone(), req.uri().clone(), Instant::now())));
    let peeked = match &route.router {
        Some(p) if p.reads_body() && is_json(&req) => {
            match peek(req.body_mut(), p.spec.body_peek).await {
                Ok(peeked) => Some(peeked),
                Err(e) => return Ok(body_failed(&e)),
            }
        }
        _ => None,
    };
    let choice = worker.decide(
        route,
        &req,
        peeked.as_ref().map(Peeked::view),
        client.peer.ip(),
    );
    let details = debug.then(|| decision_details(route, &choice));
    let mut resp = match choice {
        Choice::Reply { status, body } => {
            route.metrics.local_replies.increment(1);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            // A router answering like an API (an OpenAI-style error object)
            // is labelled JSON, so clients parse the error.
            let json = body.starts_with('{')
                && serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok();
            let mut resp = reply(status, body);
            if json {
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            resp
        }
        Choice::Forward {
            candidates,
            add_headers,
        } => {
            let ctx = Context {
                worker: &worker,
                route,
                backend_header: table.backend_header,
                caller: caller.as_ref().map(|c| c.name.clone()),
            };
            ctx.forward(
                &client,
                req,
                peeked,
                candidates.as_slice(),
                add_headers,
                permit,
            )
            .await
        }
    };
    if let Some(details) = details {
        let h = resp.headers_mut();
        for (name, value) in details {
            h.insert(name, value);
        }
    }
    if let Some((method, uri, started)) = logged.map(|l| *l) {
        let backend = resp
            .headers()
            .get(&X_SWITCHYARD_BACKEND)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info!(target: "switchyard::access", route = %route.name, %method, %uri,
            status = resp.status().as_u16(), backend, ms = started.elapsed().as_secs_f64() * 1000.0,
            client = %client.peer.ip());
    }
    Ok(resp)
}

/// The `x-switchyard-debug` answer: the route, its router plugin and
/// version, and the candidates it chose in order.
fn decision_details(route: &Route, choice: &Choice) -> Vec<(http::HeaderName, HeaderValue)> {
    let plugin = match &route.router {
        Some(p) if p.is_quarantined() => {
            format!("{}@{} (quarantined)", p.name(), &p.component.hash[..12])
        }
        Some(p) => format!("{}@{}", p.name(), &p.component.hash[..12]),
        None => "built-in".to_string(),
    };
    let candidates = match choice {
        Choice::Forward { candidates, .. } => candidates
            .as_slice()
            .iter()
            .filter_map(|&id| {
                route
                    .pool
                    .backends
                    .get(id as usize)
                    .map(|b| b.name.as_str())
            })
            .collect::<Vec<_>>()
            .join(","),
        Choice::Reply { status, .. } => format!("reply {status}"),
    };
    [
        ("x-switchyard-route", route.name.clone()),
        ("x-switchyard-plugin", plugin),
        ("x-switchyard-candidates", candidates),
    ]
    .into_iter()
    .filter_map(|(n, v)| {
        Some((
            http::HeaderName::from_static(n),
            HeaderValue::from_str(&v).ok()?,
        ))
    })
    .collect()
}

/// What one request needs while it is forwarded.
struct Context<'a> {
    worker: &'a Worker,
    route: &'a Route,
    backend_header: bool,
    /// The authenticated caller's key name.
    caller: Option<Arc<str>>,
}

/// The request to send: held whole so it can be sent again, or streamed
/// once.
struct Outgoing {
    replay: Option<Replay>,
    /// The streamed request, until it is sent (a connect error hands it
    /// back); boxed, as most requests are held.
    streamed: Option<Box<Request<UpstreamBody>>>,
    /// Whether an answer (not only a connect error) may be retried.
    retry_answers: bool,
    /// Send the client's `host` rather than the backend's.
    preserve_host: bool,
    upgrade: Option<OnUpgrade>,
}

impl Outgoing {
    /// The request for `backend`, if one can still be sent.
    fn take(&mut self, backend: &Backend) -> Option<Request<UpstreamBody>> {
        if let Some(replay) = &self.replay {
            let mut req = replay.build(backend);
            if self.upgrade.is_some() {
                req.extensions_mut().insert(WantsUpgrade);
            }
            return Some(req);
        }
        let mut req = self.streamed.take()?;
        if !self.preserve_host {
            req.headers_mut()
                .insert(header::HOST, backend.host_header.clone());
        }
        backend.rules.apply(req.headers_mut());
        if self.upgrade.is_some() {
            req.extensions_mut().insert(WantsUpgrade);
        }
        Some(*req)
    }

    fn can_send(&self) -> bool {
        self.replay.is_some() || self.streamed.is_some()
    }
}

/// How trying one pool's candidates ended without a response to return.
struct Exhausted {
    /// Whether any candidate was tried at all.
    tried: bool,
    /// Whether every attempt failed to connect (nothing reached a backend).
    connect_only: bool,
    /// The last retryable answer given up on, and from whom.
    last_answer: Option<(u16, HeaderValue)>,
    /// Whether a candidate was skipped for being at its in-flight cap.
    saw_full: bool,
    /// Why the last connection attempt failed.
    connect_error: Option<String>,
}

impl Context<'_> {
    async fn forward(
        &self,
        client: &ClientConn,
        req: Request<ClientBody>,
        peeked: Option<Peeked>,
        candidates: &[u32],
        add_headers: Vec<(http::HeaderName, HeaderValue)>,
        permit: Option<Permit>,
    ) -> Response<ResponseBody> {
        let route = self.route;
        let (mut parts, body) = req.into_parts();
        let upgrade = is_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if route.auth.is_some() && !route.pool.pass_client_auth {
            // The key was for the proxy; the backend gets the pool's own.
            strip_client_auth(&mut parts.headers);
        }
        add_forwarded_for(&mut parts.headers, &client.forwarded_for);
        for (name, value) in add_headers {
            parts.headers.insert(name, value);
        }
        if let Some(uri) = upstream_uri(&parts.uri, route.strip_prefix.as_deref()) {
            parts.uri = uri;
        }
        if route.preserve_host
            && !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, authority);
        }
        parts.version = http::Version::HTTP_11;
        let retry_answers = route.retries.non_idempotent || parts.method.is_idempotent();
        let limit = route.retries.buffer_body;
        let mut out = match hold(parts, body, peeked, limit, route.preserve_host).await {
            Ok(held) => Outgoing {
                replay: Some(held),
                streamed: None,
                retry_answers,
                preserve_host: route.preserve_host,
                upgrade: client_upgrade,
            },
            Err(Held::Streamed(req)) => Outgoing {
                replay: None,
                streamed: Some(req),
                retry_answers: false,
                preserve_host: route.preserve_host,
                upgrade: client_upgrade,
            },
            Err(Held::Failed(e)) => return body_failed(&e),
        };
        let mut permit = permit;
        let exhausted = match self
            .attempt(&route.pool, candidates, &mut out, &mut permit)
            .await
        {
            Ok(resp) => return resp,
            Err(e) => e,
        };
        self.fall_back(exhausted, &mut out, &mut permit).await
    }

    /// The route's last resort once its pool could not serve: the fallback
    /// pool if nothing reached a backend, then the fallback reply; or the
    /// last answer given up on.
    async fn fall_back(
        &self,
        exhausted: Exhausted,
        out: &mut Outgoing,
        permit: &mut Option<Permit>,
    ) -> Response<ResponseBody> {
        let route = self.route;
        let unreachable = !exhausted.tried || exhausted.connect_only;
        if let (true, Some(fallback)) = (unreachable, &route.fallback) {
            if let Some(pool) = &fallback.pool
                && out.can_send()
            {
                metrics::counter!("switchyard_fallbacks_total", "route" => route.name.clone(), "kind" => "pool")
                    .increment(1);
                let (ids, len) = least_outstanding(pool);
                if let Ok(resp) = self
                    .attempt(pool, &ids[..usize::from(len)], out, permit)
                    .await
                {
                    return resp;
                }
            }
            metrics::counter!("switchyard_fallbacks_total", "route" => route.name.clone(), "kind" => "reply")
                .increment(1);
            route.metrics.local_replies.increment(1);
            let status =
                StatusCode::from_u16(fallback.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = reply(status, fallback.body.clone());
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, fallback.content_type.clone());
            if let Some(after) = &fallback.retry_after {
                h.insert(header::RETRY_AFTER, after.clone());
            }
            return resp;
        }
        route.metrics.local_replies.increment(1);
        match exhausted.last_answer {
            Some((status, backend)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut resp = reply(
                    status,
                    format!(
                        "every backend tried for route {} failed; the last answered {}\n",
                        route.name,
                        status.as_u16()
                    ),
                );
                if self.backend_header {
                    resp.headers_mut()
                        .insert(X_SWITCHYARD_BACKEND.clone(), backend);
                }
                resp
            }
            None if exhausted.tried => reply(
                StatusCode::BAD_GATEWAY,
                format!(
                    "no backend of route {} could be reached: {}\n",
                    route.name,
                    exhausted
                        .connect_error
                        .as_deref()
                        .unwrap_or("connect failed")
                ),
            ),
            None if exhausted.saw_full => {
                metrics::counter!("switchyard_admission_refused_total", "route" => route.name.clone(), "reason" => "backends_full")
                    .increment(1);
                let mut resp = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("every backend of route {} is at capacity\n", route.name),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
            None => {
                let mut resp = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no usable backend for route {}\n", route.name),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
        }
    }

    /// Tries `candidates` of `pool` in order. Returns the response to send,
    /// or how the attempts ran out.
    async fn attempt(
        &self,
        pool: &Arc<Pool>,
        candidates: &[u32],
        out: &mut Outgoing,
        permit: &mut Option<Permit>,
    ) -> Result<Response<ResponseBody>, Exhausted> {
        let route = self.route;
        let retries = &route.retries;
        let t = &route.timeouts;
        // The total timeout bounds the wait for headers too.
        let first_byte = match (t.first_byte.is_zero(), t.total.is_zero()) {
            (_, true) => t.first_byte,
            (true, false) => t.total,
            (false, false) => t.first_byte.min(t.total),
        };
        let mut exhausted = Exhausted {
            tried: false,
            connect_only: true,
            last_answer: None,
            saw_full: false,
            connect_error: None,
        };
        let own = Arc::ptr_eq(pool, &route.pool);
        let mut attempts = 0;
        // Why the previous attempt failed; connect errors retry for free.
        let mut previous: Option<&'static str> = None;
        for (i, &id) in candidates.iter().enumerate() {
            let backend = &pool.backends[id as usize];
            if attempts == retries.attempts {
                break;
            }
            let Some(mut guard) = backend.state.try_start(pool.max_in_flight) else {
                exhausted.saw_full |=
                    pool.max_in_flight != 0 && backend.state.in_flight() >= pool.max_in_flight;
                continue;
            };
            if let Some(reason) = previous
                && reason != "connect"
                && !route.budget.try_retry(pool.recent_requests())
            {
                metrics::counter!("switchyard_retry_budget_exhausted_total", "route" => route.name.clone())
                    .increment(1);
                break;
            }
            let Some(req) = out.take(backend) else { break };
            if let Some(reason) = previous {
                metrics::counter!("switchyard_retries_total", "route" => route.name.clone(), "reason" => reason)
                    .increment(1);
            }
            attempts += 1;
            exhausted.tried = true;
            guard.sent();
            let started = Instant::now();
            let sent = self
                .worker
                .upstream
                .send(backend, req, out.replay.as_ref(), t.connect, first_byte)
                .await;
            // Another candidate worth trying, should this one fail.
            let more = attempts < retries.attempts
                && candidates[i + 1..]
                    .iter()
                    .any(|&n| pool.backends[n as usize].state.is_usable());
            match sent {
                Ok((mut resp, lease)) => {
                    let status = resp.status().as_u16();
                    let ttfb_us = micros(started);
                    backend.state.record_ttfb(ttfb_us);
                    let quota = QuotaReport::from_headers(resp.headers());
                    if let Some(quota) = &quota {
                        backend.state.record_quota(quota);
                    }
                    route.metrics.count(pool, own, backend.id, status);
                    if own {
                        route.metrics.ttfb(id, f64::from(ttfb_us) / 1e6);
                    }
                    let retry_after_ms = quota.and_then(|q| q.retry_after_ms);
                    let retryable = (status == 429 && retries.on_429)
                        || (matches!(status, 502..=504) && retries.on_5xx);
                    if retryable && more && out.retry_answers && out.replay.is_some() {
                        // Given up on before its body: the connection is not reused.
                        drop(resp);
                        drop(lease);
                        drop(guard);
                        let timing = Timing {
                            latency_us: ttfb_us,
                            ttfb_us,
                            retry_after_ms,
                            ..Timing::default()
                        };
                        pool.record(id, Outcome::Response(status), timing);
                        exhausted.connect_only = false;
                        exhausted.last_answer = Some((status, backend.name_header.clone()));
                        previous = Some(if status == 429 { "429" } else { "5xx" });
                        continue;
                    }
                    strip_hop_by_hop(resp.headers_mut(), status == 101);
                    if self.backend_header {
                        resp.headers_mut()
                            .insert(X_SWITCHYARD_BACKEND.clone(), backend.name_header.clone());
                    }
                    let exchange = Exchange {
                        pool: pool.clone(),
                        backend: id,
                        guard,
                        lease: Some(lease),
                        started,
                        status,
                        ttfb_us,
                        retry_after_ms,
                        duration: if own {
                            route.metrics.duration(id)
                        } else {
                            None
                        },
                        meter: None,
                    };
                    if status == 101 {
                        let upstream_upgrade = hyper::upgrade::on(&mut resp);
                        if let Some(client_upgrade) = out.upgrade.take() {
                            tokio::task::spawn_local(tunnel(
                                client_upgrade,
                                upstream_upgrade,
                                exchange,
                                permit.take(),
                            ));
                        }
                        return Ok(resp.map(|_| Either::Right(Full::new(Bytes::new()))));
                    }
                    let content_type = resp
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .map_or(&b""[..], |v| v.as_bytes());
                    let sse = content_type.starts_with(b"text/event-stream");
                    let mut exchange = exchange;
                    if (sse || content_type.starts_with(b"application/json"))
                        && (200..300).contains(&status)
                    {
                        exchange.meter = Some(Box::new(UsageMeter {
                            scan: UsageScan::default(),
                            route: route.name.clone(),
                            backend: backend.name.clone(),
                            client: self.caller.clone(),
                            prices: backend.prices,
                        }));
                    }
                    let permit = permit.take();
                    return Ok(resp.map(|body| {
                        Either::Left(ProxiedBody::new(
                            body, exchange, t.idle, t.total, sse, permit,
                        ))
                    }));
                }
                Err(SendError::Connect(_, reason)) if reason.is_local() => {
                    // Out of descriptors here: no backend is to blame, and
                    // the next candidate would fail the same way.
                    drop(guard);
                    metrics::counter!("switchyard_local_errors_total", "kind" => "connect")
                        .increment(1);
                    tracing::error!(route = %route.name, "{reason}; answering 503");
                    let mut resp = reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the proxy is out of resources (open files); try again shortly\n",
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Ok(resp);
                }
                Err(SendError::Connect(back, reason)) => {
                    drop(guard);
                    pool.record(id, Outcome::ConnectError, timing_of(started));
                    tracing::warn!(route = %route.name, backend = %backend.name, "{reason}; trying the next candidate");
                    exhausted.connect_error = Some(reason.to_string());
                    if out.replay.is_none() {
                        let mut back = back;
                        // The next backend gets its own credentials only.
                        backend.rules.undo(back.headers_mut());
                        out.streamed = Some(back);
                    }
                    previous = Some("connect");
                }
                Err(SendError::Timeout) => {
                    drop(guard);
                    pool.record(id, Outcome::Timeout, timing_of(started));
                    route.metrics.count(pool, own, backend.id, 504);
                    metrics::counter!("switchyard_timeouts_total", "route" => route.name.clone(), "kind" => "first_byte")
                        .increment(1);
                    // Nothing came back: a request that may be repeated
                    // tries the next candidate, as after a 504.
                    if more && out.retry_answers && out.replay.is_some() && retries.on_5xx {
                        tracing::warn!(route = %route.name, backend = %backend.name,
                            "no response within {first_byte:?}; trying the next candidate");
                        exhausted.connect_only = false;
                        exhausted.last_answer = Some((504, backend.name_header.clone()));
                        previous = Some("timeout");
                        continue;
                    }
                    let body = format!(
                        "backend {} sent no response within {first_byte:?}\n",
                        backend.name
                    );
                    return Ok(self.tagged(reply(StatusCode::GATEWAY_TIMEOUT, body), backend));
                }
                Err(SendError::Failed(e)) if client_body_fault(&e).is_some() => {
                    // The client's body broke off or was malformed: not the
                    // backend's failure, and nothing a retry could mend.
                    drop(guard);
                    let fault = client_body_fault(&e).unwrap_or_else(|| unreachable!("guard"));
                    tracing::debug!(route = %route.name, "request body failed while streaming: {fault}");
                    route.metrics.count(pool, own, backend.id, 400);
                    return Ok(body_failed(fault));
                }
                Err(SendError::Failed(e)) => {
                    drop(guard);
                    pool.record(id, Outcome::Reset, timing_of(started));
                    route.metrics.count(pool, own, backend.id, 502);
                    tracing::warn!(route = %route.name, backend = %backend.name, "upstream failed: {e}");
                    if more && out.retry_answers && out.replay.is_some() && retries.on_5xx {
                        exhausted.connect_only = false;
                        exhausted.last_answer = Some((502, backend.name_header.clone()));
                        previous = Some("reset");
                        continue;
                    }
                    let body = format!("backend {} failed: {e}\n", backend.name);
                    return Ok(self.tagged(reply(StatusCode::BAD_GATEWAY, body), backend));
                }
            }
        }
        Err(exhausted)
    }

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

/// Why a request could not be held whole.
enum Held {
    /// Its body is too large or of unknown length: it streams, once.
    Streamed(Box<Request<UpstreamBody>>),
    /// The client's body broke, or stalled, while it was read.
    Failed(ClientBodyError),
}

/// Holds the request whole when its body is empty or declares a length
/// within `limit`, so it can be sent more than once. A body-less request
/// (the common GET) is held without awaiting anything.
async fn hold(
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
    /// The part a router may see: the first `limit` bytes, and whether they
    /// are the whole body.
    fn view(&self) -> super::worker::BodyView<'_> {
        let prefix = &self.head[..self.head.len().min(self.limit)];
        super::worker::BodyView {
            prefix,
            whole: self.complete && prefix.len() == self.head.len(),
        }
    }
}

/// Whether `req` declares a JSON body.
fn is_json<B>(req: &Request<B>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/json")
    })
}

/// Reads up to `limit` bytes of `req`'s body, stopping early at its end.
/// The bytes read go upstream ahead of the rest, so the body is sent on
/// unchanged.
async fn peek(body: &mut ClientBody, limit: usize) -> Result<Peeked, ClientBodyError> {
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

fn timing_of(started: Instant) -> Timing {
    Timing {
        latency_us: micros(started),
        ..Timing::default()
    }
}

/// Relays bytes both ways after a protocol switch; the exchange (and the
/// backend's in-flight count) lasts as long as the tunnel.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    exchange: Exchange,
    permit: Option<Permit>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let result =
        tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
    if let Err(e) = result {
        tracing::debug!("tunnel ended: {e}");
    }
    drop(exchange);
    drop(permit);
}

/// The URI to send upstream in origin form, or `None` when the client's can
/// be sent unchanged (the common HTTP/1.1 case, which then costs nothing).
fn upstream_uri(uri: &Uri, strip: Option<&str>) -> Option<Uri> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let stripped = match strip {
        Some(prefix) => match path_and_query.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('?') => Some(format!("/{rest}")),
            Some(rest) => Some(rest.to_string()),
            None => None,
        },
        None => None,
    };
    match stripped {
        Some(p) => p.parse().ok(),
        None if uri.scheme().is_some() || uri.authority().is_some() => path_and_query.parse().ok(),
        None => None,
    }
}

/// `uri` with its path replaced by `path`, query and authority kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}

/// The client-body error behind an upstream send failure, if that is what
/// broke it.
fn client_body_fault(e: &hyper::Error) -> Option<&ClientBodyError> {
    std::error::Error::source(e)?.downcast_ref::<ClientBodyError>()
}

/// The answer to a request whose body could not be read: 408 when the
/// client stalled, 400 when its body was malformed or cut.
fn body_failed(e: &ClientBodyError) -> Response<ResponseBody> {
    let status = match e {
        ClientBodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        ClientBodyError::Read(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = reply(status, format!("cannot read the request body: {e}\n"));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A refused client key, in the OpenAI error shape so SDKs raise their
/// authentication error with the message.
fn unauthorized(refusal: auth::Refusal) -> Response<ResponseBody> {
    let message = match refusal {
        auth::Refusal::Missing => {
            "This route requires an API key: send it as `Authorization: Bearer <key>`, `x-api-key` or `api-key`."
        }
        auth::Refusal::Unknown => "The API key is not valid for this route.",
    };
    let body = serde_json::json!({"error": {
        "message": message, "type": "invalid_request_error", "param": null, "code": "invalid_api_key",
    }});
    let mut resp = reply(StatusCode::UNAUTHORIZED, format!("{body}\n"));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"switchyard\""),
    );
    resp
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_strips_prefix_and_absolute_form() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(upstream_uri(&u("/v1/chat"), None), None);
        assert_eq!(
            upstream_uri(&u("http://h/v1/chat?a=1"), None),
            Some(u("/v1/chat?a=1"))
        );
        assert_eq!(
            upstream_uri(&u("/graphs/r/v1/chat"), Some("/graphs/r")),
            Some(u("/v1/chat"))
        );
        assert_eq!(
            upstream_uri(&u("/graphs/r?x=1"), Some("/graphs/r")),
            Some(u("/?x=1"))
        );
        assert_eq!(
            upstream_uri(&u("/graphs/r"), Some("/graphs/r")),
            Some(u("/"))
        );
    }
}
