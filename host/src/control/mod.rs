//! The control thread: runs each pool's health checks and circuit breakers
//! off the request path.
//!
//! Workers only read backend state (atomics) and post request outcomes here
//! without waiting. This thread owns the one instance of each pool's health
//! and breaker plugins, so a breaker sees the pool's whole traffic, from all
//! workers, in order. It probes backends, applies verdicts and breaker
//! updates to the shared state, and ends open periods on time.

mod breakers;
mod probe;

use breakers::{BreakerSlot, Want, on_breaker_due, on_outcome, reset_breakers, start_breaker};

use crate::balance::{OutcomeBatch, OutcomeReport};
use crate::plugin::BreakerPolicy;
use crate::pool::Pool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Batches of outcomes (each at most a few hundred) that may wait for the
/// control thread before new ones are dropped.
const QUEUE: usize = 4096;
/// A half-open backend whose trial requests brought no verdict within this
/// long is handed back to the breaker's `cool-down-ended`.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control thread is told besides outcomes.
pub enum ControlCommand {
    /// A new route table is in service: these are its pools.
    Apply(Vec<Arc<Pool>>),
    /// The proxy is shutting down.
    Stop,
}

/// The control thread's handle: its inbox, and the thread to join.
pub struct Control {
    /// Outcomes, bounded: workers never wait on it.
    tx: mpsc::Sender<OutcomeBatch>,
    /// Table changes and stop, unbounded: never lost, never blocking.
    commands: mpsc::UnboundedSender<ControlCommand>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Control {
    /// Starts the control thread.
    pub fn start() -> std::io::Result<Control> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("switchyard-control".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(
                            "control thread cannot start; health checks and breakers are off: {e}"
                        );
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run(rx, command_rx));
            })?;
        Ok(Control {
            tx,
            commands,
            thread: Some(thread),
        })
    }

    /// The inbox pools post their outcomes to.
    pub fn sender(&self) -> mpsc::Sender<OutcomeBatch> {
        self.tx.clone()
    }

    /// A handle that puts new tables' pools under control.
    pub fn link(&self) -> ControlLink {
        ControlLink {
            commands: self.commands.clone(),
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.commands.send(ControlCommand::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.commands.send(ControlCommand::Stop);
    }
}

/// Hands new route tables' pools to the control thread.
#[derive(Clone)]
pub struct ControlLink {
    commands: mpsc::UnboundedSender<ControlCommand>,
}

impl ControlLink {
    /// Puts a new table's pools under control: starts, keeps or stops their
    /// probes and breakers.
    pub fn apply(&self, pools: Vec<Arc<Pool>>) {
        if self.commands.send(ControlCommand::Apply(pools)).is_err() {
            tracing::error!("control thread is gone; health checks and breakers are off");
        }
    }
}

/// Events the control thread sends itself.
enum Timer {
    /// A breaker's open period may have ended, or its half-open one stalled.
    BreakerDue {
        pool: Arc<str>,
        /// The breaker, and what it wanted when the timer was set.
        policy: Arc<BreakerPolicy>,
        backend: u32,
        seq: u64,
    },
}

/// One pool under control.
struct Controlled {
    /// The pool's name, for timers.
    name: Arc<str>,
    pool: Arc<Pool>,
    breakers: Vec<BreakerSlot>,
    /// The combined state last applied to each backend.
    applied: Vec<Want>,
    /// Probe tasks, aborted when the pool's health setup changes.
    probes: Option<probe::Probes>,
}

async fn run(
    mut rx: mpsc::Receiver<OutcomeBatch>,
    mut commands: mpsc::UnboundedReceiver<ControlCommand>,
) {
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer>();
    let mut pools: HashMap<Arc<str>, Controlled> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(ControlCommand::Apply(new)) => apply(&mut pools, new),
                _ => break,
            },
            event = rx.recv() => match event {
                None => break,
                Some(batch) => {
                    for OutcomeReport { pool, state, outcome, timing } in batch {
                        if let Some(c) = pools.get_mut(&pool) {
                            on_outcome(c, &state, outcome, timing, &timer_tx);
                        }
                    }
                }
            },
            Some(Timer::BreakerDue { pool, policy, backend, seq }) = timers.recv() => {
                if let Some(c) = pools.get_mut(&pool) {
                    on_breaker_due(c, &policy, backend, seq, &timer_tx);
                }
            }
        }
    }
    for (_, c) in pools.drain() {
        if let Some(p) = c.probes {
            p.stop();
        }
    }
}

/// Reconciles the pools under control with a new table's: unchanged health
/// setups keep probing and unchanged breakers keep their counts.
fn apply(pools: &mut HashMap<Arc<str>, Controlled>, new: Vec<Arc<Pool>>) {
    let mut next = HashMap::new();
    for pool in new {
        let name: Arc<str> = pool.name.as_str().into();
        let before = pools.remove(&name);
        let (old_breakers, old_applied, old_probes) = match before {
            Some(c) => (c.breakers, c.applied, c.probes),
            None => (Vec::new(), Vec::new(), None),
        };
        let same = old_breakers.len() == pool.breakers.len()
            && old_breakers
                .iter()
                .zip(&pool.breakers)
                .all(|(old, new)| Arc::ptr_eq(&old.policy, new));
        let n = pool.backends.len();
        let (breakers, applied) = if same && old_applied.len() == n {
            (old_breakers, old_applied)
        } else {
            if !old_breakers.is_empty() {
                reset_breakers(&pool);
            }
            let slots = pool
                .breakers
                .iter()
                .map(|policy| BreakerSlot {
                    instance: start_breaker(policy),
                    policy: policy.clone(),
                    wants: vec![(Want::Closed, 0); n],
                })
                .collect();
            (slots, vec![Want::Closed; n])
        };
        let probes = match (&pool.health, old_probes) {
            (Some(_), Some(p)) if p.serves(&pool) => Some(p),
            (Some(_), old) => {
                if let Some(old) = old {
                    old.stop();
                }
                Some(probe::Probes::start(&pool))
            }
            (None, old) => {
                if let Some(old) = old {
                    old.stop();
                    for b in &pool.backends {
                        b.state.set_health(crate::balance::Health::Healthy, 0);
                    }
                }
                None
            }
        };
        next.insert(
            name.clone(),
            Controlled {
                name,
                pool,
                breakers,
                applied,
                probes,
            },
        );
    }
    // Pools no longer in the config.
    for (_, c) in pools.drain() {
        if let Some(p) = c.probes {
            p.stop();
        }
    }
    *pools = next;
}
