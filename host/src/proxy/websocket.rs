//! The server side of a WebSocket (RFC 6455), as far as a job relay needs
//! it: the handshake, the client's frames read (masked, possibly
//! fragmented, bounded in size), and text, ping, pong and close frames
//! written. No extensions are offered, so none can be in use.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Request, header};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The key suffix of RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes the relay sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const ERROR: u16 = 1011;
}

/// Whether `req` asks to open a WebSocket: an HTTP/1.1 `GET` with
/// `upgrade: websocket`, a key, and version 13.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && h.get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
            })
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13")
}

/// `sec-websocket-accept` for the client's `sec-websocket-key`.
pub fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let encoded = base64(&sha.finalize());
    HeaderValue::from_str(&encoded).expect("base64 is a valid header value")
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    /// To be answered with a pong carrying the same bytes.
    Ping(Bytes),
    Pong,
    Close(Option<u16>),
}

/// Why the client's side of the socket could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket message over {0} bytes")]
    TooBig(usize),
}

impl WsError {
    /// The close code that tells the client why.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Io(_) => close::ERROR,
            WsError::Protocol(_) => close::PROTOCOL,
            WsError::TooBig(_) => close::TOO_BIG,
        }
    }
}

/// Reads the client's messages. [`WsReader::recv`] is cancel-safe: all
/// state is kept here between reads.
pub struct WsReader<R> {
    io: R,
    buf: BytesMut,
    /// A fragmented message being assembled: its opcode and bytes so far.
    partial: Option<(u8, BytesMut)>,
    max: usize,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// Reads from `io`, refusing messages over `max` bytes.
    pub fn new(io: R, max: usize) -> WsReader<R> {
        WsReader {
            io,
            buf: BytesMut::with_capacity(1024),
            partial: None,
            max,
        }
    }

    /// The next message; `Ok(None)` when the client closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(Some(message));
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// A whole message from the buffer, if one is there.
    fn parse(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            let Some((fin, opcode, payload)) = self.frame()? else {
                return Ok(None);
            };
            match opcode {
                OP_PING => return Ok(Some(Message::Ping(payload))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Message::Close(code)));
                }
                OP_TEXT | OP_BINARY if self.partial.is_some() => {
                    return Err(WsError::Protocol("a new message inside a fragmented one"));
                }
                OP_TEXT | OP_BINARY if fin => return Ok(Some(data(opcode, payload)?)),
                OP_TEXT | OP_BINARY => self.partial = Some((opcode, BytesMut::from(&payload[..]))),
                OP_CONTINUATION => {
                    let Some((first, mut so_far)) = self.partial.take() else {
                        return Err(WsError::Protocol("a continuation without a message"));
                    };
                    if so_far.len() + payload.len() > self.max {
                        return Err(WsError::TooBig(self.max));
                    }
                    so_far.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(data(first, so_far.freeze())?));
                    }
                    self.partial = Some((first, so_far));
                }
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
        }
    }

    /// One whole frame from the buffer, unmasked: (fin, opcode, payload).
    fn frame(&mut self) -> Result<Option<(bool, u8, Bytes)>, WsError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
        if rsv != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        if b[1] & 0x80 == 0 {
            return Err(WsError::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if opcode >= OP_CLOSE && (len > 125 || !fin) {
            return Err(WsError::Protocol(
                "a control frame fragmented or over 125 bytes",
            ));
        }
        if len > self.max as u64 {
            return Err(WsError::TooBig(self.max));
        }
        let len = len as usize;
        if b.len() < at + 4 + len {
            self.buf.reserve(at + 4 + len - b.len());
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        self.buf.advance(at);
        let mut payload = self.buf.split_to(len);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        Ok(Some((fin, opcode, payload.freeze())))
    }
}

fn data(opcode: u8, payload: Bytes) -> Result<Message, WsError> {
    if opcode == OP_TEXT {
        if std::str::from_utf8(&payload).is_err() {
            return Err(WsError::Protocol("a text message that is not UTF-8"));
        }
        return Ok(Message::Text(payload));
    }
    Ok(Message::Binary(payload))
}

/// Writes frames to the client (unmasked, as servers do).
pub struct WsWriter<W> {
    io: W,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    pub fn new(io: W) -> WsWriter<W> {
        WsWriter { io }
    }

    pub async fn text(&mut self, text: &str) -> std::io::Result<()> {
        self.frame(OP_TEXT, text.as_bytes()).await
    }

    pub async fn ping(&mut self) -> std::io::Result<()> {
        self.frame(OP_PING, b"switchyard").await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.frame(OP_PONG, payload).await
    }

    /// Sends a close frame and shuts the write side.
    pub async fn close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        // A close reason fits a control frame's 125 bytes.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.frame(OP_CLOSE, &payload).await?;
        self.io.shutdown().await
    }

    async fn frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(10 + payload.len());
        head.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => head.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                head.push(126);
                head.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                head.push(127);
                head.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        head.extend_from_slice(payload);
        self.io.write_all(&head).await?;
        self.io.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Option<Message>, String>> {
        let mut reader = WsReader::new(&bytes[..], max);
        let mut out = Vec::new();
        loop {
            let r = reader.recv().await.map_err(|e| e.to_string());
            let end = !matches!(r, Ok(Some(_)));
            out.push(r);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn reads_masked_fragmented_and_control_frames() {
        let mut bytes = masked(0x01, b"hel"); // text, not final
        bytes.extend(masked(0x89, b"p")); // a ping between the fragments
        bytes.extend(masked(0x80, b"lo")); // final continuation
        bytes.extend(masked(0x82, &[0u8; 300])); // binary, 16-bit length
        bytes.extend(masked(0x88, &1000u16.to_be_bytes()));
        let got = read_all(bytes, 1024).await;
        assert_eq!(got[0], Ok(Some(Message::Ping(Bytes::from_static(b"p")))));
        assert_eq!(
            got[1],
            Ok(Some(Message::Text(Bytes::from_static(b"hello"))))
        );
        assert_eq!(
            got[2],
            Ok(Some(Message::Binary(Bytes::from(vec![0u8; 300]))))
        );
        assert_eq!(got[3], Ok(Some(Message::Close(Some(1000)))));
        assert_eq!(got[4], Ok(None));
    }

    #[tokio::test]
    async fn refuses_what_rfc_6455_forbids() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let too_big = masked(0x81, &[b'a'; 200]);
        let long_ping = masked(0x89, &[0u8; 126]);
        let bad_utf8 = masked(0x81, &[0xff, 0xfe]);
        let orphan = masked(0x80, b"x");
        let reserved = masked(0xC1, b"x");
        for (bytes, want) in [
            (unmasked, "masked"),
            (too_big, "over 100 bytes"),
            (long_ping, "control frame"),
            (bad_utf8, "UTF-8"),
            (orphan, "continuation"),
            (reserved, "reserved"),
        ] {
            let got = read_all(bytes, 100).await;
            let err = got.last().and_then(|r| r.as_ref().err()).expect("an error");
            assert!(err.contains(want), "{err} should say {want}");
        }
    }
}
