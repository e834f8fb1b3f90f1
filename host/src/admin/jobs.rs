//! `POST /jobs/<id>/events`: how a worker without a Redis client (or on
//! the in-process store) reports a job's progress and end.

use super::respond;
use crate::jobs::{JobId, MAX_DATA, kind};
use crate::reload::Reloader;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

/// Appends the event in the body (`{"type": "progress", "data": ...}`; data
/// a string or any JSON value) to the job's log.
pub async fn post_event(reloader: &Reloader, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let bad = |message: String| {
        respond(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({ "error": message }).to_string(),
        )
    };
    let table = reloader.shared.table.load_full();
    let Some(store) = table.jobs.clone() else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no job routes are configured\n".into(),
        );
    };
    let path = req.uri().path().to_string();
    let Some(id) = path
        .strip_prefix("/jobs/")
        .and_then(|p| p.strip_suffix("/events"))
        .and_then(JobId::parse)
    else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "post a job's events to /jobs/<id>/events\n".into(),
        );
    };
    let body = match Limited::new(req.into_body(), MAX_DATA + 1024)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => return bad(format!("cannot read the body: {e}")),
    };
    let event: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let Some(event_type) = event.get("type").and_then(|t| t.as_str()) else {
        return bad("the event needs a \"type\": progress, result, error or heartbeat".into());
    };
    let known = [kind::PROGRESS, kind::RESULT, kind::ERROR, kind::HEARTBEAT];
    if !known.contains(&event_type) {
        return bad(format!(
            "unknown event type {event_type:?}; expected progress, result, error or heartbeat"
        ));
    }
    let data = match event.get("data") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let route = match store.route_of(&id).await {
        Ok(Some(route)) => route,
        Ok(None) => {
            return respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no job {id} (unknown or expired)\n"),
            );
        }
        Err(e) => {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{e}\n"),
            );
        }
    };
    let ttl = table
        .named(&route)
        .and_then(|r| r.jobs.as_ref())
        .map_or(std::time::Duration::from_secs(3600), |j| j.settings.ttl);
    match store.append(&id, event_type, &data, ttl).await {
        Ok(event_id) => respond(
            StatusCode::CREATED,
            "application/json",
            json!({ "id": event_id.to_string() }).to_string(),
        ),
        Err(e) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}
