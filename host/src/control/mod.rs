//! The control thread: runs each pool's health checks and circuit breaker
//! off the request path.
//!
//! Workers only read backend state (atomics) and post request outcomes here
//! without waiting. This thread owns the one instance of each pool's health
//! and breaker plugins, so a breaker sees the pool's whole traffic, from all
//! workers, in order. It probes backends, applies verdicts and breaker
//! updates to the shared state, and ends open periods on time.

mod probe;

use crate::balance::{BackendState, Breaker, ControlEvent, Outcome, Pool, Timing};
use crate::plugin::{BreakerInstance, BreakerPolicy, wit};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Outcomes that may wait for the control thread before new ones are dropped.
const QUEUE: usize = 65_536;
/// A half-open backend whose trial requests brought no verdict within this
/// long is handed back to the breaker's `cool-down-ended`.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The control thread's handle: its inbox, and the thread to join.
pub struct Control {
    /// Outcomes, bounded: workers never wait on it.
    tx: mpsc::Sender<ControlEvent>,
    /// Table changes and stop, unbounded: never lost, never blocking.
    commands: mpsc::UnboundedSender<ControlEvent>,
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
    pub fn sender(&self) -> mpsc::Sender<ControlEvent> {
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
        let _ = self.commands.send(ControlEvent::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.commands.send(ControlEvent::Stop);
    }
}

/// Hands new route tables' pools to the control thread.
#[derive(Clone)]
pub struct ControlLink {
    commands: mpsc::UnboundedSender<ControlEvent>,
}

impl ControlLink {
    /// Puts a new table's pools under control: starts, keeps or stops their
    /// probes and breakers.
    pub fn apply(&self, pools: Vec<Arc<Pool>>) {
        if self.commands.send(ControlEvent::Apply(pools)).is_err() {
            tracing::error!("control thread is gone; health checks and breakers are off");
        }
    }
}

/// Events the control thread sends itself.
enum Timer {
    /// An open period may have ended, or a half-open one stalled.
    BreakerDue {
        pool: Arc<str>,
        state: Arc<BackendState>,
        epoch: u64,
    },
}

/// One pool under control.
struct Controlled {
    pool: Arc<Pool>,
    breaker: Option<(Arc<BreakerPolicy>, Option<BreakerInstance>)>,
    /// Probe tasks, aborted when the pool's health setup changes.
    probes: Option<probe::Probes>,
}

async fn run(
    mut rx: mpsc::Receiver<ControlEvent>,
    mut commands: mpsc::UnboundedReceiver<ControlEvent>,
) {
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer>();
    let mut pools: HashMap<Arc<str>, Controlled> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(ControlEvent::Apply(new)) => apply(&mut pools, new),
                _ => break,
            },
            event = rx.recv() => match event {
                None | Some(ControlEvent::Stop) => break,
                Some(ControlEvent::Apply(new)) => apply(&mut pools, new),
                Some(ControlEvent::Outcome { pool, state, outcome, timing }) => {
                    if let Some(c) = pools.get_mut(&pool) {
                        on_outcome(c, &state, outcome, timing, &timer_tx);
                    }
                }
            },
            Some(Timer::BreakerDue { pool, state, epoch }) = timers.recv() => {
                if let Some(c) = pools.get_mut(&pool)
                    && state.breaker_epoch() == epoch
                {
                    on_breaker_due(c, &state, &timer_tx);
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
        let (old_breaker, old_probes) = match before {
            Some(c) => (c.breaker, c.probes),
            None => (None, None),
        };
        let breaker = match (&pool.breaker, old_breaker) {
            (Some(policy), Some((old, instance))) if Arc::ptr_eq(policy, &old) => {
                Some((old, instance))
            }
            (Some(policy), old) => {
                if old.is_some() {
                    reset_breakers(&pool);
                }
                Some((policy.clone(), start_breaker(policy)))
            }
            (None, old) => {
                if old.is_some() {
                    reset_breakers(&pool);
                }
                None
            }
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
            name,
            Controlled {
                pool,
                breaker,
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

fn start_breaker(policy: &BreakerPolicy) -> Option<BreakerInstance> {
    match policy.instantiate() {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::error!(pool = %policy.spec.pool, "breaker plugin cannot start: {e}");
            None
        }
    }
}

/// Closes every breaker of `pool`: its breaker plugin is gone or replaced.
fn reset_breakers(pool: &Pool) {
    for b in &pool.backends {
        if b.state.breaker() != Breaker::Closed {
            b.state.set_breaker(Breaker::Closed, 0, 0);
            publish_breaker(&pool.name, &b.name, Breaker::Closed);
        }
    }
}

fn on_outcome(
    c: &mut Controlled,
    state: &Arc<BackendState>,
    outcome: Outcome,
    timing: Timing,
    timers: &mpsc::UnboundedSender<Timer>,
) {
    let Some(id) = backend_id(&c.pool, state) else {
        return;
    };
    let (status, error) = match outcome {
        Outcome::Response(429) => (429, Some(wit::ErrorKind::RateLimited)),
        Outcome::Response(s) if s >= 500 => (s, Some(wit::ErrorKind::ServerError)),
        Outcome::Response(s) => (s, None),
        Outcome::ConnectError => (0, Some(wit::ErrorKind::Connect)),
        Outcome::Timeout => (0, Some(wit::ErrorKind::Timeout)),
        Outcome::Reset => (0, Some(wit::ErrorKind::Reset)),
    };
    let event = wit::Outcome {
        backend: id,
        status,
        latency_us: timing.latency_us,
        ttfb_us: timing.ttfb_us,
        error,
        retry_after_ms: timing
            .retry_after_ms
            .map(|ms| ms.min(u64::from(u32::MAX)) as u32),
        prompt_tokens: timing.prompt_tokens,
        completion_tokens: timing.completion_tokens,
    };
    let update = with_breaker(c, |b| b.record_outcome(event));
    if let Some(Some(update)) = update {
        apply_update(c, id, update, timers);
    }
}

fn on_breaker_due(
    c: &mut Controlled,
    state: &Arc<BackendState>,
    timers: &mpsc::UnboundedSender<Timer>,
) {
    let Some(id) = backend_id(&c.pool, state) else {
        return;
    };
    // Without a working plugin, one trial request decides.
    let update =
        with_breaker(c, |b| b.cool_down_ended(id)).unwrap_or(wit::BreakerUpdate::HalfOpen(1));
    apply_update(c, id, update, timers);
}

/// Calls the pool's breaker instance, replacing it after a failure; `None`
/// when there is no working instance.
fn with_breaker<T>(
    c: &mut Controlled,
    call: impl FnOnce(&mut BreakerInstance) -> Result<T, crate::plugin::CallFailure>,
) -> Option<T> {
    let (policy, slot) = c.breaker.as_mut()?;
    if slot.is_none() {
        *slot = start_breaker(policy);
    }
    let instance = slot.as_mut()?;
    let timer = policy.stats.start();
    let result = call(instance);
    policy.stats.finish(timer);
    match result {
        Ok(v) => Some(v),
        Err(failure) => {
            policy.stats.failed(failure.kind(), format!("{failure:?}"));
            metrics::counter!("switchyard_plugin_failures_total",
                "plugin" => policy.name().to_string(), "route" => format!("pool:{}", policy.spec.pool), "kind" => failure.kind())
            .increment(1);
            tracing::warn!(pool = %policy.spec.pool, plugin = %policy.name(),
                "breaker plugin call failed ({failure:?}); its instance is replaced");
            *slot = None;
            None
        }
    }
}

fn apply_update(
    c: &Controlled,
    id: u32,
    update: wit::BreakerUpdate,
    timers: &mpsc::UnboundedSender<Timer>,
) {
    let Some(backend) = c.pool.backends.get(id as usize) else {
        return;
    };
    let state = &backend.state;
    let before = state.breaker();
    let (to, open_ms, trials) = match update {
        wit::BreakerUpdate::Closed => (Breaker::Closed, 0, 0),
        wit::BreakerUpdate::Open(ms) => (Breaker::Open, u64::from(ms), 0),
        wit::BreakerUpdate::HalfOpen(n) => (Breaker::HalfOpen, 0, n),
    };
    if to == Breaker::Closed && before == Breaker::Closed {
        return;
    }
    let epoch = state.set_breaker(to, open_ms, trials);
    let pool: Arc<str> = c.pool.name.as_str().into();
    let due = match to {
        Breaker::Closed => None,
        Breaker::Open => Some(Duration::from_millis(open_ms)),
        Breaker::HalfOpen => Some(TRIAL_TIMEOUT),
    };
    if let Some(after) = due {
        let (timers, state) = (timers.clone(), state.clone());
        tokio::task::spawn_local(async move {
            tokio::time::sleep(after).await;
            let _ = timers.send(Timer::BreakerDue { pool, state, epoch });
        });
    }
    if before != to {
        match to {
            Breaker::Open => {
                tracing::warn!(pool = %c.pool.name, backend = %backend.name, "breaker opened for {open_ms} ms")
            }
            Breaker::HalfOpen => {
                tracing::info!(pool = %c.pool.name, backend = %backend.name, "breaker half-open, admitting {trials} trial requests")
            }
            Breaker::Closed => {
                tracing::info!(pool = %c.pool.name, backend = %backend.name, "breaker closed")
            }
        }
        publish_breaker(&c.pool.name, &backend.name, to);
    }
}

/// Exports a breaker change: the state gauge and the transition counter.
fn publish_breaker(pool: &str, backend: &str, to: Breaker) {
    let label = match to {
        Breaker::Closed => "closed",
        Breaker::Open => "open",
        Breaker::HalfOpen => "half-open",
    };
    metrics::gauge!("switchyard_breaker_state", "pool" => pool.to_string(), "backend" => backend.to_string())
        .set(f64::from(to as u8));
    metrics::counter!("switchyard_breaker_transitions_total",
        "pool" => pool.to_string(), "backend" => backend.to_string(), "to" => label)
    .increment(1);
}

/// The id of the backend whose state is `state` in `pool`.
fn backend_id(pool: &Pool, state: &Arc<BackendState>) -> Option<u32> {
    pool.backends
        .iter()
        .find(|b| Arc::ptr_eq(&b.state, state))
        .map(|b| b.id)
}
