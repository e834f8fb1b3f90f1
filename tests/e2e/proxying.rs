//! The data path itself: headers, bodies, upgrades, HTTP/2, timeouts, live state.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::time::Duration;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn single_route(backend: &MockBackend, extra: &str) -> String {
    format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n{extra}\n",
        backend_entry(backend, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_and_the_client_is_named() {
    let b = mock("echo");
    let proxy = TestProxy::start(&single_route(&b, ""));
    let r = get(
        &proxy.url("/path?q=1"),
        &[
            ("connection", "x-secret"),
            ("x-secret", "hidden"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    let headers = &seen["headers"];
    assert_eq!(headers["x-custom"], "kept");
    assert!(headers.get("x-secret").is_none(), "{seen}");
    assert!(headers.get("keep-alive").is_none(), "{seen}");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["host"], b.addr.to_string());
    assert_eq!(seen["path"], "/path");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(r.backend(), "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_pass_through() {
    let b = mock("model");
    let proxy = TestProxy::start(&single_route(&b, ""));
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &[("content-type", "application/json"), ("x-priority", "high")],
        Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let json = r.json();
    assert_eq!(json["object"], "chat.completion");
    assert!(
        json["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("priority high"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_upgrades_are_tunnelled() {
    let b = mock("ws");
    let proxy = TestProxy::start(&single_route(&b, ""));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream
        .write_all(b"ping through the tunnel")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap_or_else(|_| panic!("no echo"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&echoed, b"ping through the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let b = mock("h2");
    let proxy = TestProxy::start(&single_route(
        &b,
        "router = { plugin = \"round-robin.wasm\" }",
    ));
    let stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::get(format!("http://{}/over-h2", proxy.addr()))
            .body(Empty::<Bytes>::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-switchyard-backend"], "h2");
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["path"], "/over-h2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_answers_504_naming_the_backend() {
    let mut slow = MockOptions::new("slow");
    slow.latency = Duration::from_secs(3);
    let b = mock_with(slow);
    let proxy = TestProxy::start(&single_route(&b, "timeouts = { first_byte = \"200ms\" }"));
    let r = get(&proxy.url("/x"), &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.backend(), "slow");
    let status = proxy.status().await;
    assert_eq!(
        status["pools"][0]["backends"][0]["state"]["error_rate"], 1000,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_state_tracks_quota_and_in_flight() {
    let b = mock("model");
    let proxy = TestProxy::start(&single_route(&b, ""));
    for _ in 0..5 {
        assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
    }
    let status = proxy.status().await;
    let state = &status["pools"][0]["backends"][0]["state"];
    assert_eq!(state["in_flight"], 0, "{state}");
    assert_eq!(state["remaining_requests"], 9995, "{state}");
    assert!(
        state["remaining_tokens"]
            .as_u64()
            .is_some_and(|t| t < 1_000_000),
        "{state}"
    );
    assert!(
        state["ewma_latency_us"].as_u64().is_some_and(|l| l > 0),
        "{state}"
    );
    assert!(
        state["quota_reset_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 1000),
        "{state}"
    );
    assert_eq!(state["error_rate"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_header_can_be_turned_off() {
    let b = mock("quiet");
    let proxy = TestProxy::start(&single_route(&b, ""));
    assert_eq!(get(&proxy.url("/x"), &[]).await.backend(), "quiet");
    drop(proxy);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nbackend_header = false\n\n{}",
            single_route(&b, "")
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = switchyard::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let proxy = switchyard::Switchyard::start(&config).unwrap_or_else(|e| panic!("{e}"));
    let r = get(&format!("http://{}/x", proxy.addr()), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-switchyard-backend").is_none());
    proxy.shutdown();
}

/// Shutdown stops accepting and lets the request in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let mut slow = MockOptions::new("slow");
    slow.latency = Duration::from_millis(800);
    let b = mock_with(slow);
    let mut proxy = TestProxy::start(&single_route(&b, ""));
    let addr = proxy.addr();
    let url = proxy.url("/x");
    let pending = tokio::spawn(async move { get(&url, &[]).await });
    eventually(
        Duration::from_secs(5),
        "the request to reach the backend",
        || async { b.requests() == 1 },
    )
    .await;
    let running = proxy
        .proxy
        .take()
        .unwrap_or_else(|| panic!("proxy running"));
    let stopping = tokio::task::spawn_blocking(move || running.shutdown());
    let reply = pending.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    stopping.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

/// Passive health: connect failures in a row take a backend out for
/// `fail_timeout`, and then traffic tries it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_ejected_then_retried() {
    let live = mock("live");
    let proxy = TestProxy::start(&format!(
        "[pools.p]\nmax_fails = 2\nfail_timeout = \"400ms\"\n\
         backends = [{{ name = \"dead\", address = \"{}\" }}, {}]\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n",
        dead_address(),
        backend_entry(&live, "")
    ));
    for _ in 0..8 {
        let r = get(&proxy.url("/x"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), "live");
    }
    let health = |s: &serde_json::Value| s["pools"][0]["backends"][0]["state"]["health"].clone();
    assert_eq!(health(&proxy.status().await), "unhealthy");
    eventually(Duration::from_secs(3), "the ejection to end", || async {
        health(&proxy.status().await) == "healthy"
    })
    .await;
}

/// One upstream connection carries requests of routes with different
/// first-byte limits: each request times out at its own limit, counted
/// from its own start, whatever an earlier request on the connection set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_reused_connection_keeps_its_own_first_byte_limit() {
    let b = mock("b");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n\
         [[routes]]\nname = \"short\"\npool = \"p\"\nmatch = {{ path_prefix = \"/short\" }}\n\
         timeouts = {{ first_byte = \"300ms\" }}\n\
         [[routes]]\nname = \"long\"\npool = \"p\"\nmatch = {{ path_prefix = \"/long\" }}\n\
         timeouts = {{ first_byte = \"5s\" }}\n",
        backend_entry(&b, "")
    );
    // One worker: every request shares its upstream connections.
    let proxy = TestProxy::start_full(&config, "workers = 1", None);
    let timed = |path: &'static str, delay: u64| {
        let url = proxy.url(path);
        async move {
            let started = std::time::Instant::now();
            let delay = delay.to_string();
            let r = get(&url, &[("x-mock-delay-ms", &delay)]).await;
            (r.status.as_u16(), started.elapsed())
        }
    };
    // (path, backend delay, expected status); a 504 must come at ~300 ms.
    let steps: [(&str, u64, u16); 7] = [
        ("/long", 0, 200),
        ("/short", 2000, 504),
        ("/long", 0, 200),
        ("/short", 100, 200),
        // Longer than the short limit an earlier request set.
        ("/long", 700, 200),
        ("/short", 0, 200),
        ("/short", 2000, 504),
    ];
    for (i, (path, delay, expected)) in steps.into_iter().enumerate() {
        if i == 5 {
            // Past the last short deadline while the connection is idle.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let (status, took) = timed(path, delay).await;
        assert_eq!(status, expected, "step {i}: {path} after {took:?}");
        if expected == 504 {
            assert!(
                took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
                "step {i}: timed out after {took:?}"
            );
        }
    }
    // The answered requests shared connections (a timed-out one closes its own).
    assert!(b.connections() <= 3, "{} connections", b.connections());
}
