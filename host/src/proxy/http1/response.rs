//! Response heads and body framing as the lean server writes them, the
//! way hyper would: a `date` when the response has none, `content-length`
//! when the length is known and chunks otherwise, no body where RFC 9112
//! allows none, and `connection: close` when the connection ends after it.

use http::{HeaderMap, HeaderValue, StatusCode, header, response};
use http_body::SizeHint;
use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body is sent (204, 304, 1xx), whatever the body holds.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked, ended by a zero-size chunk.
    Chunked,
}

/// Writes the status line and headers of a response to `out`, fixing its
/// framing headers to match what will be sent; returns the framing and
/// whether the connection must close after it (the client or the response
/// asked, or `close` was already decided).
pub fn encode_head(
    parts: &mut response::Parts,
    size: SizeHint,
    close: bool,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = parts.status;
    let headers = &mut parts.headers;
    let mut close = close || asks_close(headers);
    let framing = if status.is_informational() {
        // Not a final answer: nothing can follow on this connection.
        close = true;
        Framing::Empty
    } else if status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        Framing::Empty
    } else if status == StatusCode::NOT_MODIFIED {
        headers.remove(header::TRANSFER_ENCODING);
        Framing::Empty
    } else {
        headers.remove(header::TRANSFER_ENCODING);
        match declared_length(headers).or(size.exact()) {
            Some(n) => {
                if !headers.contains_key(header::CONTENT_LENGTH) {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                Framing::Length(n)
            }
            None => {
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                Framing::Chunked
            }
        }
    };
    if close && !asks_close(headers) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    status_line(status, out);
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// The one `content-length` a response declares, if it declares exactly
/// one valid value; a bad or repeated one is dropped.
fn declared_length(headers: &mut HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let n = match values.next() {
        None => first.to_str().ok().and_then(|v| v.parse::<u64>().ok()),
        Some(_) => None,
    };
    if n.is_none() {
        headers.remove(header::CONTENT_LENGTH);
    }
    n
}

fn asks_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

fn status_line(status: StatusCode, out: &mut Vec<u8>) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The chunk-size line before `len` bytes of a chunked body.
pub fn chunk_line(len: usize, out: &mut Vec<u8>) {
    let _ = write!(out, "{len:x}\r\n");
}

/// What ends a chunked body: the last chunk, no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

thread_local! {
    /// The IMF-fixdate of the current second, made once a second per
    /// worker.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends the current time as an HTTP date.
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = second;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn encoded(resp: Response<()>, size: SizeHint, close: bool) -> (String, Framing, bool) {
        let (mut parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        let (framing, close) = encode_head(&mut parts, size, close, &mut out);
        (String::from_utf8(out).unwrap(), framing, close)
    }

    #[test]
    fn known_lengths_are_declared_and_others_chunked() {
        let (head, framing, close) = encoded(Response::new(()), SizeHint::with_exact(5), false);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "));
        assert!(head.ends_with(" GMT\r\n\r\n"));
        assert_eq!((framing, close), (Framing::Length(5), false));
        let streamed = Response::builder()
            .header("transfer-encoding", "gzip")
            .body(())
            .unwrap();
        let (head, framing, _) = encoded(streamed, SizeHint::new(), false);
        assert!(head.contains("transfer-encoding: chunked\r\n"));
        assert!(!head.contains("gzip"));
        assert_eq!(framing, Framing::Chunked);
    }

    #[test]
    fn a_declared_length_wins_and_a_bad_one_is_dropped() {
        let declared = Response::builder()
            .header("content-length", "7")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(declared, SizeHint::new(), false).1,
            Framing::Length(7)
        );
        let bad = Response::builder()
            .header("content-length", "7")
            .header("content-length", "8")
            .body(())
            .unwrap();
        let (head, framing, _) = encoded(bad, SizeHint::new(), false);
        assert_eq!(framing, Framing::Chunked);
        assert!(!head.contains("content-length"));
    }

    #[test]
    fn bodiless_statuses_send_no_body() {
        let no_content = Response::builder()
            .status(204)
            .header("content-length", "3")
            .body(())
            .unwrap();
        let (head, framing, _) = encoded(no_content, SizeHint::with_exact(3), false);
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!head.contains("content-length"));
        assert_eq!(framing, Framing::Empty);
        let switching = Response::builder().status(101).body(()).unwrap();
        let (_, framing, close) = encoded(switching, SizeHint::new(), false);
        assert_eq!((framing, close), (Framing::Empty, true));
    }

    #[test]
    fn closing_is_said_once() {
        let (head, _, close) = encoded(Response::new(()), SizeHint::with_exact(0), true);
        assert!(close);
        assert_eq!(head.matches("connection: close").count(), 1);
        let asked = Response::builder()
            .header("connection", "close")
            .body(())
            .unwrap();
        let (head, _, close) = encoded(asked, SizeHint::with_exact(0), false);
        assert!(close);
        assert_eq!(head.matches("connection: close").count(), 1);
    }
}
