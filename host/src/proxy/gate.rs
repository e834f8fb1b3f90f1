//! Writes gathered to the end of a scheduler pass.
//!
//! On loopback a write to a peer that sleeps in `epoll_wait` wakes it, and
//! on a virtual machine that wake-up (an inter-processor interrupt) costs
//! the writer several microseconds of kernel time. A peer that is still
//! busy with an earlier write needs no wake-up. So the writes that one
//! pass of the worker's scheduler produces should go out back to back,
//! not spread over the pass between other tasks' work: a task that is
//! about to write waits at the gate ([`pass`]), and the worker's
//! [`keeper`] opens it once every task ready in this pass has reached it
//! or gone to sleep.
//!
//! A thread without a keeper (tests, helper threads) passes at once.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
struct Gate {
    /// Tasks waiting for the gate to open, in arrival order.
    held: Vec<Waker>,
    /// The keeper, waiting for the first arrival.
    keeper: Option<Waker>,
    /// Times the gate has opened.
    opened: u64,
}

thread_local! {
    /// Set while this thread runs a [`keeper`].
    static GATE: RefCell<Option<Gate>> = const { RefCell::new(None) };
}

/// Waits until the gate opens: after the tasks already queued in this
/// scheduler pass have run. At once on a thread without a keeper.
pub async fn pass() {
    let mut ticket = None;
    poll_fn(|cx| {
        GATE.with_borrow_mut(|gate| {
            let Some(gate) = gate else {
                return Poll::Ready(());
            };
            match ticket {
                Some(t) if gate.opened != t => Poll::Ready(()),
                _ => {
                    ticket = Some(gate.opened);
                    gate.held.push(cx.waker().clone());
                    if let Some(keeper) = gate.keeper.take() {
                        keeper.wake();
                    }
                    Poll::Pending
                }
            }
        })
    })
    .await;
}

/// Opens the gate once per pass for as long as it runs: woken by the first
/// task to arrive, it is queued behind every task already ready, so when
/// it runs, they have all arrived or gone to sleep. Run one per worker
/// thread, on its `LocalSet`.
pub async fn keeper() {
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            // Nobody is left behind a gate that no longer opens.
            if let Some(gate) = GATE.take() {
                gate.held.into_iter().for_each(Waker::wake);
            }
        }
    }
    if GATE.with_borrow(Option::is_some) {
        return; // this thread has one already
    }
    GATE.set(Some(Gate::default()));
    let _installed = Installed;
    let mut open = Vec::new();
    poll_fn(|cx| {
        GATE.with_borrow_mut(|gate| {
            let gate = gate.as_mut().expect("installed");
            if !gate.held.is_empty() {
                gate.opened = gate.opened.wrapping_add(1);
                std::mem::swap(&mut gate.held, &mut open);
            }
            gate.keeper = Some(cx.waker().clone());
        });
        // Woken outside the borrow: a waker may run code that arrives.
        open.drain(..).for_each(Waker::wake);
        Poll::<()>::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Runs `f` as a task of a worker-like `LocalSet`, so it queues with
    /// the tasks it spawns.
    fn run(f: impl std::future::Future<Output = ()> + 'static) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let task = local.spawn_local(f);
        local.block_on(&runtime, task).expect("test task");
    }

    #[test]
    fn tasks_ready_in_one_pass_all_arrive_before_any_goes_on() {
        run(async {
            tokio::task::spawn_local(keeper());
            let log = Rc::new(RefCell::new(Vec::new()));
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let log = log.clone();
                    tokio::task::spawn_local(async move {
                        log.borrow_mut().push(("arrived", i));
                        pass().await;
                        log.borrow_mut().push(("passed", i));
                        // A second write in a later pass waits again.
                        pass().await;
                        log.borrow_mut().push(("again", i));
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            let log = log.borrow();
            let kinds: Vec<_> = log.iter().map(|(k, _)| *k).collect();
            let expected: Vec<_> = ["arrived", "passed", "again"]
                .iter()
                .flat_map(|k| std::iter::repeat_n(*k, 8))
                .collect();
            assert_eq!(kinds, expected, "{log:?}");
            // In arrival order each time.
            for chunk in log.chunks(8) {
                let ids: Vec<_> = chunk.iter().map(|(_, i)| *i).collect();
                assert_eq!(ids, (0..8).collect::<Vec<_>>());
            }
        });
    }

    #[test]
    fn without_a_keeper_the_gate_is_open() {
        run(async {
            let passed = tokio::time::timeout(std::time::Duration::from_secs(5), pass()).await;
            assert!(passed.is_ok());
        });
    }

    /// Goes to the back of the queue once (`yield_now` waits for the
    /// driver, after which the keeper may have run).
    async fn requeue() {
        let mut queued = false;
        poll_fn(|cx| {
            if queued {
                return Poll::Ready(());
            }
            queued = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }

    #[test]
    fn a_keeper_that_stops_lets_its_waiting_tasks_go() {
        run(async {
            let keeper = tokio::task::spawn_local(keeper());
            requeue().await;
            let waiting = tokio::task::spawn_local(pass());
            // The waiting task arrives and wakes the keeper, which stops
            // before it runs.
            requeue().await;
            assert!(GATE.with_borrow(|g| g.as_ref().is_some_and(|g| g.held.len() == 1)));
            keeper.abort();
            assert!(keeper.await.expect_err("aborted").is_cancelled());
            assert!(GATE.with_borrow(Option::is_none));
            let passed = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
            assert!(matches!(passed, Ok(Ok(()))));
        });
    }
}
