//! Request smuggling: for each classic desync, a raw client sends the
//! ambiguous bytes and a raw backend records exactly what reaches it. No
//! variant may get a second, hidden request to the backend: the proxy
//! either refuses the request or forwards it framed one way only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_tests::*;

/// One request as the raw backend parsed it.
#[derive(Debug, Clone)]
struct Seen {
    /// The request line and header lines, as received.
    head: String,
    body: Vec<u8>,
}

/// A backend that parses HTTP/1.1 strictly (CRLF lines, one framing
/// header), logs every request and answers each with `200 ok`.
struct RawBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Every byte received, per connection, for the failure message.
    bytes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawBackend {
    fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (seen.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(256) {
                let Ok(stream) = stream else { return };
                let (s, b) = (s.clone(), b.clone());
                std::thread::spawn(move || serve_raw(stream, &s, &b));
            }
        });
        RawBackend { addr, seen, bytes }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn received(&self) -> String {
        let all = self.bytes.lock().expect("lock");
        all.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n--- next connection ---\n")
    }
}

fn serve_raw(mut stream: std::net::TcpStream, seen: &Mutex<Vec<Seen>>, log: &Mutex<Vec<Vec<u8>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let index = {
        let mut log = log.lock().expect("lock");
        log.push(Vec::new());
        log.len() - 1
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse every complete request in the buffer.
        while let Some(parsed) = parse_request(&buf) {
            let (request, used) = match parsed {
                Ok(p) => p,
                Err(why) => {
                    seen.lock().expect("lock").push(Seen {
                        head: format!("UNPARSABLE: {why}"),
                        body: Vec::new(),
                    });
                    return;
                }
            };
            buf.drain(..used);
            seen.lock().expect("lock").push(request);
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(reply).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                log.lock().expect("lock")[index].extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A complete request at the start of `buf` and the bytes it took; `None`
/// when more bytes are needed; an error for anything a strict parser refuses
/// (bare LF, folded or duplicate framing headers, both framings at once).
#[allow(clippy::type_complexity)]
fn parse_request(buf: &[u8]) -> Option<Result<(Seen, usize), String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut length = None;
    let mut chunked = false;
    for (i, line) in head.split("\r\n").enumerate() {
        if line.contains('\n') || line.contains('\r') || line.contains('\0') {
            return Some(Err(format!("bare LF, CR or NUL in {line:?}")));
        }
        if i == 0 {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            return Some(Err(format!("folded line {line:?}")));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Some(Err(format!("header without a colon {line:?}")));
        };
        if name != name.trim() {
            return Some(Err(format!("space around a header name {line:?}")));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Some(Err("two content-length headers".into()));
            }
            match value.parse::<usize>() {
                Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => length = Some(n),
                _ => return Some(Err(format!("bad content-length {value:?}"))),
            }
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || value != "chunked" {
                return Some(Err(format!("transfer-encoding {value:?}")));
            }
            chunked = true;
        }
    }
    if chunked && length.is_some() {
        return Some(Err("both content-length and transfer-encoding".into()));
    }
    let mut at = end + 4;
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let Ok(size) = usize::from_str_radix(&size_text, 16) else {
                return Some(Err(format!("bad chunk size {size_text:?}")));
            };
            at = line_end + 2;
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
            if size == 0 {
                break body;
            }
        }
    } else {
        let n = length.unwrap_or(0);
        if buf.len() < at + n {
            return None;
        }
        at += n;
        buf[end + 4..at].to_vec()
    };
    Some(Ok((Seen { head, body }, at)))
}

