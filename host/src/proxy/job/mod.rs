//! Job routes: a request starts a long job instead of waiting on one
//! upstream exchange. The proxy names the job, routes it with the route's
//! router as any request, and forwards it with `x-switchyard-job-id` and
//! `x-switchyard-reply-to`. A worker answers directly (its answer becomes
//! the job's `result` or `error`) or with `202` at once, then appends
//! events to the job's log itself. The client follows the log over a
//! WebSocket or server-sent events, or waits for the end, or takes a `202`
//! and comes back; it may drop and resume on any replica with the store.
//!
//! The job outlives the client connection: the replica that started it
//! holds the backend's in-flight count while the job runs, ends it with an
//! `error` event when the worker falls silent for `job_timeout`, and feeds
//! its outcome to the pool's live state and breakers.

use super::reply::{reply, unauthorized};
use super::request_body::ClientBody;
use super::service::{ClientConn, ResponseBody};
use super::websocket::{self, WsReader, WsWriter, close};
use super::worker::Worker;
use crate::jobs::{EventId, JobId, kind};
use crate::route::{JobRoute, Permit, Route, RouteTable};
use bytes::Bytes;
use driver::{Ending, drive};
use edge::{
    insert, job_request, json_reply, last_event_id, query, read_body, store_unavailable,
    websocket_accepted,
};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use relay::{Follower, event_json, events_response, first_message, relay_websocket, wait_for_end};
use serde_json::json;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

mod driver;
mod edge;
mod relay;

pub use driver::JobTicket;
pub use relay::EventBody;

/// The job's id, on the forwarded request and on answers to the client.
pub static X_SWITCHYARD_JOB_ID: HeaderName = HeaderName::from_static("x-switchyard-job-id");
/// The store key the worker appends the job's events to.
pub static X_SWITCHYARD_REPLY_TO: HeaderName = HeaderName::from_static("x-switchyard-reply-to");

/// A relay's own watchdog fires this long after the owner's would, so the
/// replica that started the job normally ends it.
const WATCHDOG_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for a WebSocket client's first message (the job request).
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(60);

/// What the data path hands a job request.
pub struct JobCall {
    pub worker: Rc<Worker>,
    #[allow(clippy::redundant_allocation)]
    pub table: Rc<Arc<RouteTable>>,
    /// The route's index in `table`.
    pub route: usize,
    pub client: Rc<ClientConn>,
    /// The authenticated caller's key name.
    pub caller: Option<Arc<str>>,
    /// The route's admission slot, held while the job runs.
    pub permit: Option<Permit>,
}

impl JobCall {
    fn route(&self) -> &Route {
        &self.table.routes[self.route]
    }

    fn jobs(&self) -> &Arc<JobRoute> {
        self.route().jobs.as_ref().expect("a job route")
    }
}

/// How the client follows its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Messages on a WebSocket.
    WebSocket,
    /// Server-sent events (`accept: text/event-stream`).
    Events,
    /// `202` with the job's location (`prefer: respond-async`).
    Async,
    /// One answer when the job ends.
    Wait,
}

fn follow_mode<B>(req: &Request<B>) -> Follow {
    let has = |name: HeaderName, what: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(what))
    };
    if websocket::is_websocket(req) {
        Follow::WebSocket
    } else if has(header::ACCEPT, "text/event-stream") {
        Follow::Events
    } else if has(HeaderName::from_static("prefer"), "respond-async") {
        Follow::Async
    } else {
        Follow::Wait
    }
}

