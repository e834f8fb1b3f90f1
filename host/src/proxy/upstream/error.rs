//! Why a request could not be sent upstream or answered, as the attempt
//! sees it: the backend's fault, the client's, or the clock's.

use super::{UpstreamBody, lean};
use crate::endpoint::DialError;
use crate::proxy::body::BodyError;
use crate::proxy::request_body::ClientBodyError;
use hyper::Request;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made; the request was not sent and is returned
    /// so the next candidate can take it.
    #[error("{1}")]
    Connect(Box<Request<UpstreamBody>>, #[source] DialError),
    /// No response headers within the first-byte timeout.
    #[error("no response headers within the first-byte timeout")]
    Timeout,
    /// The connection failed after the request was (partly) sent, or the
    /// backend's answer was not valid HTTP.
    #[error("{0}")]
    Failed(#[source] BodyError),
    /// Sending failed because the client's body broke off or was
    /// malformed: the client's fault, not the backend's.
    #[error("{0}")]
    ClientBody(#[source] hyper::Error),
}

impl SendError {
    /// A failed send, blamed on the client when its body is what broke.
    pub(super) fn failed(e: hyper::Error) -> SendError {
        let client = std::error::Error::source(&e).is_some_and(|s| s.is::<ClientBodyError>());
        if client {
            SendError::ClientBody(e)
        } else {
            SendError::Failed(Box::new(e))
        }
    }

    /// The client-body error behind a [`SendError::ClientBody`].
    pub fn client_body(&self) -> Option<&ClientBodyError> {
        match self {
            SendError::ClientBody(e) => std::error::Error::source(e)?.downcast_ref(),
            _ => None,
        }
    }
}

impl From<lean::Error> for SendError {
    /// What a failed exchange on the lean client tells the attempt.
    fn from(e: lean::Error) -> SendError {
        match e {
            lean::Error::TimedOut => SendError::Timeout,
            e => SendError::Failed(Box::new(e)),
        }
    }
}
