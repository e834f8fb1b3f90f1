//! Outcomes on their way to the control thread, gathered per worker thread
//! and sent as one batch per scheduler pass.
//!
//! One channel send per request woke the control thread once per request:
//! a futex wake and two context switches, several microseconds of CPU on
//! a busy worker. A worker that runs [`flusher`] instead collects the
//! outcomes its tasks post during one pass of its scheduler and sends them
//! together when the pass ends, so the breakers see every outcome within
//! that pass's time (microseconds under load, at once when idle). A thread
//! without a flusher (tests, the control thread itself) sends each outcome
//! on its own.

use super::OutcomeReport;
use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use tokio::sync::mpsc::Sender;

/// What the control thread receives: outcomes in the order they happened.
pub type OutcomeBatch = Vec<OutcomeReport>;

/// Outcomes past this many on one thread are sent at once, without waiting
/// for the pass to end.
const MAX_PENDING: usize = 256;

#[derive(Default)]
struct Outbox {
    /// Per channel (one per proxy in the process, in practice one), the
    /// outcomes not yet sent.
    pending: Vec<(Sender<OutcomeBatch>, OutcomeBatch)>,
    /// The flusher, waiting for the first outcome of a pass.
    flusher: Option<Waker>,
}

thread_local! {
    /// Set while this thread runs a [`flusher`].
    static OUTBOX: RefCell<Option<Outbox>> = const { RefCell::new(None) };
}

/// Posts `report` to `tx`: into this thread's outbox when it has one,
/// otherwise straight to the channel. Never waits; an outcome the control
/// thread has no room for is dropped and counted.
pub fn post(tx: &Sender<OutcomeBatch>, report: OutcomeReport) {
    let direct = OUTBOX.with_borrow_mut(|outbox| {
        let Some(outbox) = outbox else {
            return Some(report);
        };
        match outbox.pending.iter_mut().find(|(t, _)| t.same_channel(tx)) {
            Some((_, batch)) => batch.push(report),
            None => outbox.pending.push((tx.clone(), vec![report])),
        }
        let held = outbox.held();
        if held >= MAX_PENDING {
            send_all(outbox);
        } else if held == 1
            && let Some(w) = outbox.flusher.take()
        {
            w.wake();
        }
        None
    });
    if let Some(report) = direct {
        send(tx, vec![report]);
    }
}

fn send(tx: &Sender<OutcomeBatch>, batch: OutcomeBatch) {
    let n = batch.len();
    if tx.try_send(batch).is_err() {
        metrics::counter!("switchyard_breaker_outcomes_dropped_total").increment(n as u64);
    }
}

fn send_all(outbox: &mut Outbox) {
    for (tx, batch) in &mut outbox.pending {
        if !batch.is_empty() {
            send(tx, std::mem::take(batch));
        }
    }
}

impl Outbox {
    /// Outcomes not yet sent.
    fn held(&self) -> usize {
        self.pending.iter().map(|(_, batch)| batch.len()).sum()
    }
}

/// Gathers this thread's outcomes for as long as it runs: waits for the
/// first outcome of a pass, yields so the pass's other tasks run, then
/// sends what they posted. Run one per worker thread, on its `LocalSet`.
pub async fn flusher() {
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            if let Some(mut outbox) = OUTBOX.take() {
                send_all(&mut outbox);
            }
        }
    }
    if OUTBOX.with_borrow(Option::is_some) {
        return; // this thread has one already
    }
    OUTBOX.set(Some(Outbox::default()));
    let _installed = Installed;
    loop {
        poll_fn(|cx| {
            OUTBOX.with_borrow_mut(|outbox| {
                let outbox = outbox.as_mut().expect("installed");
                if outbox.held() > 0 {
                    Poll::Ready(())
                } else {
                    outbox.flusher = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        tokio::task::yield_now().await;
        OUTBOX.with_borrow_mut(|outbox| send_all(outbox.as_mut().expect("installed")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{BackendState, Outcome, Timing};
    use std::sync::Arc;

    fn report() -> OutcomeReport {
        OutcomeReport {
            pool: "p".into(),
            state: Arc::new(BackendState::default()),
            outcome: Outcome::Response(200),
            timing: Timing::default(),
        }
    }

    #[test]
    fn without_a_flusher_each_outcome_goes_alone() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        post(&tx, report());
        post(&tx, report());
        assert_eq!(rx.try_recv().expect("first").len(), 1);
        assert_eq!(rx.try_recv().expect("second").len(), 1);
    }

    #[test]
    fn a_pass_of_outcomes_goes_as_one_batch_and_none_is_lost() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        local.block_on(&runtime, async {
            let flusher = tokio::task::spawn_local(flusher());
            tokio::task::yield_now().await;
            // Ten tasks post in the same pass.
            let tasks: Vec<_> = (0..10)
                .map(|_| {
                    let tx = tx.clone();
                    tokio::task::spawn_local(async move { post(&tx, report()) })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            let first = rx.recv().await.expect("a batch");
            assert!(first.len() > 1, "outcomes of one pass went one by one");
            let mut seen = first.len();
            // More than a batch's worth at once goes out without waiting.
            for _ in 0..MAX_PENDING {
                post(&tx, report());
            }
            assert_eq!(rx.try_recv().expect("a full batch").len(), MAX_PENDING);
            post(&tx, report());
            flusher.abort();
            let _ = flusher.await;
            // Stopping the flusher sends what it held.
            while let Ok(batch) = rx.try_recv() {
                seen += batch.len();
            }
            assert_eq!(seen, 10 + 1);
        });
    }
}