/// Serves a request to a job route: a new job, or (a WebSocket with
/// `?job=<id>`) a resumed one.
pub async fn serve(call: JobCall, mut req: Request<ClientBody>) -> Response<ResponseBody> {
    let mode = follow_mode(&req);
    if let Some(id) = query(req.uri(), "job") {
        let Some(id) = JobId::parse(&id) else {
            return reply(StatusCode::BAD_REQUEST, "`job` is not a job id\n");
        };
        let after = match last_event_id(&req) {
            Ok(after) => after,
            Err(bad) => return bad.response(),
        };
        let (jobs, route) = (call.jobs().clone(), call.route().name.clone());
        return follow_existing(jobs, &route, id, after, mode, &mut req).await;
    }
    let max_body = call.jobs().settings.max_body as usize;
    if mode == Follow::WebSocket {
        let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        let slot = req.extensions_mut().remove::<crate::proxy::HeldSlot>();
        let (parts, _) = req.into_parts();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            let (mut reader, mut writer) = (WsReader::new(read, max_body), WsWriter::new(write));
            let body = match first_message(&mut reader, &mut writer).await {
                Some(body) => body,
                None => return,
            };
            let parts = job_request(parts, &body);
            let jobs = call.jobs().clone();
            let route = call.route().name.clone();
            match start(call, parts, body).await {
                Ok((id, _)) => {
                    let follower = Follower::new(jobs.clone(), id, None);
                    let _relay = jobs.counts.relay(&route);
                    relay_websocket(follower, reader, writer).await;
                }
                Err(refused) => {
                    let text = json!({"type": kind::ERROR, "data": refused.json()}).to_string();
                    let _ = writer.text(&text).await;
                    let _ = writer.close(close::ERROR, "job refused").await;
                }
            }
        });
        return websocket_accepted(key.as_ref());
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let jobs = call.jobs().clone();
    let route = call.route().name.clone();
    let (id, accepted) = match start(call, parts, body).await {
        Ok(started) => started,
        Err(refused) => return refused.response(),
    };
    match mode {
        Follow::Async => {
            let location = format!("/jobs/{id}");
            let body = json!({"job": id.as_str(), "location": location}).to_string();
            let mut resp = json_reply(StatusCode::ACCEPTED, body);
            let h = resp.headers_mut();
            insert(h, header::LOCATION, &location);
            h.insert(
                HeaderName::from_static("preference-applied"),
                HeaderValue::from_static("respond-async"),
            );
            insert(h, X_SWITCHYARD_JOB_ID.clone(), id.as_str());
            resp
        }
        Follow::Events | Follow::WebSocket => {
            let follower = Follower::new(jobs.clone(), id.clone(), None);
            let relay = jobs.counts.relay(&route);
            events_response(follower, relay, &id)
        }
        Follow::Wait => {
            let follower = Follower::new(jobs, id.clone(), Some(accepted));
            let mut resp = wait_for_end(follower).await;
            insert(resp.headers_mut(), X_SWITCHYARD_JOB_ID.clone(), id.as_str());
            resp
        }
    }
}

