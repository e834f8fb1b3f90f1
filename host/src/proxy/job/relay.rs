//! A client following a job: its events from a position on, relayed as
//! server-sent events, WebSocket messages or one final answer, with
//! heartbeats, the store's outages reported, and a watchdog of its own.

use super::driver::timeout_data;
use super::edge::{insert, json_reply};
use super::{FIRST_MESSAGE_WAIT, WATCHDOG_GRACE, X_SWITCHYARD_JOB_ID};
use crate::jobs::{Delivery, Event, EventId, JobId, Subscription, kind};
use crate::proxy::body::BodyError;
use crate::proxy::reply::reply;
use crate::proxy::service::ResponseBody;
use crate::proxy::websocket::{Message, WsReader, WsWriter, close};
use crate::route::JobRoute;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use serde_json::json;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

/// What a client relay is told next.
enum Next {
    Event(Event),
    Heartbeat,
    /// The store is unreachable (`Some`) or back (`None`).
    Store(Option<String>),
    /// The relay ends without a terminal event: why.
    Ends(String),
}

/// A client's view of one job: its events from a position on, heartbeats,
/// and the relay's own watchdog (in case the replica that started the job
/// is gone too).
pub(super) struct Follower {
    jobs: Arc<JobRoute>,
    id: JobId,
    sub: Subscription,
    heartbeat: tokio::time::Interval,
    until: TokioInstant,
    last: TokioInstant,
    /// When the store went away, while it is away.
    down_since: Option<TokioInstant>,
    done: bool,
}

impl Follower {
    pub(super) fn new(jobs: Arc<JobRoute>, id: JobId, after: Option<EventId>) -> Follower {
        let sub = jobs.store.subscribe(&id, after);
        let beat = jobs.settings.heartbeat;
        let mut heartbeat = tokio::time::interval_at(on_the_second() + beat, beat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Follower {
            until: TokioInstant::now() + jobs.settings.ttl,
            last: TokioInstant::now(),
            jobs,
            id,
            sub,
            heartbeat,
            down_since: None,
            done: false,
        }
    }

    /// The next thing to tell the client. Cancel-safe.
    async fn next(&mut self) -> Next {
        let settings = &self.jobs.settings;
        loop {
            let silent = self.last + settings.job_timeout + WATCHDOG_GRACE;
            tokio::select! {
                delivery = self.sub.next() => match delivery {
                    Some(Delivery::Event(e)) => {
                        self.last = TokioInstant::now();
                        if e.kind == kind::HEARTBEAT {
                            continue;
                        }
                        self.done = e.is_terminal();
                        self.jobs.counts.note_lag(record_lag(&e));
                        return Next::Event(e);
                    }
                    Some(Delivery::Down(why)) => {
                        self.down_since.get_or_insert_with(TokioInstant::now);
                        return Next::Store(Some(why));
                    }
                    Some(Delivery::Up) => {
                        self.down_since = None;
                        return Next::Store(None);
                    }
                    None => return Next::Ends("the job store has stopped".into()),
                },
                _ = self.heartbeat.tick() => return Next::Heartbeat,
                () = tokio::time::sleep_until(self.until) => {
                    return Next::Ends(format!("the job outlived its time to live ({:?})", settings.ttl));
                }
                () = tokio::time::sleep_until(silent) => {
                    if let Some(since) = self.down_since {
                        return Next::Ends(format!(
                            "the job store has been unreachable for {:?}", since.elapsed()
                        ));
                    }
                    let message = format!("no event for {:?}", settings.job_timeout);
                    match self.jobs.store.append(&self.id, kind::ERROR, &timeout_data(&message), settings.ttl).await {
                        // The error arrives through the subscription.
                        Ok(_) => self.last = TokioInstant::now(),
                        Err(e) => return Next::Ends(format!("{message}, and {e}")),
                    }
                }
            }
        }
    }
}

/// The next whole second of this process's clock. Heartbeats start on it,
/// so the relays of one thread wake together, once a second at most,
/// however many there are.
fn on_the_second() -> TokioInstant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    let now = std::time::Instant::now();
    let into = now.duration_since(epoch).as_nanos() % 1_000_000_000;
    let wait = std::time::Duration::from_nanos((1_000_000_000 - into) as u64);
    TokioInstant::from_std(now + wait)
}

/// Time from the event's append (its id's clock) to its relay.
fn record_lag(e: &Event) -> std::time::Duration {
    let lag = std::time::Duration::from_millis(crate::jobs::unix_ms().saturating_sub(e.id.ms));
    metrics::histogram!("switchyard_job_relay_lag_seconds").record(lag.as_secs_f64());
    lag
}

pub(super) fn event_json(e: &Event) -> serde_json::Value {
    // Data the worker wrote as JSON is passed as JSON, anything else as text.
    let data = serde_json::from_str::<serde_json::Value>(&e.data)
        .unwrap_or_else(|_| serde_json::Value::String(e.data.clone()));
    json!({"id": e.id.to_string(), "type": e.kind, "data": data})
}

