//! The data path of one request: match a route, decide, forward to the first
//! candidate that takes it, stream the response back.

use super::body::{Exchange, ProxiedBody};
use super::headers::{X_SWITCHYARD_BACKEND, add_forwarded_for, is_upgrade, strip_hop_by_hop};
use super::upstream::SendError;
use super::worker::{Choice, Worker};
use crate::balance::{Backend, Outcome, QuotaReport};
use crate::route::Route;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
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
    let Some(route) = table.find(&req) else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "no route matches this request\n",
        ));
    };
    match worker.decide(route, &req, client.peer.ip()) {
        Choice::Reply { status, body } => {
            route.metrics.local_replies.increment(1);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            Ok(reply(status, body))
        }
        Choice::Forward {
            candidates,
            add_headers,
        } => {
            let backend_header = table.backend_header;
            Ok(forward(
                &worker,
                &client,
                route,
                req,
                candidates.as_slice(),
                add_headers,
                backend_header,
            )
            .await)
        }
    }
}

async fn forward(
    worker: &Worker,
    client: &ClientConn,
    route: &Route,
    req: Request<Incoming>,
    candidates: &[u32],
    add_headers: Vec<(http::HeaderName, HeaderValue)>,
    backend_header: bool,
) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    let upgrade = is_upgrade(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
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
    let mut req = Request::from_parts(parts, Either::Left(body));

    let mut attempts = 0;
    let mut last: Option<&Backend> = None;
    for &id in candidates {
        let backend = &route.pool.backends[id as usize];
        if !backend.state.is_usable() {
            continue;
        }
        if attempts == route.max_connect_attempts {
            break;
        }
        attempts += 1;
        last = Some(backend);
        if !route.preserve_host {
            req.headers_mut()
                .insert(header::HOST, backend.host_header.clone());
        }
        let guard = backend.state.start_request();
        let started = Instant::now();
        let t = &route.timeouts;
        // The total timeout bounds the wait for headers too.
        let first_byte = match (t.first_byte.is_zero(), t.total.is_zero()) {
            (_, true) => t.first_byte,
            (true, false) => t.total,
            (false, false) => t.first_byte.min(t.total),
        };
        match worker
            .upstream
            .send(backend, req, t.connect, first_byte)
            .await
        {
            Ok((mut resp, lease)) => {
                let status = resp.status().as_u16();
                backend.state.record_ttfb(micros(started));
                if let Some(quota) = QuotaReport::from_headers(resp.headers()) {
                    backend.state.record_quota(&quota);
                }
                route.metrics.count(backend.id, status);
                strip_hop_by_hop(resp.headers_mut(), status == 101);
                if backend_header {
                    resp.headers_mut()
                        .insert(X_SWITCHYARD_BACKEND.clone(), backend.name_header.clone());
                }
                let exchange = Exchange {
                    state: backend.state.clone(),
                    guard,
                    lease: Some(lease),
                    started,
                    status,
                };
                if status == 101 {
                    let upstream_upgrade = hyper::upgrade::on(&mut resp);
                    if let Some(client_upgrade) = client_upgrade {
                        tokio::task::spawn_local(tunnel(
                            client_upgrade,
                            upstream_upgrade,
                            exchange,
                        ));
                    }
                    return resp.map(|_| Either::Right(Full::new(Bytes::new())));
                }
                return resp
                    .map(|body| Either::Left(ProxiedBody::new(body, exchange, t.idle, t.total)));
            }
            Err(SendError::Connect(back, reason)) => {
                backend
                    .state
                    .record_outcome(Outcome::ConnectError, micros(started));
                tracing::warn!(route = %route.name, backend = %backend.name, "{reason}; trying the next candidate");
                req = *back;
            }
            Err(SendError::Timeout) => {
                backend
                    .state
                    .record_outcome(Outcome::Timeout, micros(started));
                route.metrics.count(backend.id, 504);
                let body = format!(
                    "backend {} sent no response within {first_byte:?}\n",
                    backend.name
                );
                return tagged(
                    reply(StatusCode::GATEWAY_TIMEOUT, body),
                    backend,
                    backend_header,
                );
            }
            Err(SendError::Failed(e)) => {
                backend
                    .state
                    .record_outcome(Outcome::Reset, micros(started));
                route.metrics.count(backend.id, 502);
                tracing::warn!(route = %route.name, backend = %backend.name, "upstream failed: {e}");
                let body = format!("backend {} failed: {e}\n", backend.name);
                return tagged(
                    reply(StatusCode::BAD_GATEWAY, body),
                    backend,
                    backend_header,
                );
            }
        }
    }
    route.metrics.local_replies.increment(1);
    match last {
        Some(backend) => tagged(
            reply(
                StatusCode::BAD_GATEWAY,
                format!("no backend of route {} could be reached\n", route.name),
            ),
            backend,
            backend_header,
        ),
        None => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no usable backend for route {}\n", route.name),
        ),
    }
}

/// Relays bytes both ways after a protocol switch; the exchange (and the
/// backend's in-flight count) lasts as long as the tunnel.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, exchange: Exchange) {
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

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
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

fn tagged(mut resp: Response<ResponseBody>, backend: &Backend, on: bool) -> Response<ResponseBody> {
    if on {
        resp.headers_mut()
            .insert(X_SWITCHYARD_BACKEND.clone(), backend.name_header.clone());
    }
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