/// Classic desync payloads: each hides `GET /smuggled` where a parser that
/// frames the request differently would see a second request.
fn desyncs() -> Vec<(&'static str, String)> {
    let hidden = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let post =
        |headers: &str, body: &str| format!("POST /ok HTTP/1.1\r\nhost: x\r\n{headers}\r\n{body}");
    vec![
        (
            "CL.TE",
            post(
                "content-length: 40\r\ntransfer-encoding: chunked\r\n",
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "TE.CL",
            post(
                "transfer-encoding: chunked\r\ncontent-length: 3\r\n",
                &format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len()),
            ),
        ),
        (
            "TE.TE, second TE header",
            post(
                "transfer-encoding: chunked\r\ntransfer-encoding: x\r\n",
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "TE.TE, space before the colon",
            post(
                "content-length: 40\r\ntransfer-encoding : chunked\r\n",
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "TE.TE, xchunked",
            post(
                "content-length: 40\r\ntransfer-encoding: xchunked\r\n",
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "TE.TE, tab and a list",
            post(
                "content-length: 40\r\ntransfer-encoding:\tchunked, identity\r\n",
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "TE.TE, folded onto another header",
            post(
                "content-length: 40\r\nx-a: b\r\n transfer-encoding: chunked\r\n",
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "duplicate content-length",
            post(
                &format!("content-length: 0\r\ncontent-length: {}\r\n", hidden.len()),
                hidden,
            ),
        ),
        (
            "content-length list",
            post(&format!("content-length: 0, {}\r\n", hidden.len()), hidden),
        ),
        (
            "signed content-length",
            post(&format!("content-length: +{}\r\n", hidden.len()), hidden),
        ),
        (
            "chunk-size overflow",
            post(
                "transfer-encoding: chunked\r\n",
                &format!(
                    "10000000000000000{:x}\r\n{hidden}\r\n0\r\n\r\n",
                    hidden.len()
                ),
            ),
        ),
        (
            "chunk size with a bare LF",
            post(
                "transfer-encoding: chunked\r\n",
                &format!("0\n\r\n{hidden}"),
            ),
        ),
        (
            "bare LF between headers",
            format!(
                "POST /ok HTTP/1.1\r\nhost: x\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
                hidden.len() + 5
            ),
        ),
        (
            "obs-fold of content-length",
            post(
                &format!("content-length: 0\r\n {}\r\n", hidden.len()),
                hidden,
            ),
        ),
        (
            "NUL in a header",
            post(
                &format!("content-length: {}\r\nx-a: b\0c\r\n", hidden.len()),
                hidden,
            ),
        ),
        (
            "transfer-encoding on HTTP/1.0",
            format!(
                "POST /ok HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 40\r\n\r\n0\r\n\r\n{hidden}"
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_desync_ever_smuggles_a_second_request_to_the_backend() {
    let backend = RawBackend::start();
    let config = format!(
        "[pools.p]\nbackends = [{{ name = \"raw\", address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\nretries = {{ attempts = 1 }}\n",
        backend.addr
    );
    let proxy = TestProxy::start(&config);
    let mut failures = Vec::new();
    for (name, payload) in desyncs() {
        let before = backend.seen().len();
        let answer = raw_exchange(proxy.addr(), payload.as_bytes()).await;
        let seen: Vec<Seen> = backend.seen()[before..].to_vec();
        let responses = answer.matches("HTTP/1.1 ").count();
        // What reaches the backend is the client's POST, the hidden request
        // at most as its body bytes, never as a request of its own.
        let smuggled = seen.iter().any(|s| !s.head.starts_with("POST /ok "));
        let unparsable = seen.iter().find(|s| s.head.starts_with("UNPARSABLE"));
        eprintln!(
            "{name}: backend saw {}, client got {:?}",
            seen.len(),
            answer.lines().next().unwrap_or("(closed)")
        );
        // A 502 would blame the backend for the client's bytes.
        let blamed = answer.contains("HTTP/1.1 502");
        if smuggled || blamed || unparsable.is_some() || seen.len() > responses {
            failures.push(format!(
                "{name}: the backend saw {:#?}\nthe client got {answer:?}",
                seen
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nall bytes the backend received:\n{}",
        failures.join("\n\n"),
        backend.received()
    );
    // Well-framed requests, pipelined, each reach the backend whole: the
    // raw backend sees what the proxy sends, so the checks above can fail.
    let before = backend.seen().len();
    let answer = raw_exchange(
        proxy.addr(),
        b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nworld\
          GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    let seen = backend.seen()[before..].to_vec();
    let bodies: Vec<&[u8]> = seen.iter().map(|s| s.body.as_slice()).collect();
    assert_eq!(bodies, [&b"hello"[..], b"world", b""], "{seen:#?}");
}