/// One server-sent event; every line of the data gets its own `data:`.
/// CR, LF and CRLF all end a line of an event stream, so each of them
/// starts a new `data:` line: a worker's data cannot forge a field or end
/// the event early. The type is one of the store's checked ones.
fn sse_event(id: Option<EventId>, kind: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    let mut lines = data.split('\n').flat_map(|l| {
        let l = l.strip_suffix('\r').unwrap_or(l);
        l.split('\r')
    });
    for line in lines.by_ref() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The body of a server-sent event stream, fed by the relay task.
pub struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A `text/event-stream` response relaying the job's events; the relay
/// ends when the client goes away (the job does not).
pub(super) fn events_response(
    mut follower: Follower,
    relay: crate::jobs::RelayGuard,
    id: &JobId,
) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::task::spawn_local(async move {
        let _relay = relay;
        // Browsers' EventSource reconnects after this many milliseconds.
        if tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let chunk = tokio::select! {
                next = follower.next() => next,
                () = tx.closed() => return,
            };
            let (bytes, last) = match chunk {
                Next::Event(e) => (sse_event(Some(e.id), &e.kind, &e.data), follower.done),
                Next::Heartbeat => (Bytes::from_static(b": keep-alive\n\n"), false),
                Next::Store(down) => (sse_event(None, "status", &store_status(down)), false),
                Next::Ends(why) => (
                    sse_event(None, kind::ERROR, &json!({"message": why}).to_string()),
                    true,
                ),
            };
            if tx.send(bytes).await.is_err() || last {
                return;
            }
        }
    });
    let mut resp = Response::new(Either::Right(Either::Right(EventBody { rx })));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    insert(h, X_SWITCHYARD_JOB_ID.clone(), id.as_str());
    resp
}

fn store_status(down: Option<String>) -> String {
    match down {
        Some(why) => json!({"store": "unavailable", "message": why}).to_string(),
        None => json!({"store": "available"}).to_string(),
    }
}

/// Relays the job's events as WebSocket text messages (JSON: `id`, `type`,
/// `data`), pings as heartbeats, and answers the client's pings and close.
pub(super) async fn relay_websocket<R, W>(
    mut follower: Follower,
    mut reader: WsReader<R>,
    mut writer: WsWriter<W>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            next = follower.next() => {
                let sent = match next {
                    Next::Event(e) => writer.text(&event_json(&e).to_string()).await,
                    Next::Heartbeat => writer.ping().await,
                    Next::Store(down) => {
                        let data: serde_json::Value = serde_json::from_str(&store_status(down)).unwrap_or_default();
                        writer.text(&json!({"type": "status", "data": data}).to_string()).await
                    }
                    Next::Ends(why) => {
                        let _ = writer.text(&json!({"type": kind::ERROR, "data": {"message": why}}).to_string()).await;
                        let _ = writer.close(close::ERROR, "job relay ended").await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
                if follower.done {
                    let _ = writer.close(close::NORMAL, "job ended").await;
                    return;
                }
            }
            message = reader.recv() => match message {
                Ok(Some(Message::Ping(payload))) => {
                    if writer.pong(&payload).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Message::Close(_))) => {
                    let _ = writer.close(close::NORMAL, "").await;
                    return;
                }
                // The job's input was the first message; later ones mean nothing.
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    let _ = writer.close(e.close_code(), "").await;
                    return;
                }
            },
        }
    }
}

/// The WebSocket client's first message: the job's request body. `None`
/// when the client closed or broke the protocol first.
pub(super) async fn first_message<R, W>(
    reader: &mut WsReader<R>,
    writer: &mut WsWriter<W>,
) -> Option<Bytes>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let deadline = TokioInstant::now() + FIRST_MESSAGE_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, reader.recv()).await {
            Ok(Ok(Some(Message::Text(body) | Message::Binary(body)))) => return Some(body),
            Ok(Ok(Some(Message::Ping(payload)))) => {
                writer.pong(&payload).await.ok()?;
            }
            Ok(Ok(Some(Message::Pong))) => {}
            Ok(Ok(Some(Message::Close(_)))) => {
                let _ = writer.close(close::NORMAL, "").await;
                return None;
            }
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                let _ = writer.close(e.close_code(), "").await;
                return None;
            }
            Err(_) => {
                let _ = writer.close(close::PROTOCOL, "no job request").await;
                return None;
            }
        }
    }
}

/// Waits for the job's end and answers with it: the result (200), the
/// error (its status, else 502), or 504 when the relay gives up first.
pub(super) async fn wait_for_end(mut follower: Follower) -> Response<ResponseBody> {
    loop {
        match follower.next().await {
            Next::Event(e) if e.kind == kind::RESULT => {
                let json = serde_json::from_str::<serde::de::IgnoredAny>(&e.data).is_ok();
                let mut resp = reply(StatusCode::OK, e.data);
                if json {
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                return resp;
            }
            Next::Event(e) if e.kind == kind::ERROR => {
                let status = serde_json::from_str::<serde_json::Value>(&e.data)
                    .ok()
                    .and_then(|v| v.get("status")?.as_u64())
                    .and_then(|s| StatusCode::from_u16(s as u16).ok())
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                return json_reply(status, e.data);
            }
            Next::Event(_) | Next::Heartbeat | Next::Store(_) => {}
            Next::Ends(why) => {
                return json_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    json!({"message": why}).to_string(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_cannot_forge_fields_or_end_the_event() {
        let id = EventId { ms: 5, seq: 1 };
        let forged = "one\rid: 99-0\r\nevent: result\n\ndata: x";
        let text = String::from_utf8(sse_event(Some(id), "progress", forged).to_vec()).unwrap();
        assert_eq!(
            text,
            "id: 5-1\nevent: progress\ndata: one\ndata: id: 99-0\ndata: event: result\ndata: \ndata: data: x\n\n"
        );
        // One event: the only blank line is its end.
        assert_eq!(text.matches("\n\n").count(), 1);
        assert!(!text.contains('\r'));
    }
}
