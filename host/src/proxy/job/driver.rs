//! A job's owner: routes and forwards the job's request, then either
//! records the worker's direct answer as the job's end or, after a `202`,
//! holds the backend's in-flight count and watches the log until the end
//! or until the worker falls silent, and feeds the outcome to the pool.

use super::{JobCall, X_SWITCHYARD_JOB_ID, X_SWITCHYARD_REPLY_TO};
use crate::balance::{InFlightGuard, Outcome, Timing};
use crate::jobs::{Delivery, EventId, JobEnd, JobId, JobStore, kind};
use crate::plugin::Choice;
use crate::pool::Pool;
use crate::proxy::attempt::Dispatch;
use crate::proxy::body::BodyError;
use crate::proxy::request_body::{ClientBody, Peeked, is_json};
use crate::proxy::service::ResponseBody;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;
use tokio::time::Instant as TokioInstant;

/// The backend a job's request reached, noted by the attempt that got the
/// answer the client's job keeps.
#[derive(Default)]
pub struct JobTicket {
    reached: RefCell<Option<Reached>>,
}

struct Reached {
    pool: Arc<Pool>,
    id: u32,
    name: String,
    /// Holds the backend's in-flight count while an accepted (`202`) job
    /// runs on it, after its HTTP exchange has ended.
    guard: Option<InFlightGuard>,
}

impl JobTicket {
    /// Notes that `backend` of `pool` gave the kept answer, `status`.
    pub fn reached(&self, pool: &Arc<Pool>, id: u32, status: u16) {
        let backend = &pool.backends[id as usize];
        *self.reached.borrow_mut() = Some(Reached {
            pool: pool.clone(),
            id,
            name: backend.name.clone(),
            guard: (status == 202).then(|| backend.state.start_request()),
        });
    }
}

/// How a job ended, and the terminal event the proxy still has to write
/// for it (none when the worker wrote its own).
///
/// The caller counts the end before it writes the event, so whoever sees
/// the event in the log also sees the job counted in `/status`.
pub(super) struct Ending {
    pub end: JobEnd,
    pub event: Option<(&'static str, String)>,
}

impl Ending {
    fn written(end: JobEnd) -> Self {
        Ending { end, event: None }
    }

    fn to_write(end: JobEnd, kind: &'static str, data: String) -> Self {
        Ending {
            end,
            event: Some((kind, data)),
        }
    }
}

/// Runs one job from its routing decision to its end.
pub(super) async fn drive(
    call: &JobCall,
    id: &JobId,
    accepted: EventId,
    parts: http::request::Parts,
    body: Bytes,
) -> Ending {
    let started = Instant::now();
    let route = call.route();
    let jobs = call.jobs();
    let (store, ttl) = (&jobs.store, jobs.settings.ttl);
    let req = Request::from_parts(parts, ClientBody::empty());
    let run = call
        .table
        .runs
        .as_ref()
        .and_then(|l| l.run_id(req.headers()));
    let peek = route.router.as_ref().map_or(0, |p| p.spec.body_peek);
    let peeked = Peeked::whole(body, peek);
    let view = is_json(&req).then(|| peeked.view());
    let choice = call
        .worker
        .decide(route, &req, view, call.client.peer.ip(), None);
    let (candidates, mut add_headers) = match choice {
        Choice::Reply { status, body } => {
            let data = json!({"status": status, "message": body.trim_end()}).to_string();
            return Ending::to_write(JobEnd::Failed, kind::ERROR, data);
        }
        // A job is never hedged: a second worker would run it twice.
        Choice::Forward {
            candidates,
            add_headers,
            ..
        } => (candidates, add_headers),
    };
    let header = |v: &str| HeaderValue::from_str(v).expect("ids and keys are header-safe");
    add_headers.push((X_SWITCHYARD_JOB_ID.clone(), header(id.as_str())));
    add_headers.push((X_SWITCHYARD_REPLY_TO.clone(), header(&store.stream_key(id))));
    let ticket = JobTicket::default();
    let dispatch = Dispatch {
        worker: &call.worker,
        route,
        backend_header: false,
        caller: call.caller.clone(),
        job: Some(&ticket),
        run: run.clone(),
        runs: call.table.runs.clone(),
        watch: Default::default(),
        hedge: None,
    };
    let resp = dispatch
        .forward(
            &call.client,
            req,
            Some(peeked),
            candidates.as_slice(),
            add_headers,
            None,
        )
        .await;
    let status = resp.status();
    let reached = ticket.reached.borrow_mut().take();
    let answer = collect(resp.into_body()).await;
    match reached {
        Some(reached) if status == StatusCode::ACCEPTED => {
            // The worker took the job; its events come through the store.
            let end = watch(store, id, accepted, &jobs.settings, &reached.name).await;
            let (outcome, timing) = end.outcome(started);
            reached.pool.record(reached.id, outcome, timing);
            let usd = count_tokens(&route.name, &reached, call.caller.as_deref(), &timing);
            if let (Some(run), Some(ledger)) = (&run, &call.table.runs) {
                let (p, c) = (timing.prompt_tokens, timing.completion_tokens);
                ledger.add(run, u64::from(p), u64::from(c), (usd * 1e6).round() as u64);
            }
            if end.ended_by_worker {
                let _ = store.keep(id, ttl).await;
            }
            drop(reached.guard);
            match end.timeout {
                Some(data) => Ending::to_write(end.end, kind::ERROR, data),
                None => Ending::written(end.end),
            }
        }
        _ => {
            // A direct answer: the job's end. Its exchange was recorded as
            // any request's.
            let (event, data) = match answer {
                Ok(bytes) if status.is_success() => {
                    (kind::RESULT, String::from_utf8_lossy(&bytes).into_owned())
                }
                Ok(bytes) => (
                    kind::ERROR,
                    json!({"status": status.as_u16(), "message": String::from_utf8_lossy(&bytes).trim_end()})
                        .to_string(),
                ),
                Err(e) => (
                    kind::ERROR,
                    json!({"status": 502, "message": format!("the worker's answer broke off: {e}")})
                        .to_string(),
                ),
            };
            let end = if event == kind::RESULT {
                JobEnd::Done
            } else {
                JobEnd::Failed
            };
            Ending::to_write(end, event, data)
        }
    }
}

/// Counts the tokens an accepted job's result reported, as the data path
/// counts a response's `usage`.
/// Returns the estimated cost in USD.
fn count_tokens(route: &str, reached: &Reached, caller: Option<&str>, timing: &Timing) -> f64 {
    if timing.prompt_tokens == 0 && timing.completion_tokens == 0 {
        return 0.0;
    }
    let backend = &reached.pool.backends[reached.id as usize];
    let labels = |kind: &'static str| {
        [
            ("route", route.to_string()),
            ("backend", reached.name.clone()),
            ("client", caller.unwrap_or("").to_string()),
            ("kind", kind.to_string()),
        ]
    };
    metrics::counter!("switchyard_tokens_total", &labels("prompt"))
        .increment(u64::from(timing.prompt_tokens));
    metrics::counter!("switchyard_tokens_total", &labels("completion"))
        .increment(u64::from(timing.completion_tokens));
    let (prompt_price, completion_price) = backend.prices;
    let usd = (f64::from(timing.prompt_tokens) * prompt_price
        + f64::from(timing.completion_tokens) * completion_price)
        / 1e6;
    if usd > 0.0 {
        let labels = [
            ("route", route.to_string()),
            ("backend", reached.name.clone()),
            ("client", caller.unwrap_or("").to_string()),
        ];
        metrics::counter!("switchyard_cost_microdollars_total", &labels)
            .increment((usd * 1e6).round() as u64);
    }
    usd
}

