//! The request as backends get it: rewritten once from the client's, then
//! held whole (so a retry can send it again) or streamed to one backend.

use super::headers::{add_forwarded_for, is_upgrade, strip_hop_by_hop};
use super::request_body::{ClientBody, ClientBodyError, Held, Peeked, hold};
use super::service::ClientConn;
use super::upstream::{Replay, UpstreamBody, WantsUpgrade};
use crate::endpoint::strip_client_auth;
use crate::pool::Backend;
use crate::route::Route;
use http::{HeaderValue, Request, Uri, header};
use hyper::upgrade::OnUpgrade;

/// The request to send: held whole so it can be sent again, or streamed
/// once.
pub struct Outgoing {
    pub replay: Option<Replay>,
    /// The streamed request, until it is sent (a connect error hands it
    /// back); boxed, as most requests are held.
    pub streamed: Option<Box<Request<UpstreamBody>>>,
    /// Whether an answer (not only a connect error) may be retried.
    pub retry_answers: bool,
    /// Send the client's `host` rather than the backend's.
    preserve_host: bool,
    pub upgrade: Option<OnUpgrade>,
    /// The client connection's slot, kept by a tunnel.
    pub slot: Option<super::HeldSlot>,
}

// === impl Outgoing ===

impl Outgoing {
    /// Turns the client's request into the one backends get: hop-by-hop
    /// headers and (where the pool injects its own) client credentials
    /// removed, `x-forwarded-for` and the router's headers added, the path
    /// rewritten for the route; then held whole when it may be replayed.
    pub async fn prepare(
        route: &Route,
        client: &ClientConn,
        req: Request<ClientBody>,
        peeked: Option<Peeked>,
        add_headers: Vec<(http::HeaderName, HeaderValue)>,
    ) -> Result<Outgoing, ClientBodyError> {
        let (mut parts, body) = req.into_parts();
        let upgrade = is_upgrade(&parts.headers);
        let (client_upgrade, slot) = if upgrade {
            (
                parts.extensions.remove::<OnUpgrade>(),
                parts.extensions.remove::<super::HeldSlot>(),
            )
        } else {
            (None, None)
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
        match hold(parts, body, peeked, limit, route.preserve_host).await {
            Ok(held) => Ok(Outgoing {
                replay: Some(held),
                streamed: None,
                retry_answers,
                preserve_host: route.preserve_host,
                upgrade: client_upgrade,
                slot,
            }),
            Err(Held::Streamed(req)) => Ok(Outgoing {
                replay: None,
                streamed: Some(req),
                retry_answers: false,
                preserve_host: route.preserve_host,
                upgrade: client_upgrade,
                slot,
            }),
            Err(Held::Failed(e)) => Err(e),
        }
    }

    /// The request for `backend`, if one can still be sent.
    pub fn take(&mut self, backend: &Backend) -> Option<Request<UpstreamBody>> {
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

    /// Whether a request is left to send.
    pub fn can_send(&self) -> bool {
        self.replay.is_some() || self.streamed.is_some()
    }
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
pub fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
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
