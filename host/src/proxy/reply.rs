//! The proxy's own answers: short plain-text or JSON replies, the refusal of
//! an unreadable body or a missing key, and the `x-switchyard-debug`
//! headers that describe a decision.

use super::request_body::ClientBodyError;
use super::service::{ResponseBody, full};
use crate::plugin::Choice;
use crate::route::{Route, auth};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The answer to a request whose body could not be read: 408 when the
/// client stalled, 400 when its body was malformed or cut.
pub fn body_failed(e: &ClientBodyError) -> Response<ResponseBody> {
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
pub fn unauthorized(refusal: auth::Refusal) -> Response<ResponseBody> {
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

/// A reply of the proxy's own, in plain text.
pub fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The `x-switchyard-debug` answer: the route, its router plugin and
/// version, and the candidates it chose in order.
pub fn decision_details(route: &Route, choice: &Choice) -> Vec<(http::HeaderName, HeaderValue)> {
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
