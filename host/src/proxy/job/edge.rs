//! The HTTP side of job routes: reading a job's request, the WebSocket
//! handshake answer, resume positions, and the proxy's small JSON replies.

use crate::jobs::{EventId, StoreError};
use crate::proxy::reply::reply;
use crate::proxy::request_body::ClientBody;
use crate::proxy::service::ResponseBody;
use crate::proxy::websocket;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

/// The request a WebSocket job sends its worker: a `POST` to the same
/// path, the socket's headers gone, the first message as its body.
pub(super) fn job_request(mut parts: http::request::Parts, body: &Bytes) -> http::request::Parts {
    parts.method = http::Method::POST;
    let h = &mut parts.headers;
    for name in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        h.remove(name);
    }
    if !h.contains_key(header::CONTENT_TYPE) {
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
        let ct = if json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    parts.extensions = http::Extensions::new();
    parts
}

/// `101 Switching Protocols` for a WebSocket request with `key`.
pub(super) fn websocket_accepted(key: Option<&HeaderValue>) -> Response<ResponseBody> {
    let Some(key) = key else {
        return reply(StatusCode::BAD_REQUEST, "missing sec-websocket-key\n");
    };
    let mut resp = Response::new(crate::proxy::service::full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        websocket::accept_key(key.as_bytes()),
    );
    resp
}

/// Reads a job's request body whole, refusing one over `max` bytes.
pub(super) async fn read_body(
    body: ClientBody,
    max: usize,
) -> Result<Bytes, Response<ResponseBody>> {
    if body.size_hint().lower() > max as u64 {
        return Err(too_large(max));
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match e.downcast::<crate::proxy::request_body::ClientBodyError>() {
            Ok(e) => Err(crate::proxy::reply::body_failed(&e)),
            Err(_) => Err(too_large(max)),
        },
    }
}

pub(super) fn too_large(max: usize) -> Response<ResponseBody> {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a job request is at most {max} bytes (jobs.max_body)\n"),
    )
}

pub(super) fn store_unavailable(e: &StoreError) -> Response<ResponseBody> {
    let mut resp = reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Where to resume: `last-event-id` (as EventSource sends it), else the
/// `last_event_id` query parameter.
pub(super) fn last_event_id<B>(req: &Request<B>) -> Result<Option<EventId>, BadEventId> {
    let given = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query(req.uri(), "last_event_id"));
    match given.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => EventId::parse(text).map(Some).ok_or(BadEventId),
    }
}

/// A `last-event-id` that is not an event id.
pub(super) struct BadEventId;

impl BadEventId {
    pub(super) fn response(&self) -> Response<ResponseBody> {
        reply(
            StatusCode::BAD_REQUEST,
            "last-event-id is not an event id\n",
        )
    }
}

/// A query parameter's value (no percent-decoding: ids need none).
pub(super) fn query(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(super) fn json_reply(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = reply(status, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn insert(h: &mut http::HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}
