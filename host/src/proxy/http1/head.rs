//! Which request heads the lean server takes, parsed without copying their
//! values; every other head is left, untouched, for hyper.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};

/// Longest request head served here; a longer one goes to hyper, which
/// has its own limit and answer.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read whole here.
pub const MAX_BODY: usize = 64 * 1024;
/// Header fields parsed here; a head with more goes to hyper.
const FIELDS: usize = 32;
/// Room for the headers the proxy adds on the way out.
const SPARE: usize = 4;

/// A request head taken off the connection.
pub struct Head {
    pub request: Request<()>,
    /// Bytes of body that follow, by `content-length`.
    pub body_len: usize,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
}

/// What the front of the read buffer holds.
// Not boxed: a head is moved once, and a box would be an allocation per
// request.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// The start of a plain head: read more.
    More,
    /// A plain request head, taken off the buffer.
    Head(Head),
    /// Something else: hyper serves the connection from here, buffer
    /// untouched.
    Hyper,
}

/// Takes a plain HTTP/1.1 request head off the front of `buf`: an
/// origin-form target, at most one `content-length` of digits within
/// [`MAX_BODY`], and none of `transfer-encoding`, `upgrade`, `expect`,
/// `te` or `connection: upgrade`. `HEAD`, `CONNECT`, HTTP/1.0, a head
/// httparse refuses, with more than [`FIELDS`] fields or over
/// [`MAX_HEAD`]: [`Parsed::Hyper`], so their framing and errors stay
/// hyper's.
pub fn parse(buf: &mut BytesMut) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::More,
        _ => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    let method = match Method::from_bytes(method.as_bytes()) {
        Ok(Method::HEAD | Method::CONNECT) | Err(_) => return Parsed::Hyper,
        Ok(m) => m,
    };
    if !path.starts_with('/') {
        return Parsed::Hyper;
    }
    // Where the target and each field sit in `buf`, so they can share the
    // head's bytes once it is split off.
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let target = span(path.as_bytes());
    let count = req.headers.len();
    let mut spans = [((0, 0), (0, 0)); FIELDS];
    for (slot, field) in spans.iter_mut().zip(req.headers.iter()) {
        *slot = (span(field.name.as_bytes()), span(field.value));
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target.0..target.1)) else {
        restore(buf, &head);
        return Parsed::Hyper;
    };
    let mut headers = HeaderMap::with_capacity(count + SPARE);
    let mut body_len = None;
    let mut close = false;
    for &((n0, n1), (v0, v1)) in &spans[..count] {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[n0..n1]),
            HeaderValue::from_maybe_shared(head.slice(v0..v1)),
        ) else {
            restore(buf, &head);
            return Parsed::Hyper;
        };
        let plain = if name == header::CONTENT_LENGTH {
            let n = decimal(value.as_bytes()).filter(|&n| n <= MAX_BODY);
            let first = body_len.is_none();
            body_len = n;
            n.is_some() && first
        } else if name == header::CONNECTION {
            let (upgrade, asks_close) = connection_tokens(value.as_bytes());
            close |= asks_close;
            !upgrade
        } else {
            name != header::TRANSFER_ENCODING
                && name != header::UPGRADE
                && name != header::EXPECT
                && name != header::TE
        };
        if !plain {
            restore(buf, &head);
            return Parsed::Hyper;
        }
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Head(Head {
        request,
        body_len: body_len.unwrap_or(0),
        close,
    })
}

/// A `content-length` value: 1 to 19 ASCII digits.
fn decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// Whether a `connection` value lists `upgrade`, and whether `close`.
fn connection_tokens(value: &[u8]) -> (bool, bool) {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).fold(
        (false, false),
        |(upgrade, close), token| {
            (
                upgrade || token.eq_ignore_ascii_case(b"upgrade"),
                close || token.eq_ignore_ascii_case(b"close"),
            )
        },
    )
}

/// Puts a split-off head back in front of what follows it (only for a
/// head hyper is to read after all).
fn restore(buf: &mut BytesMut, head: &[u8]) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf), buf)
    }

    #[test]
    fn plain_heads_are_taken_with_their_length() {
        let (p, rest) =
            parsed(b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
        let Parsed::Head(head) = p else {
            panic!("not taken")
        };
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/v1/chat?x=1");
        assert_eq!(head.request.headers()["host"], "a");
        assert_eq!(head.body_len, 5);
        assert!(!head.close);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn connection_close_is_noted() {
        let (p, _) = parsed(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(matches!(p, Parsed::Head(h) if h.close));
    }

    #[test]
    fn partial_heads_wait_until_too_long() {
        assert!(matches!(
            parsed(b"GET / HTTP/1.1\r\nHost: a\r\n").0,
            Parsed::More
        ));
        let mut long = b"GET / HTTP/1.1\r\nx: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert!(matches!(parsed(&long).0, Parsed::Hyper));
    }

    #[test]
    fn anything_unusual_is_left_whole_for_hyper() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.0\r\n\r\n",
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\na",
            b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\0b\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
        ];
        for case in cases {
            let (p, rest) = parsed(case);
            assert!(
                matches!(p, Parsed::Hyper),
                "taken: {}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], *case, "buffer changed");
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=FIELDS {
            many.extend_from_slice(format!("x{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parsed(&many).0, Parsed::Hyper));
    }
}
