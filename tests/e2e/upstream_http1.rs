//! The HTTP/1.1 client side: a scripted raw backend answers each path with
//! exact bytes (every framing RFC 9112 allows, and broken ones), and notes
//! which connection every request arrived on, so each test can tell what
//! the client got and whether the proxy reused a connection it should (or
//! must not) have.

use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_tests::*;

/// What the backend does after writing an answer.
#[derive(Clone)]
enum After {
    Keep,
    Close,
    /// Closes the connection once it has been idle this long.
    CloseWhenIdle(Duration),
    /// Sends these bytes, unasked, on the idle connection.
    Junk(&'static [u8]),
}

/// One request as the backend read it.
#[derive(Debug, Clone)]
struct Seen {
    conn: usize,
    head: String,
    body: Vec<u8>,
}

type Script = fn(&str) -> (Vec<u8>, After);

struct ScriptedBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl ScriptedBackend {
    fn start(script: Script) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().take(256).enumerate() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || serve(conn, stream, script, &log));
            }
        });
        ScriptedBackend { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The connection the last request arrived on.
    fn last_conn(&self) -> usize {
        self.seen()
            .last()
            .expect("a request reached the backend")
            .conn
    }
}

fn serve(conn: usize, mut stream: TcpStream, script: Script, log: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end + 4..end + 4 + length].to_vec();
        buf.drain(..end + 4 + length);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        log.lock().expect("lock").push(Seen { conn, head, body });
        let (answer, after) = script(&path);
        if stream.write_all(&answer).is_err() {
            return;
        }
        match after {
            After::Keep => {}
            After::Close => return,
            After::CloseWhenIdle(idle) => {
                std::thread::sleep(idle);
                return;
            }
            After::Junk(bytes) => {
                let _ = stream.write_all(bytes);
            }
        }
    }
}

fn script(path: &str) -> (Vec<u8>, After) {
    let (text, after): (String, After) = match path {
        "/length" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".into(),
            After::Keep,
        ),
        "/head" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".into(),
            After::Keep,
        ),
        "/chunked" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 9\r\n\r\n"
                .into(),
            After::Keep,
        ),
        "/interim" => (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .into(),
            After::Keep,
        ),
        "/no-content" => ("HTTP/1.1 204 No Content\r\n\r\n".into(), After::Keep),
        "/until-close" => ("HTTP/1.1 200 OK\r\n\r\nuntil the end".into(), After::Close),
        "/asks-close" => (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye".into(),
            After::Keep,
        ),
        "/both-framings" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
                .into(),
            After::Keep,
        ),
        "/http10" => (
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok".into(),
            After::Keep,
        ),
        "/conflicting-length" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".into(),
            After::Keep,
        ),
        "/bad-chunk" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".into(),
            After::Keep,
        ),
        "/many-headers" => (
            format!(
                "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
                "x-a: b\r\n".repeat(101)
            ),
            After::Keep,
        ),
        "/huge-head" => (
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            ),
            After::Keep,
        ),
        "/switch" => (
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n".into(),
            After::Keep,
        ),
        "/cut-length" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".into(),
            After::Close,
        ),
        "/cut-chunks" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".into(),
            After::Close,
        ),
        "/then-close" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into(),
            After::Close,
        ),
        "/close-when-idle" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into(),
            After::CloseWhenIdle(Duration::from_millis(100)),
        ),
        "/then-junk" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into(),
            After::Junk(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale"),
        ),
        _ => (
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
            After::Keep,
        ),
    };
    (text.into_bytes(), after)
}

/// One worker, so every request of a test shares one connection pool.
fn proxy_for(backend: &ScriptedBackend) -> TestProxy {
    let config = format!(
        "[pools.p]\nbackends = [{{ name = \"raw\", address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\nretries = {{ attempts = 1 }}\n",
        backend.addr
    );
    TestProxy::start_full(&config, "workers = 1", None)
}