/// Serves `GET /jobs/<id>`: the job's events from `last-event-id` on, over
/// a WebSocket or as server-sent events, or its state and events as JSON.
#[allow(clippy::redundant_allocation)]
pub async fn resume(
    table: Rc<Arc<RouteTable>>,
    mut req: Request<ClientBody>,
) -> Response<ResponseBody> {
    let Some(store) = table.jobs.clone() else {
        return reply(StatusCode::NOT_FOUND, "no route matches this request\n");
    };
    let rest = req.uri().path().trim_start_matches("/jobs/");
    let Some(id) = JobId::parse(rest) else {
        return reply(
            StatusCode::NOT_FOUND,
            "not a job id; jobs are at /jobs/<id>\n",
        );
    };
    if req.method() != http::Method::GET {
        let mut resp = reply(StatusCode::METHOD_NOT_ALLOWED, "jobs are read with GET\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let after = match last_event_id(&req) {
        Ok(after) => after,
        Err(bad) => return bad.response(),
    };
    let route_name = match store.route_of(&id).await {
        Ok(Some(route)) => route,
        Ok(None) => {
            return reply(
                StatusCode::NOT_FOUND,
                format!("no job {id} (unknown or expired)\n"),
            );
        }
        Err(e) => return store_unavailable(&e),
    };
    let Some(route) = table.named(&route_name) else {
        return reply(StatusCode::NOT_FOUND, format!("job {id}'s route is gone\n"));
    };
    let Some(jobs) = route.jobs.clone() else {
        return reply(StatusCode::NOT_FOUND, format!("job {id}'s route is gone\n"));
    };
    // The job's route guards it as it guards a new job.
    if let Some(keys) = &route.auth
        && let Err(refusal) = keys.authenticate(req.headers())
    {
        return unauthorized(refusal);
    }
    let mode = follow_mode(&req);
    follow_existing(jobs, &route_name, id, after, mode, &mut req).await
}

async fn follow_existing(
    jobs: Arc<JobRoute>,
    route: &str,
    id: JobId,
    after: Option<EventId>,
    mode: Follow,
    req: &mut Request<ClientBody>,
) -> Response<ResponseBody> {
    jobs.counts.resume(route);
    match mode {
        Follow::WebSocket => {
            let on_upgrade = hyper::upgrade::on(&mut *req);
            let slot = req.extensions_mut().remove::<crate::proxy::HeldSlot>();
            let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
            let max = jobs.settings.max_body as usize;
            let route = route.to_string();
            tokio::task::spawn_local(async move {
                let _slot = slot;
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                let follower = Follower::new(jobs.clone(), id, after);
                let _relay = jobs.counts.relay(&route);
                relay_websocket(follower, WsReader::new(read, max), WsWriter::new(write)).await;
            });
            websocket_accepted(key.as_ref())
        }
        Follow::Events => {
            let follower = Follower::new(jobs.clone(), id.clone(), after);
            let relay = jobs.counts.relay(route);
            events_response(follower, relay, &id)
        }
        Follow::Async | Follow::Wait => match jobs.store.read(&id, after).await {
            Ok(events) => {
                let state = match events.iter().rev().find(|e| e.is_terminal()) {
                    Some(e) if e.kind == kind::RESULT => "done",
                    Some(_) => "failed",
                    None => "running",
                };
                let events: Vec<_> = events.iter().map(event_json).collect();
                let body =
                    json!({"job": id.as_str(), "route": route, "state": state, "events": events});
                json_reply(StatusCode::OK, body.to_string())
            }
            Err(e) => store_unavailable(&e),
        },
    }
}

/// Why a new job was not started.
struct Refused {
    status: StatusCode,
    message: String,
}

impl Refused {
    fn json(&self) -> serde_json::Value {
        json!({"status": self.status.as_u16(), "message": self.message})
    }

    fn response(&self) -> Response<ResponseBody> {
        let mut resp = json_reply(self.status, self.json().to_string());
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    }
}

/// Starts a job: within the route's limit, its log begun in the store, its
/// driver running on this thread. Returns its id and `accepted` event id.
async fn start(
    call: JobCall,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<(JobId, EventId), Refused> {
    let jobs = call.jobs().clone();
    let route = call.route().name.clone();
    let settings = &jobs.settings;
    let running = jobs
        .counts
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed);
    if running >= u64::from(settings.max_in_flight) {
        jobs.counts.refuse(&route, "full");
        return Err(Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "route {route} has {running} jobs running (jobs.max_in_flight); try again later"
            ),
        });
    }
    let id = JobId::new();
    let accepted = match jobs.store.create(&id, &route, settings.ttl).await {
        Ok(accepted) => accepted,
        Err(e) => {
            jobs.counts.refuse(&route, "store");
            tracing::warn!(route = %route, "job refused: {e}");
            return Err(Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("cannot start a job: {e}"),
            });
        }
    };
    jobs.counts.start(&route);
    tracing::debug!(route = %route, job = %id, "job started");
    let job = id.clone();
    tokio::task::spawn_local(async move {
        let Ending { end, event } = drive(&call, &job, accepted, parts, body).await;
        let jobs = call.jobs();
        jobs.counts.end(&route, end);
        if let Some((kind, data)) = event
            && let Err(e) = jobs
                .store
                .append(&job, kind, &data, jobs.settings.ttl)
                .await
        {
            tracing::warn!(job = %job, "cannot record the job's end: {e}");
        }
        // The admission slot, if the route has one, is free only now.
        drop(call.permit);
        tracing::debug!(route = %route, job = %job, ?end, "job ended");
    });
    Ok((id, accepted))
}
