//! The in-process job store: each job's events in memory, delivered to
//! subscribers as they are appended, dropped when the job's time to live
//! has passed.

use super::{Delivery, Event, EventId, JobId, StoreError, unix_ms};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Jobs held at most; beyond it a new job is refused.
const MAX_JOBS: usize = 100_000;
/// Events one job holds at most.
const MAX_EVENTS: usize = 100_000;

#[derive(Default)]
pub(super) struct LocalJobs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<JobId, Job>,
    /// The last id given out: ids only grow, even if the clock steps back.
    last: EventId,
    last_sweep: Option<Instant>,
}

struct Job {
    events: Vec<Event>,
    subscribers: Vec<UnboundedSender<Delivery>>,
    expires: Instant,
}

impl LocalJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub(super) fn append(
        &self,
        id: &JobId,
        kind: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<EventId, StoreError> {
        let mut inner = self.lock();
        inner.sweep();
        let now = unix_ms();
        let event_id = if now > inner.last.ms {
            EventId { ms: now, seq: 0 }
        } else {
            EventId {
                ms: inner.last.ms,
                seq: inner.last.seq + 1,
            }
        };
        if !inner.jobs.contains_key(id) && inner.jobs.len() >= MAX_JOBS {
            return Err(StoreError::Refused(format!(
                "the in-process job store holds {MAX_JOBS} jobs"
            )));
        }
        let job = inner.jobs.entry(id.clone()).or_insert_with(|| Job {
            events: Vec::new(),
            subscribers: Vec::new(),
            expires: Instant::now(),
        });
        if job.events.len() >= MAX_EVENTS {
            return Err(StoreError::Refused(format!(
                "job {id} has {MAX_EVENTS} events"
            )));
        }
        let event = Event {
            id: event_id,
            kind: kind.to_string(),
            data: data.to_string(),
        };
        job.subscribers
            .retain(|tx| tx.send(Delivery::Event(event.clone())).is_ok());
        job.events.push(event);
        job.expires = Instant::now() + ttl;
        inner.last = event_id;
        Ok(event_id)
    }

    pub(super) fn keep(&self, id: &JobId, ttl: Duration) {
        if let Some(job) = self.lock().jobs.get_mut(id) {
            job.expires = Instant::now() + ttl;
        }
    }

    pub(super) fn read(&self, id: &JobId, after: Option<EventId>) -> Vec<Event> {
        let inner = self.lock();
        let Some(job) = inner.jobs.get(id).filter(|j| j.expires > Instant::now()) else {
            return Vec::new();
        };
        after_id(&job.events, after)
            .iter()
            .take(super::MAX_READ)
            .cloned()
            .collect()
    }

    pub(super) fn subscribe(
        &self,
        id: &JobId,
        after: Option<EventId>,
        tx: UnboundedSender<Delivery>,
    ) {
        let mut inner = self.lock();
        // A job not started yet (or expired) gets its events when they come.
        let job = inner.jobs.entry(id.clone()).or_insert_with(|| Job {
            events: Vec::new(),
            subscribers: Vec::new(),
            expires: Instant::now() + Duration::from_secs(60),
        });
        for event in after_id(&job.events, after) {
            if tx.send(Delivery::Event(event.clone())).is_err() {
                return;
            }
        }
        job.subscribers.push(tx);
    }
}

impl Inner {
    /// Drops expired jobs, at most once a second.
    fn sweep(&mut self) {
        let now = Instant::now();
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.jobs
            .retain(|_, job| job.expires > now || job.subscribers.iter().any(|s| !s.is_closed()));
    }
}

/// The events after `after`, all of them when `None`.
fn after_id(events: &[Event], after: Option<EventId>) -> &[Event] {
    match after {
        None => events,
        Some(after) => {
            let start = events.partition_point(|e| e.id <= after);
            &events[start..]
        }
    }
}
