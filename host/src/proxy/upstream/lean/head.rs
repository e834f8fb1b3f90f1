//! Heads on the wire: the request line and headers written to a backend,
//! and the response head parsed off the connection.

use super::{Error, FEW_HEADERS, MAX_HEAD, MAX_HEADERS};
use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use std::io::Write;

/// The request line and headers, framed by `content-length` (whatever
/// framing headers the request came with).
pub(super) fn encode_head(req: &Request<()>, body_len: usize, out: &mut Vec<u8>) {
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
pub(super) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Takes a complete response head off the front of `buf`, or `None` when
/// more bytes are needed. Header values share the head's bytes.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
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
    let mut headers = HeaderMap::with_capacity(count + super::super::SPARE_HEADERS);
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
