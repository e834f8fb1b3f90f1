//! A lean HTTP/1.1 client for the keep-alive fast path: a request held
//! whole is written in one go on a pooled connection, and its response is
//! read by the request's own task. hyper's client drives each connection
//! from a task of its own and hands every request to it over a channel and
//! every response back over a oneshot; here there is no hand-off at all.
//! HTTP/2, protocol upgrades and streamed request bodies keep hyper.
//!
//! Responses are framed as RFC 9112 §6.3 says: no body after `HEAD`, 1xx,
//! 204 and 304; `transfer-encoding` ending in `chunked` decoded (trailers
//! kept); otherwise `content-length` (every value the same, or the response
//! is refused); otherwise the body runs to the connection's end. A
//! connection is reused only after a body framed by length or chunks that
//! was read to its end, with no stray bytes behind it, on a response that
//! did not ask to close.

mod framing;

use super::Home;
use crate::endpoint::Stream;
use bytes::{Bytes, BytesMut};
use framing::{Chunk, Decoded, Framing, decode, framing};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::AsyncWriteExt;

/// Largest response head (and trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Fields parsed on the first try (each slot is zeroed); more: parsed again.
const FEW_HEADERS: usize = 24;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

/// Why an exchange on a lean connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection ended before any byte of a response: on a reused
    /// connection, the backend had closed it while it was idle.
    #[error("connection closed before a response")]
    Closed,
    #[error("connection closed mid-response")]
    Incomplete,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid response from the backend: {0}")]
    Invalid(&'static str),
}