/// `answer` is no complete response: nothing at all (the proxy closed
/// before its buffered head went out), or a `200` whose body is cut off.
fn assert_broken(answer: &str, path: &str) {
    if answer.is_empty() {
        return;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    if head.contains("content-length: 10") {
        assert!(body.len() < 10, "{path}: a whole body: {answer:?}");
    } else {
        assert!(
            !body.ends_with("0\r\n\r\n"),
            "{path} ended cleanly: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_reaches_the_client_whole_and_reuse_is_only_where_safe() {
    let backend = ScriptedBackend::start(script);
    let proxy = proxy_for(&backend);
    // (method, path, body the client must get, whether the connection may
    // carry the next request)
    let cases: [(&str, &str, &str, bool); 9] = [
        ("GET", "/length", "hello", true),
        ("HEAD", "/head", "", true),
        ("GET", "/chunked", "hello world", true),
        ("GET", "/interim", "ok", true),
        ("GET", "/no-content", "", true),
        ("GET", "/until-close", "until the end", false),
        ("GET", "/asks-close", "bye", false),
        ("GET", "/both-framings", "hello", false),
        ("GET", "/http10", "ok", false),
    ];
    for (method, path, body, reusable) in cases {
        let reply = send(method, &proxy.url(path), &[], Bytes::new()).await;
        assert_eq!(
            reply.status,
            200 + 4 * u16::from(path == "/no-content"),
            "{method} {path}"
        );
        assert_eq!(reply.text(), body, "{method} {path}");
        let conn = backend.last_conn();
        let next = get(&proxy.url("/length"), &[]).await;
        assert_eq!(next.text(), "hello", "after {method} {path}");
        assert_eq!(
            backend.last_conn() == conn,
            reusable,
            "{method} {path}: the next request {} its connection",
            if reusable {
                "must reuse"
            } else {
                "must not reuse"
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_response_is_a_502_and_its_connection_is_dropped() {
    let backend = ScriptedBackend::start(script);
    let proxy = proxy_for(&backend);
    for path in [
        "/conflicting-length",
        "/bad-chunk",
        "/many-headers",
        "/huge-head",
        "/switch",
    ] {
        let before = backend.seen().len();
        let answer = raw_exchange(
            proxy.addr(),
            format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
        )
        .await;
        let conn = backend.last_conn();
        // A broken head is refused with a 502; a broken chunk comes after
        // the head was accepted, so the client's response is broken off.
        if path == "/bad-chunk" {
            assert_broken(&answer, path);
        } else {
            assert!(answer.starts_with("HTTP/1.1 502"), "{path}: {answer:.300}");
        }
        assert_eq!(
            backend.seen().len(),
            before + 1,
            "{path} was sent once, not retried"
        );
        let next = get(&proxy.url("/length"), &[]).await;
        assert_eq!(next.text(), "hello", "after {path}");
        assert_ne!(
            backend.last_conn(),
            conn,
            "{path}: its connection was reused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_reaches_the_client_as_broken() {
    let backend = ScriptedBackend::start(script);
    let proxy = proxy_for(&backend);
    for path in ["/cut-length", "/cut-chunks"] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        let answer = raw_exchange(proxy.addr(), request.as_bytes()).await;
        assert_broken(&answer, path);
    }
    // Both count against the backend as failures.
    eventually(
        Duration::from_secs(5),
        "the cut bodies to count as failures",
        || async {
            let text = scrape(&proxy).await;
            metric(
                &text,
                "switchyard_backend_error_ratio",
                &[("backend", "raw")],
            ) > 0.99
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_backend_closed_or_spoiled_while_idle_is_never_used() {
    let backend = ScriptedBackend::start(script);
    let proxy = proxy_for(&backend);
    // Closed at once, closed after a while, and sent unasked bytes: each
    // next request, idempotent or not, gets a correct answer.
    for (path, wait) in [
        ("/then-close", 0),
        ("/close-when-idle", 400),
        ("/then-junk", 200),
    ] {
        for method in ["GET", "POST"] {
            let reply = send(method, &proxy.url(path), &[], Bytes::new()).await;
            assert_eq!(reply.text(), "ok", "{method} {path}");
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let before = backend.seen().len();
            let next = send(method, &proxy.url("/length"), &[], Bytes::from_static(b"x")).await;
            assert_eq!(next.status, 200, "{method} after {path}: {}", next.text());
            assert_eq!(next.text(), "hello", "{method} after {path}");
            let seen = backend.seen();
            assert_eq!(
                seen.len(),
                before + 1,
                "{method} after {path}: sent more than once"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bodies_go_upstream_framed_by_their_length() {
    let backend = ScriptedBackend::start(script);
    let proxy = proxy_for(&backend);
    let requests: [&[u8]; 3] = [
        b"POST /length HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        b"POST /length HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        b"GET /length HTTP/1.1\r\nhost: x\r\n\r\n",
    ];
    for request in requests {
        let answer = raw_exchange(proxy.addr(), request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let seen = backend.seen();
    let heads: Vec<String> = seen.iter().map(|s| s.head.to_ascii_lowercase()).collect();
    assert_eq!(seen.len(), 3, "{heads:?}");
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(
        heads[0].matches("content-length: 5").count(),
        1,
        "{}",
        heads[0]
    );
    assert_eq!(
        heads[1].matches("content-length: 0").count(),
        1,
        "{}",
        heads[1]
    );
    assert!(!heads[2].contains("content-length"), "{}", heads[2]);
    for head in &heads {
        assert!(!head.contains("transfer-encoding"), "{head}");
    }
}
