//! The timeouts of one exchange with a backend, in one place: connect,
//! first byte (bounded by the total), the longest gap between response
//! chunks, and the whole exchange.

use crate::config::TimeoutConfig;
use std::time::Duration;

/// A route's timeouts as the data path applies them; zero means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// To open the connection (TCP, TLS, HTTP/2 handshake).
    pub connect: Duration,
    /// From sending the request to its response headers; never past
    /// `total`, which bounds the wait for headers too.
    pub first_byte: Duration,
    /// Longest gap between two response body chunks.
    pub idle: Duration,
    /// The whole exchange, headers and body.
    pub total: Duration,
}

impl Deadlines {
    pub fn of(t: &TimeoutConfig) -> Deadlines {
        let first_byte = match (t.first_byte.is_zero(), t.total.is_zero()) {
            (_, true) => t.first_byte,
            (true, false) => t.total,
            (false, false) => t.first_byte.min(t.total),
        };
        Deadlines {
            connect: t.connect,
            first_byte,
            idle: t.idle,
            total: t.total,
        }
    }
}

/// `fut` bounded by `limit` (0: unbounded), `Err` when it ran out. Not an
/// `async fn`: a wrapper layer would hold a second copy of `fut`, and this
/// sits on every request's path.
pub fn bounded<F: Future>(limit: Duration, fut: F) -> tokio::time::Timeout<F> {
    // tokio treats a deadline past the clock's range as never.
    let limit = if limit.is_zero() {
        Duration::MAX
    } else {
        limit
    };
    tokio::time::timeout(limit, fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_bounds_the_first_byte() {
        let t = |first_byte: u64, total: u64| TimeoutConfig {
            connect: Duration::from_secs(1),
            first_byte: Duration::from_secs(first_byte),
            idle: Duration::from_secs(5),
            total: Duration::from_secs(total),
        };
        assert_eq!(Deadlines::of(&t(30, 0)).first_byte, Duration::from_secs(30));
        assert_eq!(
            Deadlines::of(&t(30, 10)).first_byte,
            Duration::from_secs(10)
        );
        assert_eq!(Deadlines::of(&t(0, 10)).first_byte, Duration::from_secs(10));
        assert_eq!(Deadlines::of(&t(0, 0)).first_byte, Duration::ZERO);
    }
}
