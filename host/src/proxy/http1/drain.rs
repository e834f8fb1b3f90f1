//! A worker's drain signal for its lean connections.
//!
//! An idle connection must notice at once that the proxy drains. Waiting
//! on the process-wide `watch` for it registers and unregisters a waiter
//! under a lock on every idle read, that is once per request; here each
//! connection keeps its task's waker in a slot of its own, refreshed only
//! when the waker changes, and the worker wakes them all when it stops.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Set once, when the worker stops accepting; shared by its connections.
#[derive(Default)]
pub struct Drain {
    started: Cell<bool>,
    wakers: RefCell<Slots>,
}

#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Drain {
    /// Starts the drain and wakes every connection that waits for it.
    pub fn start(&self) {
        self.started.set(true);
        let woken: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        woken.into_iter().for_each(Waker::wake);
    }

    /// A watcher for one connection.
    pub fn watch(self: &Rc<Drain>) -> Watcher {
        let mut slots = self.wakers.borrow_mut();
        let slot = slots.free.pop().unwrap_or_else(|| {
            slots.wakers.push(None);
            slots.wakers.len() - 1
        });
        Watcher {
            drain: self.clone(),
            slot,
        }
    }
}

/// One connection's view of its worker's [`Drain`]; gives its slot back
/// when dropped.
pub struct Watcher {
    drain: Rc<Drain>,
    slot: usize,
}

impl Watcher {
    /// Whether the drain has started.
    pub fn started(&self) -> bool {
        self.drain.started.get()
    }

    /// Ready once the drain has started; until then keeps `cx`'s waker.
    pub fn poll_started(&self, cx: &Context<'_>) -> Poll<()> {
        if self.started() {
            return Poll::Ready(());
        }
        let mut slots = self.drain.wakers.borrow_mut();
        let kept = &mut slots.wakers[self.slot];
        if !kept.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *kept = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut slots = self.drain.wakers.borrow_mut();
        slots.wakers[self.slot] = None;
        slots.free.push(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(flavor = "current_thread")]
    async fn every_waiting_connection_wakes_and_later_ones_see_it_started() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let drain = Rc::new(Drain::default());
                let waiting: Vec<_> = (0..3)
                    .map(|_| {
                        let watcher = drain.watch();
                        tokio::task::spawn_local(async move {
                            poll_fn(|cx| watcher.poll_started(cx)).await;
                        })
                    })
                    .collect();
                // A connection that came and went leaves its slot to the next.
                drop(drain.watch());
                tokio::task::yield_now().await;
                assert!(waiting.iter().all(|t| !t.is_finished()));
                drain.start();
                for task in waiting {
                    tokio::time::timeout(std::time::Duration::from_secs(5), task)
                        .await
                        .expect("woken")
                        .unwrap();
                }
                assert!(drain.watch().started());
                assert!(drain.wakers.borrow().wakers.len() <= 4);
            })
            .await;
    }
}
