//! What goes upstream: a client's body streamed once, or a request held
//! whole so it can be sent again.

use super::super::request_body::{ClientBody, ClientBodyError};
use super::UpstreamBody;
use crate::pool::Backend;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::Request;

/// A client's body streamed upstream once, after the bytes already read
/// from it (to route on a field of it).
#[derive(Debug)]
pub struct StreamedBody {
    head: Option<Bytes>,
    rest: ClientBody,
}

impl StreamedBody {
    /// `head` (possibly empty), then the rest of `rest`.
    pub fn after(head: Bytes, rest: ClientBody) -> StreamedBody {
        StreamedBody {
            head: (!head.is_empty()).then_some(head),
            rest,
        }
    }
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, ClientBodyError>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let extra = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + extra);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}
/// A request held whole (head and a buffered or empty body), so it can be
/// sent more than once: to the next candidate, or again over a fresh
/// connection.
pub struct Replay {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Send the client's `host` rather than the backend's address.
    pub preserve_host: bool,
}

impl Replay {
    /// A copy of the request for `backend`, with its header rules applied.
    pub fn build(&self, backend: &Backend) -> Request<UpstreamBody> {
        let mut req = self.copy();
        if !self.preserve_host {
            req.headers_mut()
                .insert(http::header::HOST, backend.host_header.clone());
        }
        backend.rules.apply(req.headers_mut());
        req
    }

    fn copy(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        // Not `clone`: a clone is as full as the original, and the host
        // header or a backend's rules would make it grow (two more
        // allocations per attempt).
        let headers = req.headers_mut();
        headers.reserve(self.headers.len() + super::SPARE_HEADERS);
        headers.extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        req
    }
}