/// Reads a body whole, up to [`crate::jobs::MAX_DATA`] bytes.
async fn collect(body: ResponseBody) -> Result<Bytes, BodyError> {
    Limited::new(body, crate::jobs::MAX_DATA)
        .collect()
        .await
        .map(|c| c.to_bytes())
}

/// How a running job ended, as its owner saw it.
struct Watched {
    end: JobEnd,
    /// The ending event came from the worker (not the proxy's watchdog).
    ended_by_worker: bool,
    /// The `result` or `error` data.
    data: String,
    /// The proxy's own `error` event for a silent worker, not yet written.
    timeout: Option<String>,
}

impl Watched {
    /// The outcome fed to the backend's live state and breakers.
    fn outcome(&self, started: Instant) -> (Outcome, Timing) {
        let value: serde_json::Value = serde_json::from_str(&self.data).unwrap_or_default();
        let usage = |k: &str| {
            value
                .get("usage")
                .and_then(|u| u.get(k))
                .and_then(serde_json::Value::as_u64)
                .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32)
        };
        let timing = Timing {
            latency_us: started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
            prompt_tokens: usage("prompt_tokens"),
            completion_tokens: usage("completion_tokens"),
            ..Timing::default()
        };
        let outcome = match self.end {
            JobEnd::Done => Outcome::Response(200),
            JobEnd::TimedOut => Outcome::Timeout,
            JobEnd::Failed => {
                let status = value
                    .get("status")
                    .and_then(serde_json::Value::as_u64)
                    .filter(|s| (400..600).contains(s))
                    .unwrap_or(502);
                Outcome::Response(status as u16)
            }
        };
        (outcome, timing)
    }
}

/// Follows an accepted job until its `result` or `error`, ending it with
/// an `error` event when the worker sends nothing for `job_timeout` or the
/// job outlives its time to live.
async fn watch(
    store: &JobStore,
    id: &JobId,
    accepted: EventId,
    settings: &crate::config::JobsConfig,
    backend: &str,
) -> Watched {
    let mut sub = store.subscribe(id, Some(accepted));
    let until = TokioInstant::now() + settings.ttl;
    let mut last = TokioInstant::now();
    loop {
        let silent = (last + settings.job_timeout).min(until);
        tokio::select! {
            delivery = sub.next() => match delivery {
                Some(Delivery::Event(e)) if e.is_terminal() => {
                    // A watchdog's error (ours or a relay's) is not the worker's.
                    let by_proxy = e.data.contains("\"error\":\"job_timeout\"");
                    return Watched {
                        end: if e.kind == kind::RESULT { JobEnd::Done } else if by_proxy { JobEnd::TimedOut } else { JobEnd::Failed },
                        ended_by_worker: !by_proxy,
                        data: e.data,
                        timeout: None,
                    };
                }
                Some(Delivery::Event(_)) => last = TokioInstant::now(),
                Some(Delivery::Down(_) | Delivery::Up) => {}
                None => {
                    return Watched { end: JobEnd::Failed, ended_by_worker: false, data: String::new(), timeout: None };
                }
            },
            () = tokio::time::sleep_until(silent) => {
                let message = if silent == until {
                    format!("the job outlived its time to live ({:?})", settings.ttl)
                } else {
                    format!("worker {backend} sent no event for {:?}", settings.job_timeout)
                };
                let data = timeout_data(&message);
                return Watched { end: JobEnd::TimedOut, ended_by_worker: false, timeout: Some(data.clone()), data };
            }
        }
    }
}

/// The data of the proxy's own `error` event for a silent worker.
pub(super) fn timeout_data(message: &str) -> String {
    json!({"status": 504, "error": "job_timeout", "message": message}).to_string()
}
