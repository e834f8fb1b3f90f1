//! How a response body is delimited (RFC 9112 §6.3), and the chunked
//! decoder.

use super::{Error, MAX_HEADERS, head::Head};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// The body's framing, and whether the connection may carry another
/// request after it.
pub(super) fn framing(method: &Method, head: &Head) -> Result<(Framing, bool), Error> {
    let tokens = |name| {
        head.headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
    };
    let close = tokens(http::header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"close"));
    let keep_alive = match head.version {
        Version::HTTP_11 => !close,
        _ => tokens(http::header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"keep-alive")),
    };
    let status = head.status.as_u16();
    if *method == Method::HEAD || status == 204 || status == 304 {
        return Ok((Framing::Length(0), keep_alive));
    }
    let has_length = head.headers.contains_key(http::header::CONTENT_LENGTH);
    if head.headers.contains_key(http::header::TRANSFER_ENCODING) {
        let chunked = tokens(http::header::TRANSFER_ENCODING)
            .next_back()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        if chunked && head.version == Version::HTTP_11 {
            // Both framings at once is how smuggling starts: decode the
            // chunks, then close rather than trust what follows.
            return Ok((Framing::Chunked(Chunk::Size), keep_alive && !has_length));
        }
        return Ok((Framing::Close, false));
    }
    if has_length {
        let mut length = None;
        for value in tokens(http::header::CONTENT_LENGTH) {
            let n = parse_decimal(value).ok_or(Error::Invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Invalid("conflicting content-length values"));
            }
            length = Some(n);
        }
        let n = length.ok_or(Error::Invalid("empty content-length"))?;
        return Ok((Framing::Length(n), keep_alive));
    }
    Ok((Framing::Close, false))
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A chunk-size line without its CRLF: hex digits, then nothing or
/// extensions (ignored).
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// What the chunked decoder made of the buffered bytes.
pub(super) enum Decoded {
    Data(Bytes),
    /// The last chunk and the trailer section were read.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
    /// The state moved on; decode again.
    Again,
}

pub(super) fn decode(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    match *state {
        Chunk::Size => {
            let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                return Ok(Decoded::More);
            };
            let line = buf[..eol]
                .strip_suffix(b"\r")
                .ok_or(Error::Invalid("chunk-size line without CRLF"))?;
            let size = parse_chunk_size(line).ok_or(Error::Invalid("bad chunk size"))?;
            let _ = buf.split_to(eol + 1);
            *state = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Decoded::Again)
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            let n = left.min(buf.len() as u64);
            *state = if n == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - n)
            };
            Ok(Decoded::Data(buf.split_to(n as usize).freeze()))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Invalid("chunk data not followed by CRLF"));
            }
            let _ = buf.split_to(2);
            *state = Chunk::Size;
            Ok(Decoded::Again)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                let _ = buf.split_to(2);
                return Ok(Decoded::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields.iter() {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| Error::Invalid("bad trailer name"))?;
                        let value = HeaderValue::from_bytes(f.value)
                            .map_err(|_| Error::Invalid("bad trailer value"))?;
                        trailers.append(name, value);
                    }
                    let _ = buf.split_to(len);
                    Ok(Decoded::End(Some(trailers)))
                }
                Ok(httparse::Status::Partial) => Ok(Decoded::More),
                Err(_) => Err(Error::Invalid("malformed trailers")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(method: Method, text: &str) -> Result<(Framing, bool), Error> {
        let head = super::super::parse_head(&mut BytesMut::from(text))?;
        framing(&method, &head.expect("a complete head"))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = || Method::GET;
        let r = "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(framed(get(), r).unwrap(), (Framing::Length(12), true));
        assert_eq!(framed(Method::HEAD, r).unwrap(), (Framing::Length(0), true));
        let r = "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(framed(get(), r).unwrap().0, Framing::Length(0));
        let r = "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(framed(get(), r).unwrap().0, Framing::Length(5));
        for bad in ["5, 6", "+5", "-1", "0x5", "", "99999999999999999999"] {
            let r = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(framed(get(), &r).is_err(), "content-length {bad:?}");
        }
        let r = "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n";
        assert_eq!(
            framed(get(), r).unwrap(),
            (Framing::Chunked(Chunk::Size), true)
        );
        let r = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(
            framed(get(), r).unwrap(),
            (Framing::Chunked(Chunk::Size), false)
        );
        let r = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n";
        assert_eq!(framed(get(), r).unwrap(), (Framing::Close, false));
        let r = "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\n";
        assert_eq!(framed(get(), r).unwrap(), (Framing::Length(1), false));
        let r = "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n";
        assert_eq!(framed(get(), r).unwrap(), (Framing::Length(1), false));
        let r = "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n";
        assert_eq!(framed(get(), r).unwrap(), (Framing::Length(1), true));
        assert_eq!(
            framed(get(), "HTTP/1.1 200 OK\r\n\r\n").unwrap(),
            (Framing::Close, false)
        );
    }

    #[test]
    fn chunks_decode_with_extensions_and_trailers() {
        let mut buf =
            BytesMut::from("5;ext=1\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-sum: 9\r\n\r\nrest");
        let mut state = Chunk::Size;
        let mut data = Vec::new();
        let trailers = loop {
            match decode(&mut state, &mut buf).unwrap() {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Again => {}
                Decoded::End(t) => break t,
                Decoded::More => panic!("all bytes are there"),
            }
        };
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "9");
        assert_eq!(&buf[..], b"rest");
        for bad in ["g\r\n", "\r\n", "5\n", "5 x\r\n", "1000000000000000\r\n"] {
            let mut buf = BytesMut::from(bad);
            assert!(
                decode(&mut Chunk::Size, &mut buf).is_err(),
                "chunk line {bad:?}"
            );
        }
        let mut buf = BytesMut::from("abXY");
        let mut state = Chunk::Data(2);
        assert!(matches!(decode(&mut state, &mut buf), Ok(Decoded::Data(_))));
        assert!(
            decode(&mut state, &mut buf).is_err(),
            "no CRLF after the data"
        );
        let mut buf = BytesMut::from("5\r");
        assert!(matches!(
            decode(&mut Chunk::Size, &mut buf),
            Ok(Decoded::More)
        ));
    }
}
