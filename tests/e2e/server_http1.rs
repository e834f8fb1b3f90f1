//! The lean HTTP/1.1 server (the default `server.http1 = "lean"`) against
//! hyper (`"hyper"`): raw clients send the same bytes to both, and the
//! answers must match, response by response: plain keep-alive requests,
//! pipelining, the hand-over to hyper in the middle of a connection,
//! bodiless statuses, streams, closes and half-closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(b: &MockBackend) -> String {
    format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(b, "")
    )
}

/// Sends `parts` on one connection, `gap` apart, half-closing after the
/// last when `half_close`; returns all that came back until the proxy
/// closed or went quiet for a second.
async fn exchange(addr: SocketAddr, parts: &[&[u8]], gap: Duration, half_close: bool) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        s.write_all(part).await.expect("write");
    }
    if half_close {
        s.shutdown().await.expect("shutdown");
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// The responses in `raw`, each as its status line, its header lines
/// sorted (without `date` and the mock's request counters) and its body
/// decoded from its framing.
fn responses(mut raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        raw = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_string();
        let mut headers: Vec<String> = lines
            .map(str::to_ascii_lowercase)
            .filter(|l| !l.starts_with("date:") && !l.starts_with("x-ratelimit-"))
            .collect();
        headers.sort();
        let code = status.split(' ').nth(1).unwrap_or_default();
        let chunked = headers.iter().any(|h| h == "transfer-encoding: chunked");
        let length = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .and_then(|n| n.parse::<usize>().ok());
        let mut body = Vec::new();
        if code.starts_with('1') || code == "204" || code == "304" {
        } else if chunked {
            while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
                let size =
                    usize::from_str_radix(&String::from_utf8_lossy(&raw[..line]), 16).unwrap_or(0);
                raw = &raw[line + 2..];
                if size == 0 {
                    raw = raw.get(2..).unwrap_or_default();
                    break;
                }
                let take = size.min(raw.len());
                body.extend_from_slice(&raw[..take]);
                raw = raw.get(take + 2..).unwrap_or_default();
            }
        } else {
            let take = length.unwrap_or(raw.len()).min(raw.len());
            body.extend_from_slice(&raw[..take]);
            raw = &raw[take..];
        }
        out.push(format!(
            "{status}\n{}\n\n{}",
            headers.join("\n"),
            String::from_utf8_lossy(&body)
        ));
    }
    out
}

