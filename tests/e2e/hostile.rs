//! What a hostile or broken peer does to the proxy: each case a hole found
//! by probing, closed, and kept closed here.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard_tests::*;

/// A config of one pool holding `b` and one route `r` to it.
fn one_route(b: &MockBackend) -> String {
    format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(b, "")
    )
}

/// A backend that accepts connections and never answers.
struct Silent {
    addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

fn silent() -> Silent {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(64) {
            match stream {
                Ok(s) => held.push(s),
                Err(_) => return,
            }
        }
    });
    Silent {
        addr,
        _thread: thread,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_byte_timeout_is_retried_on_the_next_candidate_when_the_request_may_repeat() {
    let stuck = silent();
    let good = mock("good");
    let config = format!(
        "[pools.p]\nbackends = [{{ name = \"stuck\", address = \"{}\" }}, {}]\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\ntimeouts = {{ first_byte = \"300ms\" }}\n\
         router = {{ plugin = \"fallback-chain.wasm\", config = {{ order = [\"stuck\", \"good\"] }} }}\n",
        stuck.addr,
        backend_entry(&good, "")
    );
    let proxy = TestProxy::start(&config);
    let started = Instant::now();
    let r = get(&proxy.url("/ok"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "good");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A POST is not repeated after it may have reached a backend.
    let post = send("POST", &proxy.url("/ok"), &[], Bytes::from_static(b"{}")).await;
    assert_eq!(post.status, 504, "{}", post.text());
    assert_eq!(post.backend(), "stuck");
    let admin = proxy.proxy().admin_addr.expect("admin");
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await.text();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_retries_total{") && l.contains("reason=\"timeout\"")),
        "{metrics}"
    );
}

