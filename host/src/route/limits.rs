//! A route's protection against overload: the retry budget, admission
//! control (in-flight cap with a bounded wait queue), and the fallback
//! used when its pool has nothing usable.

use crate::balance::RollingWindow;
use crate::config::{FallbackConfig, LimitsConfig, RetryConfig};
use crate::pool::Pool;
use bytes::Bytes;
use http::HeaderValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Retries allowed as a share of recent requests, plus a floor: retries
/// can add at most that much load on top of the requests themselves, so a
/// failing pool is not hammered by retries of retries.
///
/// The requests are the pool's, counted by its backends' live state over the
/// same 10 s window, so a request that is not retried costs nothing here.
pub struct RetryBudget {
    retries: RollingWindow,
    ratio: f64,
    floor: u64,
}

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> RetryBudget {
        RetryBudget {
            retries: RollingWindow::default(),
            ratio: config.budget_ratio,
            floor: u64::from(config.budget_min_per_second) * RollingWindow::SECONDS,
        }
    }

    /// Takes one retry from the budget, if any is left; `requests` is the
    /// number of requests over the window.
    pub fn try_retry(&self, requests: u64) -> bool {
        let (retries, _) = self.retries.sums();
        let allowed = self.floor + (requests as f64 * self.ratio) as u64;
        if retries >= allowed {
            return false;
        }
        self.retries.add(1, 0);
        true
    }
}

/// Why admission refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The wait queue was full.
    QueueFull,
    /// The request waited its whole queue timeout.
    QueueTimeout,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::QueueTimeout => "queue_timeout",
        }
    }
}

/// A route's in-flight cap and wait queue, shared by all worker threads.
pub struct Admission {
    slots: Arc<Semaphore>,
    gauge: Arc<InFlightGauge>,
    waiting: AtomicU32,
    queue: u32,
    timeout: Duration,
    pub status: u16,
    pub retry_after: HeaderValue,
    queued: metrics::Gauge,
    refused: [metrics::Counter; 2],
}

/// `switchyard_route_in_flight`, refreshed whenever a slot is taken or
/// given back.
struct InFlightGauge {
    max: u32,
    gauge: metrics::Gauge,
}

impl InFlightGauge {
    fn publish(&self, slots: &Semaphore) {
        let used = self.max.saturating_sub(slots.available_permits() as u32);
        self.gauge.set(f64::from(used));
    }
}

impl Admission {
    pub fn new(route: &str, config: &LimitsConfig) -> Option<Admission> {
        if config.max_in_flight == 0 {
            return None;
        }
        let r = route.to_string();
        Some(Admission {
            slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            gauge: Arc::new(InFlightGauge {
                max: config.max_in_flight,
                gauge: metrics::gauge!("switchyard_route_in_flight", "route" => r.clone()),
            }),
            waiting: AtomicU32::new(0),
            queue: config.queue,
            timeout: config.queue_timeout,
            status: config.status,
            retry_after: HeaderValue::from(config.retry_after.as_secs().max(1)),
            queued: metrics::gauge!("switchyard_route_queue_depth", "route" => r.clone()),
            refused: [Refusal::QueueFull, Refusal::QueueTimeout].map(|reason| {
                metrics::counter!("switchyard_admission_refused_total", "route" => r.clone(), "reason" => reason.label())
            }),
        })
    }

    /// A slot for one request, waiting in the queue if the route is full.
    /// Keep the permit until the response body ends.
    pub async fn admit(&self) -> Result<Permit, Refusal> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = self.waiting.fetch_add(1, Relaxed);
                if waiting >= self.queue {
                    self.waiting.fetch_sub(1, Relaxed);
                    self.refused[0].increment(1);
                    return Err(Refusal::QueueFull);
                }
                self.queued.set(f64::from(waiting + 1));
                let waited =
                    tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await;
                let left = self.waiting.fetch_sub(1, Relaxed) - 1;
                self.queued.set(f64::from(left));
                match waited {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.refused[1].increment(1);
                        return Err(Refusal::QueueTimeout);
                    }
                }
            }
        };
        self.gauge.publish(&self.slots);
        Ok(Permit {
            permit: Some(permit),
            slots: self.slots.clone(),
            gauge: self.gauge.clone(),
        })
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Relaxed)
    }

    /// Requests holding a slot.
    pub fn in_flight(&self) -> u32 {
        self.gauge
            .max
            .saturating_sub(self.slots.available_permits() as u32)
    }
}

/// One admitted request's slot, given back when dropped.
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
    gauge: Arc<InFlightGauge>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.gauge.publish(&self.slots);
    }
}

/// What a route answers when its pool has nothing usable.
pub struct Fallback {
    /// Served by the built-in router first, if set.
    pub pool: Option<Arc<Pool>>,
    pub status: u16,
    pub body: Bytes,
    pub content_type: HeaderValue,
    pub retry_after: Option<HeaderValue>,
}

impl Fallback {
    pub fn new(config: &FallbackConfig, pool: Option<Arc<Pool>>) -> Fallback {
        let body = config.body.clone().unwrap_or_else(|| {
            "the service is temporarily unavailable; try again later\n".to_string()
        });
        Fallback {
            pool,
            status: config.status,
            body: Bytes::from(body),
            content_type: HeaderValue::from_str(&config.content_type)
                .unwrap_or(HeaderValue::from_static("text/plain")),
            retry_after: (!config.retry_after.is_zero())
                .then(|| HeaderValue::from(config.retry_after.as_secs().max(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_floor_then_a_share_of_requests() {
        let config = RetryConfig {
            budget_ratio: 0.5,
            budget_min_per_second: 0,
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(&config);
        assert!(!budget.try_retry(0), "no requests, no floor: no retry");
        assert!(budget.try_retry(4));
        assert!(budget.try_retry(4));
        assert!(!budget.try_retry(4), "half of 4 requests is 2 retries");
    }

    #[tokio::test]
    async fn admission_queues_then_refuses() {
        let config = LimitsConfig {
            max_in_flight: 1,
            queue: 1,
            queue_timeout: Duration::from_millis(50),
            status: 503,
            retry_after: Duration::from_secs(2),
        };
        let a = Admission::new("r", &config).unwrap();
        let first = a.admit().await.unwrap();
        assert_eq!(a.in_flight(), 1);
        // One waits (and times out); a second concurrent waiter is refused.
        let (waiter, refused) = tokio::join!(a.admit(), async {
            tokio::task::yield_now().await;
            a.admit().await.err()
        });
        assert_eq!(refused, Some(Refusal::QueueFull));
        assert_eq!(waiter.err(), Some(Refusal::QueueTimeout));
        drop(first);
        assert_eq!(a.in_flight(), 0);
        assert!(a.admit().await.is_ok());
    }
}
