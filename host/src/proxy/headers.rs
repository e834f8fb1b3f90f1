//! Header rewriting between client and upstream: hop-by-hop headers stay on
//! their hop, and the upstream learns who the client is.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Response header naming the backend that served the request.
pub static X_SWITCHYARD_BACKEND: HeaderName = HeaderName::from_static("x-switchyard-backend");
/// Request header asking for the routing decision's details in the answer.
pub static X_SWITCHYARD_DEBUG: HeaderName = HeaderName::from_static("x-switchyard-debug");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Whether the request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those `connection` lists. With
/// `upgrade`, keeps `upgrade` and sends `connection: upgrade` on. The common
/// case, no such header, costs one scan and no allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    // `te: trailers` is what gRPC clients send to say they read trailers;
    // HTTP/2 allows exactly that value end to end.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in listed {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if !te_trailers {
        headers.remove(header::TE);
    }
    for name in [
        &header::CONNECTION,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Appends the client address to `x-forwarded-for`. `client` is the
/// connection's address, formatted once per connection.
pub fn add_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    match headers.get(&X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), client.clone());
        }
        Some(existing) => {
            let mut joined = existing.as_bytes().to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_listed_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let client = HeaderValue::from_static("10.0.0.2");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        add_forwarded_for(&mut h, &client);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        let mut h = HeaderMap::new();
        add_forwarded_for(&mut h, &client);
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
    }
}
