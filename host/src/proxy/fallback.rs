//! A route's last resort once its pool could not serve a request: the
//! fallback pool when nothing reached a backend, then the fallback reply;
//! otherwise the last answer given up on, or why nothing could be tried.

use super::attempt::Dispatch;
use super::headers::X_SWITCHYARD_BACKEND;
use super::outgoing::Outgoing;
use super::reply::reply;
use super::service::ResponseBody;
use crate::pool::{Backend, least_outstanding};
use crate::route::Permit;
use http::{HeaderValue, Response, StatusCode, header};

/// How trying one pool's candidates ended without a response to return.
pub struct Exhausted {
    /// Whether any candidate was tried at all.
    pub tried: bool,
    /// Whether every attempt failed to connect (nothing reached a backend).
    pub connect_only: bool,
    /// The last retryable answer given up on, and from whom.
    pub last_answer: Option<(u16, HeaderValue)>,
    /// Whether a candidate was skipped for being at its in-flight cap.
    pub saw_full: bool,
    /// Why the last connection attempt failed.
    pub connect_error: Option<String>,
}

impl Exhausted {
    pub fn new() -> Exhausted {
        Exhausted {
            tried: false,
            connect_only: true,
            last_answer: None,
            saw_full: false,
            connect_error: None,
        }
    }

    /// Records an answer (or a timeout or reset, as 504 or 502) that the
    /// request left `backend` for the next candidate after.
    pub fn gave_up_on(&mut self, status: u16, backend: &Backend) {
        self.connect_only = false;
        self.last_answer = Some((status, backend.name_header.clone()));
    }
}

impl Dispatch<'_> {
    /// The route's last resort once its pool could not serve: the fallback
    /// pool if nothing reached a backend, then the fallback reply; or the
    /// last answer given up on.
    pub(super) async fn fall_back(
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
                    .attempt(pool, &ids[..usize::from(len)], out, permit, None)
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
}
