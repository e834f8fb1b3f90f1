//! When a request goes on to its next candidate: what is retried (connect
//! errors always, answers and broken exchanges only for requests that may
//! repeat), and the route's retry budget, which keeps retries from
//! multiplying load during an outage.

use super::outgoing::Outgoing;
use crate::pool::Pool;
use crate::route::Route;

/// Why an attempt was followed by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No connection: nothing reached the backend.
    Connect,
    /// No response headers within the first-byte timeout.
    Timeout,
    /// The exchange broke before an answer.
    Reset,
    /// The backend answered 429.
    RateLimited,
    /// The backend answered 502, 503 or 504.
    ServerError,
    /// The router asked to hedge and the first candidate was slow to answer.
    Hedge,
}

impl RetryReason {
    /// The `reason` label of `switchyard_retries_total`.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Timeout => "timeout",
            RetryReason::Reset => "reset",
            RetryReason::RateLimited => "429",
            RetryReason::ServerError => "5xx",
            RetryReason::Hedge => "hedge",
        }
    }
}

/// One route's retry rules, applied to one request.
pub struct RetryPolicy<'a> {
    route: &'a Route,
}

impl<'a> RetryPolicy<'a> {
    pub fn of(route: &'a Route) -> RetryPolicy<'a> {
        RetryPolicy { route }
    }

    /// Backends tried per request, the first included.
    pub fn attempts(&self) -> u32 {
        self.route.retries.attempts
    }

    /// Why an answer with `status` would be retried, if it would be.
    pub fn answer(&self, status: u16) -> Option<RetryReason> {
        let r = &self.route.retries;
        match status {
            429 if r.on_429 => Some(RetryReason::RateLimited),
            502..=504 if r.on_5xx => Some(RetryReason::ServerError),
            _ => None,
        }
    }

    /// Whether `out`, having reached a backend and failed for `reason`, may
    /// be sent to the next candidate: connect errors always may; the rest
    /// only when the request may repeat and is held whole.
    pub fn may_repeat(&self, reason: RetryReason, out: &Outgoing) -> bool {
        match reason {
            RetryReason::Connect => true,
            RetryReason::RateLimited | RetryReason::ServerError => {
                out.retry_answers && out.replay.is_some()
            }
            RetryReason::Timeout | RetryReason::Reset | RetryReason::Hedge => {
                self.route.retries.on_5xx && out.retry_answers && out.replay.is_some()
            }
        }
    }

    /// Takes a retry from the budget, counting it; connect errors cost
    /// nothing, as no backend saw the request. `false`: stop here.
    pub fn admit(&self, reason: RetryReason, pool: &Pool) -> bool {
        let route = &self.route.name;
        if reason != RetryReason::Connect && !self.route.budget.try_retry(pool.recent_requests()) {
            metrics::counter!("switchyard_retry_budget_exhausted_total", "route" => route.clone())
                .increment(1);
            return false;
        }
        metrics::counter!("switchyard_retries_total", "route" => route.clone(), "reason" => reason.label())
            .increment(1);
        true
    }
}
