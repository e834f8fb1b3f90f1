//! The life of one request, top to bottom: normalise the path, match a
//! route, authenticate the caller, admit, read what the router needs of
//! the body, decide, then dispatch (attempts, fallback) or answer directly;
//! the access log line last.

use super::attempt::Dispatch;
use super::body::ProxiedBody;
use super::headers::{X_SWITCHYARD_BACKEND, X_SWITCHYARD_DEBUG};
use super::job::EventBody;
use super::outgoing::with_path;
use super::path;
use super::reply::{body_failed, decision_details, reply, unauthorized};
use super::request_body::{ClientBody, Peeked, Source, is_json, peek};
use super::worker::Worker;
use crate::plugin::Choice;
use crate::route::auth;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// Body of every response the proxy sends: streamed from a backend, a
/// short reply of its own, or a job's events.
pub type ResponseBody = Either<ProxiedBody, Either<Full<Bytes>, EventBody>>;

/// A short body of the proxy's own.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Either::Left(Full::new(bytes.into())))
}

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
    req: Request<Source>,
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
    if table.jobs.is_some() && req.uri().path().starts_with("/jobs/") {
        return Ok(Box::pin(super::job::resume(table.clone(), req)).await);
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
    if route.jobs.is_some() {
        let call = super::job::JobCall {
            worker: worker.clone(),
            table: table.clone(),
            route: table
                .routes
                .iter()
                .position(|r| std::ptr::eq(r, route))
                .unwrap_or_default(),
            client: client.clone(),
            caller: caller.as_ref().map(|c| c.name.clone()),
            permit,
        };
        return Ok(Box::pin(super::job::serve(call, req)).await);
    }
    let debug = table.debug_header && req.headers().contains_key(&X_SWITCHYARD_DEBUG);
    // Boxed, like the other rarely used state: every byte of this future
    // is copied once per request when hyper stores it.
    let logged = table
        .access_log
        .then(|| Box::new((req.method().clone(), req.uri().clone(), Instant::now())));
    let peeked = match route.body_peek {
        Some(limit) if is_json(&req) => match peek(req.body_mut(), limit).await {
            Ok(peeked) => Some(peeked),
            Err(e) => return Ok(body_failed(&e)),
        },
        _ => None,
    };
    let run = table.runs.as_ref().and_then(|l| l.run_id(req.headers()));
    let mut watch = route.watch(&req, client.peer.ip());
    let choice = worker.decide(
        route,
        &req,
        peeked.as_ref().map(Peeked::view),
        client.peer.ip(),
        watch.as_deref_mut(),
    );
    let details = debug.then(|| decision_details(route, &choice));
    let mut resp = match choice {
        Choice::Reply { status, body } => {
            route.metrics.local_replies.increment(1);
            if let Some(watch) = watch.take() {
                watch.finish_local(status);
            }
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
            hedge,
        } => {
            let dispatch = Dispatch {
                worker: &worker,
                route,
                backend_header: table.backend_header,
                caller: caller.as_ref().map(|c| c.name.clone()),
                job: None,
                run,
                runs: table.runs.clone(),
                watch: std::cell::Cell::new(watch.take()),
                hedge,
            };
            let resp = dispatch
                .forward(
                    &client,
                    req,
                    peeked,
                    candidates.as_slice(),
                    add_headers,
                    permit,
                )
                .await;
            // Still here: no backend's exchange took it, the proxy answered.
            if let Some(watch) = dispatch.watch.take() {
                watch.finish_local(resp.status().as_u16());
            }
            resp
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