impl Error {
    /// Whether the failure says the connection was gone before the request
    /// reached a live peer, as an idle keep-alive connection the backend
    /// closed is: the request may be sent again on another connection.
    pub fn is_stale(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// An HTTP/1.1 connection to a backend with what was read past the last
/// response.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether the connection has been silent while idle. Data or an end
    /// from the backend now means it closed the connection (or broke the
    /// protocol): either way it must not carry a request. Costs no system
    /// call unless the socket was marked readable.
    pub fn is_quiet(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = match &self.io {
            Stream::Plain(tcp) => tcp,
            // Under TLS, unasked bytes while idle are a close_notify or a
            // late handshake message: not worth keeping the connection for.
            Stream::Tls(tls) => tls.get_ref().0,
        };
        let mut byte = [0u8; 1];
        // Peeking costs a system call only when the socket was marked
        // readable (possibly left over from the last read); it clears a
        // stale mark.
        tcp.poll_peek(&mut cx, &mut tokio::io::ReadBuf::new(&mut byte))
            .is_pending()
    }

    /// Writes `req` with `body` and reads the response head (skipping
    /// interim 1xx answers). The body comes back with the connection in it;
    /// `home` takes the connection back once the body has ended cleanly.
    pub async fn send(
        mut self,
        req: &Request<()>,
        body: &Bytes,
        home: Home,
    ) -> Result<Response<Body>, Error> {
        let mut head = Vec::with_capacity(256 + body.len().min(COALESCE));
        encode_head(req, body.len(), &mut head);
        if body.len() <= COALESCE {
            head.extend_from_slice(body);
            self.io.write_all(&head).await?;
        } else {
            self.io.write_all(&head).await?;
            self.io.write_all(body).await?;
        }
        self.io.flush().await?;
        loop {
            let parsed = match self.buf.is_empty() {
                true => None,
                false => parse_head(&mut self.buf)?,
            };
            let Some(parts) = parsed else {
                if self.buf.len() >= MAX_HEAD {
                    return Err(Error::Invalid("response head larger than 64 KiB"));
                }
                let n = std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
                if n == 0 {
                    return Err(if self.buf.is_empty() {
                        Error::Closed
                    } else {
                        Error::Incomplete
                    });
                }
                continue;
            };
            let status = parts.status;
            if status.is_informational() {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Error::Invalid("101 to a request that asked no upgrade"));
                }
                continue;
            }
            let (framing, keep_alive) = framing(req.method(), &parts)?;
            let mut parts = parts;
            if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
                // The transfer coding frames the body, never a length
                // sent with it, which the client must not see either.
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            let mut body = Body {
                conn: Some(self),
                framing,
                keep_alive,
                home: Some(home),
                ended: false,
            };
            if let Framing::Length(0) = body.framing {
                body.end();
            }
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            *resp.version_mut() = parts.version;
            *resp.headers_mut() = parts.headers;
            return Ok(resp);
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// The request line and headers, framed by `content-length` (whatever
/// framing headers the request came with).
fn encode_head(req: &Request<()>, body_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let expects_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if body_len > 0 || expects_body {
        let _ = write!(out, "content-length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Takes a complete response head off the front of `buf`, or `None` when
/// more bytes are needed. Header values share the head's bytes.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    match parse_head_in::<FEW_HEADERS>(buf) {
        Err(Error::Invalid(TOO_MANY)) => parse_head_in::<MAX_HEADERS>(buf),
        parsed => parsed,
    }
}

const TOO_MANY: &str = "more than 100 header fields";

/// [`parse_head`] with room for `N` header fields.
fn parse_head_in<const N: usize>(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; N];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid(TOO_MANY)),
        Err(_) => return Err(Error::Invalid("malformed response head")),
    };
    if len > MAX_HEAD {
        return Err(Error::Invalid("response head larger than 64 KiB"));
    }
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Invalid("bad status code"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each field sits in `buf`, so the values can share its bytes.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); N];
    let count = resp.headers.len();
    for (span, field) in spans.iter_mut().zip(resp.headers.iter()) {
        // Offsets within a head of at most 64 KiB plus one read.
        let name = (field.name.as_ptr() as usize - base) as u32;
        let value = (field.value.as_ptr() as usize - base) as u32;
        let (nl, vl) = (field.name.len() as u32, field.value.len() as u32);
        *span = (name, name + nl, value, value + vl);
    }
    let head = buf.split_to(len).freeze();
    // Room for the headers the proxy adds: growing costs two allocations.
    let mut headers = HeaderMap::with_capacity(count + super::SPARE_HEADERS);
    for &(n0, n1, v0, v1) in &spans[..count] {
        let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
        let name =
            HeaderName::from_bytes(&head[n0..n1]).map_err(|_| Error::Invalid("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| Error::Invalid("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// A response body read off its connection.
pub struct Body {
    /// `None` once the body has ended (the connection went home or closed).
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Home>,
    /// Read to its end (not broken off).
    ended: bool,
}

impl Body {
    /// The body is complete: a connection that may be reused goes home.
    fn end(&mut self) {
        self.ended = true;
        let conn = self.conn.take();
        if let (Some(conn), Some(home), true) = (conn, self.home.take(), self.keep_alive)
            && conn.buf.is_empty()
        {
            home.put(conn);
        }
    }

    /// The next frame, with the connection at hand.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let needed = match &mut self.framing {
                Framing::Length(left) => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let n = (*left).min(conn.buf.len() as u64);
                        let data = conn.buf.split_to(n as usize).freeze();
                        *left -= n;
                        if *left == 0 {
                            self.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match decode(state, &mut conn.buf)? {
                    Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Decoded::End(trailers) => {
                        self.end();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Decoded::More => {
                        let waiting = match state {
                            Chunk::Size => conn.buf.len() > MAX_CHUNK_LINE,
                            Chunk::Trailers => conn.buf.len() > MAX_HEAD,
                            _ => false,
                        };
                        if waiting {
                            return Poll::Ready(Some(Err(Error::Invalid(
                                "chunk line or trailers too long",
                            ))));
                        }
                        true
                    }
                    Decoded::Again => false,
                },
            };
            if needed && ready!(conn.poll_fill(cx))? == 0 {
                if self.framing == Framing::Close {
                    self.end();
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Error::Incomplete)));
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let next = ready!(this.poll_next(cx));
        if let Some(Err(_)) = &next {
            // A broken body leaves the connection in an unknown state.
            this.conn = None;
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.ended => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(text))
    }

    #[test]
    fn heads_parse_only_when_complete_and_share_their_bytes() {
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n")
                .unwrap()
                .is_none()
        );
        let mut buf = BytesMut::from("HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\n\r\nhi");
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, 404);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"hi");
        assert!(matches!(
            head("HTTP/1.1 20 OK\r\n\r\n"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nbad header\r\n\r\n"),
            Err(Error::Invalid(_))
        ));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(101));
        assert!(matches!(head(&many), Err(Error::Invalid(TOO_MANY))));
        let fifty = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(50));
        assert_eq!(head(&fifty).unwrap().unwrap().headers.len(), 50);
    }

    #[test]
    fn requests_are_framed_by_their_held_body() {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/chat?x=1")
            .header("host", "b")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&req, 0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat?x=1 HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n"
        );
        let get = Request::builder().uri("http://h").body(()).unwrap();
        let mut out = Vec::new();
        encode_head(&get, 0, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "GET / HTTP/1.1\r\n\r\n");
    }
}
