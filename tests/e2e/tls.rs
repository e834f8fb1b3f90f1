//! TLS both ways with certificates made at test time: private CAs, mTLS,
//! HTTP/2 chosen by ALPN, gRPC-style trailers, certificate rotation.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::time::Duration;
use switchyard_tests::pki::{Pki, h2c_request, tls_request};
use switchyard_tests::*;

fn tls_mock(name: &str, pki: &Pki, require_client_cert: bool) -> MockBackend {
    let mut options = MockOptions::new(name);
    options.tls = Some(pki.backend_tls(name, require_client_cert));
    mock_with(options)
}

fn route(name: &str, pool: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\nstrip_prefix = true\npool = \"{pool}\"\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_and_a_wrong_one_refused_with_the_reason() {
    let pki = Pki::new("Switchyard test CA");
    let other = Pki::new("Someone else's CA");
    let b = tls_mock("secure", &pki, false);
    let port = b.addr.port();
    let config = format!(
        "[pools.good]\ntls = {{ ca_file = \"{ca}\" }}\nbackends = [{{ name = \"secure\", address = \"https://localhost:{port}\" }}]\n\n\
         [pools.ip]\nbackends = [{{ name = \"secure\", address = \"127.0.0.1:{port}\", tls = {{ ca_file = \"{ca}\", server_name = \"localhost\", ca_only = true }} }}]\n\n\
         [pools.bad]\ntls = {{ ca_file = \"{other}\", ca_only = true }}\nbackends = [{{ name = \"secure\", address = \"https://localhost:{port}\" }}]\n\n\
         [pools.plain]\nbackends = [{{ name = \"secure\", address = \"127.0.0.1:{port}\" }}]\n\n{}{}{}{}",
        route("good", "good"),
        route("ip", "ip"),
        route("bad", "bad"),
        route("plain", "plain"),
        ca = pki.ca().display(),
        other = other.ca().display(),
    );
    let proxy = TestProxy::start(&config);
    for path in ["/good/echo", "/ip/echo"] {
        let r = get(&proxy.url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = r.json();
        // The mock offers h2 by ALPN, so the proxy speaks it.
        assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
        assert_eq!(seen["path"], "/echo");
    }
    assert_eq!(
        get(&proxy.url("/good/echo"), &[]).await.json()["authority"],
        format!("localhost:{port}")
    );
    let refused = get(&proxy.url("/bad/echo"), &[]).await;
    assert_eq!(refused.status, 502);
    let text = refused.text();
    assert!(
        text.contains("TLS handshake with localhost:") && text.contains("UnknownIssuer"),
        "{text}"
    );
    // Plain HTTP to a TLS port is refused, not hung.
    let plain = get(&proxy.url("/plain/echo"), &[]).await;
    assert_eq!(plain.status, 502, "{}", plain.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_backends_take_the_client_certificate_and_refuse_without() {
    let pki = Pki::new("mTLS CA");
    let b = tls_mock("strict", &pki, true);
    let (cert, key) = pki.issue("proxy-client", &["switchyard"]);
    let port = b.addr.port();
    let config = format!(
        "[pools.with]\ntls = {{ ca_file = \"{ca}\", cert_file = \"{cert}\", key_file = \"{key}\" }}\nbackends = [{{ name = \"strict\", address = \"https://localhost:{port}\" }}]\n\n\
         [pools.without]\ntls = {{ ca_file = \"{ca}\" }}\nbackends = [{{ name = \"strict\", address = \"https://localhost:{port}\" }}]\n\n{}{}",
        route("with", "with"),
        route("without", "without"),
        ca = pki.ca().display(),
        cert = cert.display(),
        key = key.display(),
    );
    let proxy = TestProxy::start(&config);
    let ok = get(&proxy.url("/with/echo"), &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let refused = get(&proxy.url("/without/echo"), &[]).await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(
        b.served(),
        1,
        "only the request with a client certificate got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_multiplexes_on_one_connection_per_worker_and_keeps_trailers() {
    let pki = Pki::new("h2 CA");
    let b = tls_mock("h2", &pki, false);
    let plain = mock("h2c");
    let config = format!(
        "[pools.tls]\ntls = {{ ca_file = \"{ca}\" }}\nbackends = [{{ name = \"h2\", address = \"https://localhost:{port}\" }}]\n\n\
         [pools.h2c]\nprotocol = \"h2c\"\nbackends = [{}]\n\n{}{}",
        backend_entry(&plain, ""),
        route("tls", "tls"),
        route("h2c", "h2c"),
        ca = pki.ca().display(),
        port = b.addr.port(),
    );
    let proxy = TestProxy::start(&config);
    // Sequential requests over fresh client connections reach both
    // workers; each opens one upstream connection.
    for _ in 0..24 {
        assert_eq!(get(&proxy.url("/tls/ok"), &[]).await.status, 200);
    }
    let warm = b.connections();
    assert!(
        (1..=2).contains(&warm),
        "{warm} connections for two workers"
    );
    let requests: Vec<_> = (0..64)
        .map(|i| {
            let url = proxy.url(&format!("/tls/echo?i={i}"));
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["version"], "HTTP/2.0");
    }
    assert_eq!(
        b.connections(),
        warm,
        "64 concurrent requests shared the warm connections"
    );

    let r = get(&proxy.url("/h2c/echo"), &[]).await;
    assert_eq!(r.json()["version"], "HTTP/2.0", "h2c by prior knowledge");

    // gRPC-style: a client speaking HTTP/2 to the proxy reads the backend's
    // trailers, over TLS and over h2c upstream.
    for path in ["/tls/trailers", "/h2c/trailers"] {
        let req = Request::post(format!("http://{}{path}", proxy.addr()))
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let (reply, trailers) = h2c_request(proxy.addr(), req).await.unwrap();
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(&reply.body[..], b"\0\0\0\0\x02hi");
        let trailers = trailers.unwrap_or_else(|| panic!("{path}: no trailers"));
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "served by mock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_style_upgrade_to_an_h2_backend_goes_over_http1() {
    let pki = Pki::new("upgrade CA");
    let b = tls_mock("ws", &pki, false);
    let config = format!(
        "[pools.p]\ntls = {{ ca_file = \"{ca}\" }}\nbackends = [{{ name = \"ws\", address = \"https://localhost:{port}\" }}]\n\n{}",
        route("ws", "p"),
        ca = pki.ca().display(),
        port = b.addr.port(),
    );
    let proxy = TestProxy::start(&config);
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        b"GET /ws/upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 4096];
    let n = s.read(&mut head).await.unwrap();
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    s.write_all(b"ping over tls").await.unwrap();
    let mut echoed = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_tls_by_alpn_and_rotates_its_certificate_under_load() {
    let pki = Pki::new("listener CA");
    let (cert, key) = pki.issue("listener", &["localhost"]);
    let b = mock("behind");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(&b, "")
    );
    let server = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let proxy = TestProxy::start_full(&config, &server, None);
    let addr = proxy.addr();
    for h2 in [false, true] {
        let req = Request::get("https://localhost/echo")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (r, _) = tls_request(&pki, addr, h2, req).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "behind");
    }
    // A plain-HTTP client gets no answer from a TLS listener, and the
    // listener keeps serving.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).to_string()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");

    // Every request on a new connection, so each one handshakes with the
    // certificate of the moment, while the files are replaced twice.
    let pki = std::sync::Arc::new(pki);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (pki, stop) = (pki.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let req = Request::get("https://localhost/ok")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match tls_request(&pki, addr, ok % 2 == 0, req).await {
                        Ok((r, _)) if r.status == 200 => ok += 1,
                        Ok((r, _)) => failed.push(format!("status {}", r.status)),
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let reloads = || async {
        let metrics = get(
            &format!("http://{}/metrics", proxy.proxy().admin_addr.unwrap()),
            &[],
        )
        .await
        .text();
        metrics
            .lines()
            .find(|l| l.starts_with("switchyard_tls_certificate_reloads_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = reloads().await;
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Written beside the live files, then renamed over them, as
        // certificate managers do.
        let (new_cert, new_key) = pki.issue(&format!("rotated-{round}"), &["localhost"]);
        std::fs::rename(&new_key, &key).unwrap();
        std::fs::rename(&new_cert, &cert).unwrap();
        let want = before + round + 1;
        eventually(Duration::from_secs(8), "the new certificate", || async {
            reloads().await >= want
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok > 20, "only {ok} requests");
}