/// Reload events the admin `/status` lists, as text.
async fn reload_events(proxy: &TestProxy) -> String {
    proxy.status().await["reloads"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_devices_and_link_loops_in_the_plugin_directory_are_refused_by_name() {
    let b = mock("b");
    let config = one_route(&b);
    let proxy = TestProxy::start(&config);
    let dir = proxy.plugin_path("");
    let fifo = dir.join("pipe.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.wasm")).expect("symlink");
    std::os::unix::fs::symlink(dir.join("loop-b.wasm"), dir.join("loop-a.wasm")).expect("symlink");
    std::os::unix::fs::symlink(dir.join("loop-a.wasm"), dir.join("loop-b.wasm")).expect("symlink");
    eventually(
        Duration::from_secs(10),
        "every bad file reported",
        || async {
            let events = reload_events(&proxy).await;
            ["pipe.wasm", "zero.wasm", "loop-a.wasm"]
                .iter()
                .all(|f| events.contains(f))
        },
    )
    .await;
    let events = reload_events(&proxy).await;
    assert!(events.contains("not a regular file"), "{events}");
    // The watcher is not stuck on the pipe: a good file dropped after it
    // is compiled, and the proxy serves throughout.
    std::fs::write(dir.join("late.wasm"), plugin_bytes("round-robin.wasm")).expect("copy");
    eventually(
        Duration::from_secs(10),
        "the late plugin compiled",
        || async { reload_events(&proxy).await.contains("late.wasm compiled") },
    )
    .await;
    assert_eq!(get(&proxy.url("/ok"), &[]).await.status, 200);

    // A route naming such a file is refused with its name.
    let bad = format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {{ plugin = \"zero.wasm\" }}\n",
        backend_entry(&b, "")
    );
    proxy.write_config(&bad);
    eventually(Duration::from_secs(10), "the refusal", || async {
        let events = reload_events(&proxy).await;
        events.contains("zero.wasm: cannot read: not a regular file")
    })
    .await;
    assert_eq!(
        get(&proxy.url("/ok"), &[]).await.status,
        200,
        "the last good config serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_or_half_a_preface_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = mock("b");
    let config = one_route(&b);
    let proxy = TestProxy::start_full(&config, "header_read_timeout = \"1s\"", None);
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr())
            .await
            .expect("connect");
        if i % 2 == 1 {
            s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        }
        idle.push(s);
    }
    // New requests are served meanwhile.
    assert_eq!(get(&proxy.url("/ok"), &[]).await.status, 200);
    let started = Instant::now();
    for mut s in idle {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was still open after {:?}",
            started.elapsed()
        );
    }
    // A full h2c preface is served, and plain HTTP/1.1 still is.
    let req = http::Request::get(format!("http://{}/ok", proxy.addr()))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let (reply, _) = switchyard_tests::pki::h2c_request(proxy.addr(), req)
        .await
        .expect("h2c");
    assert_eq!(reply.status, 200);
    assert_eq!(get(&proxy.url("/ok"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_prefix_is_a_boundary_whatever_the_path_spelling() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (public, admin) = (mock("public"), mock("admin"));
    let config = format!(
        "[pools.public]\nbackends = [{}]\n[pools.admin]\nbackends = [{}]\n\n\
         [[routes]]\nname = \"public\"\nmatch = {{ path_prefix = \"/public\" }}\nstrip_prefix = true\npool = \"public\"\n\n\
         [[routes]]\nname = \"admin\"\nmatch = {{ path_prefix = \"/admin\" }}\npool = \"admin\"\n",
        backend_entry(&public, ""),
        backend_entry(&admin, "")
    );
    let proxy = TestProxy::start(&config);
    // Raw bytes: HTTP clients would clean these paths before sending.
    let raw = |path: &'static str| {
        let addr = proxy.addr();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    for path in [
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/./../admin/secret",
        "/public//../admin/secret",
    ] {
        let answer = raw(path).await;
        // Resolved before matching: it is the admin route's request now,
        // and the admin backend sees the clean path.
        assert!(
            answer.contains("x-switchyard-backend: admin"),
            "{path}: {answer}"
        );
        assert!(
            answer.contains("\"path\":\"/admin/secret\""),
            "{path}: {answer}"
        );
    }
    for path in [
        "/public/..%2fadmin/secret",
        "/public/..%5Cadmin",
        "/public/../../etc/passwd",
    ] {
        let answer = raw(path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    let answer = raw("/public/docs/./a//b").await;
    assert!(answer.contains("\"path\":\"/docs/a/b\""), "{answer}");
    assert_eq!(
        public.served() + admin.served(),
        5,
        "refused paths reached no backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_times_out_and_frees_its_admission_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = mock("b");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nlimits = {{ max_in_flight = 2 }}\n",
        backend_entry(&b, "")
    );
    let proxy = TestProxy::start_full(&config, "body_read_timeout = \"1s\"", None);
    // One upload small enough for the lean server to read whole before it
    // is admitted (it holds no slot meanwhile), two large enough to stream.
    let mut slow = Vec::new();
    for length in [65_536, 4 << 20, 4 << 20] {
        let mut s = tokio::net::TcpStream::connect(proxy.addr())
            .await
            .expect("connect");
        s.write_all(
            format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\nab")
                .as_bytes(),
        )
        .await
        .expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both slots are taken by the streaming uploads now.
    assert_eq!(get(&proxy.url("/ok"), &[]).await.status, 503);
    let started = Instant::now();
    for mut s in slow {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 502"),
            "{text}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(3), "the slots to be free", || async {
        get(&proxy.url("/ok"), &[]).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused_with_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = mock("b");
    let config = one_route(&b);
    let proxy = TestProxy::start_full(
        &config,
        "max_connections = 4\nheader_read_timeout = \"30s\"",
        None,
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(proxy.addr())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let _ = extra
        .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    // The fifth is told why, and closed: never served.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), extra.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the refused connection was closed in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 503")
            && text.contains("max_connections")
            && !text.contains("200 OK"),
        "a fifth connection: {text:?}"
    );
    assert_eq!(b.requests(), 0, "nothing reached the backend");
    // A flood of them is refused the same way and frees its descriptors.
    for _ in 0..100 {
        let s = tokio::net::TcpStream::connect(proxy.addr()).await;
        drop(s);
    }
    drop(held);
    // Until the proxy has seen the held connections close, a new one may
    // still be refused: try on fresh sockets until one is served.
    let addr = proxy.addr();
    eventually(Duration::from_secs(3), "slots to free", || {
        served_on_a_fresh_connection(addr)
    })
    .await;
}

/// Opens an `upgrade: echo` tunnel through the proxy and checks it echoes.
async fn open_tunnel(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.expect("head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");
    s
}

/// An upgraded connection (a WebSocket) keeps its place under
/// `max_connections` for as long as its tunnel lives, though hyper is done
/// with it after the `101`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_count_under_max_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = mock("ws");
    let config = one_route(&b);
    let proxy = TestProxy::start_full(&config, "max_connections = 3", None);
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(open_tunnel(proxy.addr()).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let _ = extra
        .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), extra.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "three tunnels fill three places: {}",
        String::from_utf8_lossy(&answer)
    );
    // Closing a tunnel frees its place.
    drop(tunnels.pop());
    let addr = proxy.addr();
    eventually(Duration::from_secs(3), "a tunnel's place to free", || {
        served_on_a_fresh_connection(addr)
    })
    .await;
}

/// Whether a new connection gets a `200` for `GET /ok`.
async fn served_on_a_fresh_connection(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let _ = s
        .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/1.1 200")
}

/// A plugin whose `init` hangs after its first instances were made (at
/// load) never stalls a worker: instances are made off the request path,
/// and until one is ready the failure policy decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_init_that_hangs_later_never_stalls_a_worker() {
    let b = mock("b0");
    // The instances made at load: one per core and one spare.
    let at_load = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n\
         [[routes]]\nname = \"trapping\"\nmatch = {{ path_prefix = \"/trap\" }}\npool = \"p\"\n\
         router = {{ plugin = \"fixture-trap.wasm\", config = {{ init_spin_after = {at_load} }} }}\n\n\
         [[routes]]\nname = \"plain\"\npool = \"p\"\n",
        backend_entry(&b, "")
    );
    let proxy = TestProxy::start(&config);
    assert_eq!(
        get(&proxy.url("/trap/x"), &[]).await.json()["headers"]["x-decided-by"],
        "fixture-trap"
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        // A trap costs a worker its instance; the next request on the
        // route needs a new one, whose making hangs. Plain requests run
        // meanwhile, on both workers.
        let trap = proxy.url("/trap/x");
        let routed = tokio::spawn(async move {
            let r = get(&trap, &[("x-trap", "1")]).await;
            assert_eq!(r.status, 200, "fail-open serves: {}", r.text());
            for _ in 0..4 {
                assert_eq!(get(&trap, &[]).await.status, 200);
            }
        });
        for _ in 0..8 {
            let started = Instant::now();
            assert_eq!(get(&proxy.url("/ok"), &[]).await.status, 200);
            slowest = slowest.max(started.elapsed());
        }
        routed.await.expect("trap requests");
    }
    // A hanging init runs for its start-up deadline (1 s); a worker that
    // ran it would have stalled that long.
    assert!(
        slowest < Duration::from_millis(500),
        "a plain request took {slowest:?}"
    );
}

/// Reads until the peer closes, up to `limit`; `None` if it stayed open.
async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    limit: Duration,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The frame types of an HTTP/2 byte stream, in order.
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    use tokio::io::AsyncWriteExt;
    let b = mock_with(MockOptions {
        chunk_interval: Duration::from_millis(100),
        ..MockOptions::new("b")
    });
    let config = one_route(&b);
    let proxy = TestProxy::start_full(&config, "idle_timeout = \"1s\"", None);
    // HTTP/2 after its preface and settings, then nothing: a GOAWAY, then closed.
    let mut h2 = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    // HTTP/1.1 keep-alive after one answered request.
    let mut h1 = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    h1.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    // The client answers no ping, so closing takes the proxy's grace too.
    let h2_bytes = read_to_close(&mut h2, Duration::from_secs(8))
        .await
        .expect("an idle HTTP/2 connection stayed open");
    assert!(
        h2_frame_types(&h2_bytes).contains(&7),
        "no GOAWAY among {:?}",
        h2_frame_types(&h2_bytes)
    );
    let h1_bytes = read_to_close(&mut h1, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection stayed open");
    assert!(String::from_utf8_lossy(&h1_bytes).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // An upgraded connection is a tunnel, not an idle HTTP connection: it
    // outlives the idle timeout.
    let mut tunnel = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    tunnel
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut tunnel, &mut byte)
            .await
            .expect("101");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tunnel
        .write_all(b"still here")
        .await
        .expect("write after idle");
    let mut echoed = [0u8; 10];
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut tunnel, &mut echoed),
    )
    .await
    .expect("the tunnel answers")
    .expect("echo");
    assert_eq!(&echoed, b"still here");
    // A stream longer than the idle timeout is busy, not idle: all of it arrives.
    let stream = get(&proxy.url("/sse?n=20"), &[]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.text().matches("data: ").count(),
        20,
        "{}",
        stream.text()
    );
    let admin = proxy.proxy().admin_addr.expect("admin");
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_timeouts_total")
                && l.contains("kind=\"client_idle\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// Writes `bytes` one at a time, `gap` apart, until they are all out or
/// the proxy closes; returns when it stopped.
/// The first bytes of an answer, read within 5 s.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn trickle<W: tokio::io::AsyncWrite + Unpin>(
    s: &mut W,
    bytes: &[u8],
    gap: Duration,
) -> Instant {
    use tokio::io::AsyncWriteExt;
    for b in bytes {
        if s.write_all(std::slice::from_ref(b)).await.is_err() {
            break;
        }
        tokio::time::sleep(gap).await;
    }
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_must_arrive_within_header_read_timeout_on_any_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = mock("b");
    let config = one_route(&b);
    let proxy = TestProxy::start_full(
        &config,
        "header_read_timeout = \"1s\"\nidle_timeout = \"20s\"",
        None,
    );
    let head = b"GET /ok HTTP/1.1\r\nhost: x\r\nx-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

    // The first head, a byte every 100 ms: cut off about a second after
    // its first byte, long before the whole head (about 8 s) is out.
    let mut first = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let started = Instant::now();
    let (mut r, mut w) = first.split();
    let (_, read) = tokio::join!(
        trickle(&mut w, head, Duration::from_millis(100)),
        read_to_close(&mut r, Duration::from_secs(6))
    );
    let out = read.expect("a trickled head was still open after 6 s");
    let took = started.elapsed();
    assert!(out.is_empty() || String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    // A kept-alive connection idle for longer than the header timeout is
    // not late: its next head, sent whole, is served.
    let mut kept = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    kept.write_all(head).await.expect("write");
    assert!(read_answer(&mut kept).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    kept.write_all(head).await.expect("write");
    assert!(read_answer(&mut kept).await.starts_with("HTTP/1.1 200"));

    // Its third head trickled: timed from that head's first byte.
    let started = Instant::now();
    let (mut r, mut w) = kept.split();
    let (_, read) = tokio::join!(
        trickle(&mut w, head, Duration::from_millis(100)),
        read_to_close(&mut r, Duration::from_secs(6))
    );
    read.expect("a trickled second head was still open after 6 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    // HTTP/2 has no heads to time: pings for longer than the header
    // timeout keep the connection open.
    let mut h2 = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        h2.write_all(b"\0\0\x08\x06\0\0\0\0\0pingpong")
            .await
            .expect("an HTTP/2 connection closed while pinging");
    }
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while h2_frame_types(&seen).iter().filter(|&&t| t == 6).count() < 8 {
        match tokio::time::timeout(Duration::from_secs(2), h2.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            other => panic!(
                "HTTP/2 connection ended: {other:?}, frames {:?}",
                h2_frame_types(&seen)
            ),
        }
    }

    let metrics = scrape(&proxy).await;
    assert!(
        metric(
            &metrics,
            "switchyard_timeouts_total",
            &[("kind", "client_header")]
        ) >= 2.0,
        "{metrics}"
    );
}
