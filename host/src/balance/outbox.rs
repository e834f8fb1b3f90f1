//! Outcomes on their way to the control thread, gathered per worker thread
//! and sent in batches.
//!
//! One channel send per request woke the control thread once per request:
//! an eventfd write and two context switches, several microseconds of CPU
//! on a busy worker. A worker that runs [`flusher`] instead collects the
//! outcomes its tasks post and sends them together:
//! - successes wait at most [`HOLD`], so under load the control thread
//!   wakes about once a millisecond, not once per scheduler pass (measured
//!   at ~3,700 wakes a second at 76k req/s before);
//! - a failure, a 4xx, or any outcome of a backend whose breaker is not
//!   closed goes at the end of the current pass with everything held before
//!   it, so a breaker trips, and a half-open trial closes it, as promptly as
//!   before.
//!
//! A thread without a flusher (tests, the control thread itself) sends each
//! outcome on its own.

use super::{Breaker, Outcome, OutcomeReport};
use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::sync::mpsc::Sender;
use tokio::time::Sleep;

/// What the control thread receives: outcomes in the order they happened.
pub type OutcomeBatch = Vec<OutcomeReport>;

/// Outcomes past this many on one thread are sent at once, without waiting
/// for the pass to end.
const MAX_PENDING: usize = 256;

/// Longest a success waits for company before it is sent.
pub const HOLD: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Outbox {
    /// Per channel (one per proxy in the process, in practice one), the
    /// outcomes not yet sent.
    pending: Vec<(Sender<OutcomeBatch>, OutcomeBatch)>,
    /// An outcome held now must go at the end of the pass.
    urgent: bool,
    /// The flusher, waiting for the first outcome or for an urgent one.
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
    let urgent = is_urgent(&report);
    let direct = OUTBOX.with_borrow_mut(|outbox| {
        let Some(outbox) = outbox else {
            return Some(report);
        };
        match outbox.pending.iter_mut().find(|(t, _)| t.same_channel(tx)) {
            Some((_, batch)) => batch.push(report),
            None => outbox.pending.push((tx.clone(), vec![report])),
        }
        let news = (urgent && !outbox.urgent) || outbox.held() == 1;
        outbox.urgent |= urgent;
        if outbox.held() >= MAX_PENDING {
            send_all(outbox);
        } else if news && let Some(w) = outbox.flusher.take() {
            w.wake();
        }
        None
    });
    if let Some(report) = direct {
        send(tx, vec![report]);
    }
}

/// Whether the control thread should see `report` within this pass: it can
/// change a breaker's state.
fn is_urgent(report: &OutcomeReport) -> bool {
    !matches!(report.outcome, Outcome::Response(status) if status < 400)
        || report.state.breaker() != Breaker::Closed
}

fn send(tx: &Sender<OutcomeBatch>, batch: OutcomeBatch) {
    let n = batch.len();
    if tx.try_send(batch).is_err() {
        metrics::counter!("switchyard_breaker_outcomes_dropped_total").increment(n as u64);
    }
}

fn send_all(outbox: &mut Outbox) {
    outbox.urgent = false;
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
/// first outcome, then for an urgent one or [`HOLD`], yields so the pass's
/// other tasks run, then sends what they posted. Run one per worker
/// thread, on its `LocalSet`.
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
        wait_until(|outbox| outbox.held() > 0, None).await;
        // Ends early on an urgent outcome, or when a pass that posted more
        // than a batch has sent it already.
        let hold = pin!(tokio::time::sleep(HOLD));
        wait_until(|outbox| outbox.urgent || outbox.held() == 0, Some(hold)).await;
        tokio::task::yield_now().await;
        with_outbox(send_all);
    }
}

fn with_outbox<R>(f: impl FnOnce(&mut Outbox) -> R) -> R {
    OUTBOX.with_borrow_mut(|outbox| f(outbox.as_mut().expect("installed")))
}

/// Waits until `ready` holds of this thread's outbox, or `hold` ends;
/// `post` wakes the flusher on the first outcome and on the first urgent
/// one.
async fn wait_until(ready: impl Fn(&Outbox) -> bool, mut hold: Option<Pin<&mut Sleep>>) {
    poll_fn(|cx| {
        if let Some(hold) = hold.as_mut()
            && hold.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(());
        }
        with_outbox(|outbox| {
            if ready(outbox) {
                Poll::Ready(())
            } else {
                outbox.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{BackendState, Outcome, Timing};
    use std::sync::Arc;

    fn report() -> OutcomeReport {
        with_outcome(Outcome::Response(200))
    }

    fn with_outcome(outcome: Outcome) -> OutcomeReport {
        OutcomeReport {
            pool: "p".into(),
            state: Arc::new(BackendState::default()),
            outcome,
            timing: Timing::default(),
        }
    }

    async fn yields(n: usize) {
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn successes_wait_for_the_hold_and_what_can_move_a_breaker_goes_in_its_pass() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        local.block_on(&runtime, async {
            let flusher = tokio::task::spawn_local(flusher());
            yields(2).await;
            post(&tx, report());
            yields(8).await;
            assert!(rx.try_recv().is_err(), "a success went before the hold");
            tokio::time::advance(HOLD).await;
            yields(8).await;
            assert_eq!(rx.try_recv().expect("after the hold").len(), 1);

            // Each kind that can change a breaker goes out in its pass, with
            // the successes held before it, in order.
            let open = Arc::new(BackendState::default());
            open.set_breaker(Breaker::HalfOpen, 0, 1);
            let urgent = [
                with_outcome(Outcome::Response(503)),
                with_outcome(Outcome::Response(429)),
                with_outcome(Outcome::Timeout),
                with_outcome(Outcome::ConnectError),
                with_outcome(Outcome::Reset),
                OutcomeReport {
                    state: open,
                    ..report()
                },
            ];
            for u in urgent {
                let expected = u.outcome;
                post(&tx, report());
                yields(2).await;
                post(&tx, u);
                yields(8).await;
                let batch = rx.try_recv().expect("within the pass");
                let got: Vec<_> = batch.iter().map(|r| r.outcome).collect();
                assert_eq!(got, [Outcome::Response(200), expected]);
            }
            flusher.abort();
            let _ = flusher.await;
        });
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