/// Request sequences whose answers both servers must agree on; each
/// names how many responses it expects.
fn sequences() -> Vec<(&'static str, Vec<Vec<u8>>, usize)> {
    let big = format!(
        "POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: 70000\r\n\r\n{}",
        "b".repeat(70000)
    );
    vec![
        (
            "pipelined plain requests",
            vec![b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /c?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()],
            3,
        ),
        (
            "a chunked request hands over in the middle",
            vec![b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()],
            3,
        ),
        (
            "close ends the connection, later requests unanswered",
            vec![b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()],
            1,
        ),
        (
            "HTTP/1.0",
            vec![b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n".to_vec()],
            1,
        ),
        (
            "HEAD after GET",
            vec![b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nHEAD /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()],
            2,
        ),
        (
            "a malformed head after a good one",
            vec![b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost : x\r\n\r\n".to_vec()],
            2,
        ),
        (
            "empty lines before a request",
            vec![b"\r\nGET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()],
            1,
        ),
        (
            "an absolute-form target",
            vec![b"GET http://x/a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()],
            1,
        ),
        (
            "a body too large to read whole",
            vec![big.into_bytes(), b"GET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()],
            2,
        ),
        (
            "bodiless statuses",
            vec![b"GET /status/204 HTTP/1.1\r\nhost: x\r\n\r\nGET /status/304 HTTP/1.1\r\nhost: x\r\n\r\nGET /status/503 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()],
            3,
        ),
        (
            "a streamed response, then another request",
            vec![b"GET /sse?n=3 HTTP/1.1\r\nhost: x\r\n\r\nGET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()],
            2,
        ),
        (
            "a head and body in pieces",
            vec![
                b"POST /p HTTP/1.1\r\nho".to_vec(),
                b"st: x\r\ncontent-length: 6\r\n".to_vec(),
                b"\r\nabc".to_vec(),
                b"def".to_vec(),
                b"GET /q HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            ],
            2,
        ),
        (
            "expect: 100-continue hands over",
            vec![b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /e HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc".to_vec()],
            3, // 100 Continue, then the answer
        ),
        (
            "no route",
            vec![b"GET /../../etc HTTP/1.1\r\nhost: x\r\n\r\nDELETE /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()],
            2,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_server_answers_what_hyper_answers() {
    let (bl, bh) = (mock("b"), mock("b"));
    let lean = TestProxy::start(&config(&bl));
    let hyper = TestProxy::start_full(&config(&bh), "http1 = \"hyper\"", None);
    for (name, parts, expected) in sequences() {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let gap = Duration::from_millis(40);
        let from_lean = exchange(lean.addr(), &parts, gap, false).await;
        let from_hyper = exchange(hyper.addr(), &parts, gap, false).await;
        // The backends' own addresses are the one expected difference.
        let same = |raw: &[u8], b: &MockBackend| {
            let text = String::from_utf8_lossy(raw).replace(&b.addr.to_string(), "BACKEND");
            responses(text.as_bytes())
        };
        let (l, h) = (same(&from_lean, &bl), same(&from_hyper, &bh));
        assert_eq!(
            l.len(),
            expected,
            "{name}: lean answered\n{}",
            String::from_utf8_lossy(&from_lean)
        );
        assert_eq!(l, h, "{name}: lean and hyper differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_before_a_half_close_are_all_answered() {
    let b = mock("b");
    let lean = TestProxy::start(&config(&b));
    let two = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n";
    let got = responses(&exchange(lean.addr(), &[two], Duration::ZERO, true).await);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[1].contains("\"path\":\"/b\""), "{}", got[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_while_its_request_is_in_flight_cancels_it() {
    let mut options = MockOptions::new("slow");
    options.latency = Duration::from_secs(3);
    let b = mock_with(options);
    for server in ["", "http1 = \"hyper\""] {
        let proxy = TestProxy::start_full(&config(&b), server, None);
        let started = Instant::now();
        let got = exchange(
            proxy.addr(),
            &[b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"],
            Duration::ZERO,
            true,
        )
        .await;
        // Closed at once, unanswered, not after the backend's latency.
        assert!(
            got.is_empty(),
            "{server}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{server}: {:?}",
            started.elapsed()
        );
    }
}

/// Reads one whole answer off `s`: a mock's JSON echo, or any refusal.
async fn next_answer(s: &mut tokio::net::TcpStream, what: &str) -> String {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "{what}: closed");
        raw.extend_from_slice(&chunk[..n]);
        let got = responses(&raw);
        if got.len() == 1 && (got[0].ends_with("}\n") || !got[0].contains(" 200 ")) {
            return got[0].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keep_alive_requests_on_one_connection_stay_in_step() {
    let b = mock("b");
    let proxy = TestProxy::start(&config(&b));
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    // Bodies of every size up to the lean limit and past it, each answered
    // with its own length before the next is sent.
    for (i, len) in [0usize, 1, 100, 16383, 16384, 65536, 65537, 200_000, 7]
        .into_iter()
        .enumerate()
    {
        let head = format!("POST /n{i} HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&vec![b'z'; len]).await.expect("write");
        let answer = next_answer(&mut s, &format!("#{i}")).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains(&format!("\"path\":\"/n{i}\"")), "{answer}");
        assert!(answer.contains(&format!("\"body_len\":{len}")), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_idle_connections_and_ends_busy_ones_after_their_answer() {
    let mut options = MockOptions::new("slow");
    options.latency = Duration::from_millis(800);
    let b = mock_with(options);
    for server in ["", "http1 = \"hyper\""] {
        let mut proxy = TestProxy::start_full(&config(&b), server, None);
        let before = b.requests();
        // One connection kept alive and idle, one with a request in flight.
        let mut idle = tokio::net::TcpStream::connect(proxy.addr())
            .await
            .expect("connect");
        idle.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut chunk = [0u8; 4096];
        let n = idle.read(&mut chunk).await.expect("answer");
        assert!(chunk[..n].starts_with(b"HTTP/1.1 200"), "{server}");
        let mut busy = tokio::net::TcpStream::connect(proxy.addr())
            .await
            .expect("connect");
        busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        eventually(
            Duration::from_secs(5),
            "the slow request to arrive",
            || async { b.requests() >= before + 2 },
        )
        .await;
        let running = proxy.proxy.take().expect("running");
        let stopping = tokio::task::spawn_blocking(move || running.shutdown());
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "{server}: idle connection: {closed:?}"
        );
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut answer))
            .await
            .expect("the busy connection to close")
            .expect("read");
        let got = responses(&answer);
        assert_eq!(got.len(), 1, "{server}: {got:?}");
        assert!(got[0].starts_with("HTTP/1.1 200"), "{server}: {}", got[0]);
        assert!(got[0].contains("connection: close"), "{server}: {}", got[0]);
        stopping.await.expect("shutdown");
    }
}

/// A request's admission slot is free by the time its client has read the
/// answer: a client that sends its next request at once, on another
/// connection, to a route that serves one at a time and queues none, is
/// never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_request_has_freed_its_slot_before_the_next_arrives() {
    let b = mock("b");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n\
         limits = {{ max_in_flight = 1, queue = 0 }}\n",
        backend_entry(&b, "")
    );
    for server in ["", "http1 = \"hyper\""] {
        let proxy = TestProxy::start_full(&config, server, None);
        let mut conns = Vec::new();
        for _ in 0..2 {
            let s = tokio::net::TcpStream::connect(proxy.addr())
                .await
                .expect("connect");
            s.set_nodelay(true).expect("nodelay");
            conns.push(s);
        }
        for i in 0..400 {
            let s = &mut conns[i % 2];
            let len = [0usize, 10, 3000][i % 3];
            let mut request =
                format!("POST /n{i} HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n")
                    .into_bytes();
            request.resize(request.len() + len, b'z');
            s.write_all(&request).await.expect("write");
            let answer = next_answer(s, &format!("{server} #{i}")).await;
            assert!(
                answer.starts_with("HTTP/1.1 200 OK"),
                "{server}, #{i}: {answer}"
            );
            if i % 40 == 0 {
                let status = proxy.status().await;
                assert_eq!(status["routes"][0]["limits"]["in_flight"], 0, "{server}");
            }
        }
    }
}
