//! The control thread: runs each pool's health checks and circuit breakers
//! off the request path.
//!
//! Workers only read backend state (atomics) and post request outcomes here
//! without waiting. This thread owns the one instance of each pool's health
//! and breaker plugins, so a breaker sees the pool's whole traffic, from all
//! workers, in order. It probes backends, applies verdicts and breaker
//! updates to the shared state, and ends open periods on time.

mod probe;

use crate::balance::{BackendState, Breaker, Outcome, OutcomeReport, Timing};
use crate::plugin::{BreakerInstance, BreakerPolicy, wit};
use crate::pool::Pool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Outcomes that may wait for the control thread before new ones are dropped.
const QUEUE: usize = 65_536;
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
    tx: mpsc::Sender<OutcomeReport>,
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
    pub fn sender(&self) -> mpsc::Sender<OutcomeReport> {
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

/// What one breaker wants for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Closed,
    Open { until: Instant },
    HalfOpen(u32),
}

/// One of a pool's breakers: its instance, and its wish per backend. A
/// wish's sequence number lets a stale timer know it was overtaken.
struct BreakerSlot {
    policy: Arc<BreakerPolicy>,
    instance: Option<BreakerInstance>,
    wants: Vec<(Want, u64)>,
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
    mut rx: mpsc::Receiver<OutcomeReport>,
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
                Some(OutcomeReport { pool, state, outcome, timing }) => {
                    if let Some(c) = pools.get_mut(&pool) {
                        on_outcome(c, &state, outcome, timing, &timer_tx);
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

fn start_breaker(policy: &BreakerPolicy) -> Option<BreakerInstance> {
    match policy.instantiate() {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::error!(pool = %policy.spec.pool, "breaker plugin cannot start: {e}");
            None
        }
    }
}

/// Closes every breaker of `pool`: its breaker plugins are gone or replaced.
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
    let mut changed = false;
    for slot in &mut c.breakers {
        if let Some(Some(update)) = with_breaker(slot, |b| b.record_outcome(event)) {
            changed |= slot.want(&c.name, id, update, timers);
        }
    }
    if changed {
        combine(c, id);
    }
}

fn on_breaker_due(
    c: &mut Controlled,
    policy: &Arc<BreakerPolicy>,
    id: u32,
    seq: u64,
    timers: &mpsc::UnboundedSender<Timer>,
) {
    let Some(slot) = c
        .breakers
        .iter_mut()
        .find(|s| Arc::ptr_eq(&s.policy, policy))
    else {
        return;
    };
    if slot.wants.get(id as usize).is_none_or(|w| w.1 != seq) {
        return;
    }
    // Without a working plugin, one trial request decides.
    let update =
        with_breaker(slot, |b| b.cool_down_ended(id)).unwrap_or(wit::BreakerUpdate::HalfOpen(1));
    if slot.want(&c.name, id, update, timers) {
        combine(c, id);
    }
}

/// Calls a breaker instance, replacing it after a failure; `None` when
/// there is no working instance.
fn with_breaker<T>(
    slot: &mut BreakerSlot,
    call: impl FnOnce(&mut BreakerInstance) -> Result<T, crate::plugin::CallFailure>,
) -> Option<T> {
    let policy = &slot.policy;
    if slot.instance.is_none() {
        slot.instance = start_breaker(policy);
    }
    let instance = slot.instance.as_mut()?;
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
            slot.instance = None;
            None
        }
    }
}

impl BreakerSlot {
    /// Records the breaker's wish for backend `id` and sets the timer that
    /// asks it again: when an open period ends, or when half-open trials
    /// bring no verdict. Returns whether the wish changed anything.
    fn want(
        &mut self,
        pool: &Arc<str>,
        id: u32,
        update: wit::BreakerUpdate,
        timers: &mpsc::UnboundedSender<Timer>,
    ) -> bool {
        let Some((want, seq)) = self.wants.get_mut(id as usize) else {
            return false;
        };
        let (next, due) = match update {
            wit::BreakerUpdate::Closed => (Want::Closed, None),
            wit::BreakerUpdate::Open(ms) => {
                let after = Duration::from_millis(u64::from(ms));
                (
                    Want::Open {
                        until: Instant::now() + after,
                    },
                    Some(after),
                )
            }
            wit::BreakerUpdate::HalfOpen(n) => (Want::HalfOpen(n), Some(TRIAL_TIMEOUT)),
        };
        if next == Want::Closed && *want == Want::Closed {
            return false;
        }
        *want = next;
        *seq += 1;
        if let Some(after) = due {
            let timer = Timer::BreakerDue {
                pool: pool.clone(),
                policy: self.policy.clone(),
                backend: id,
                seq: *seq,
            };
            let timers = timers.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        true
    }
}

/// Applies the pool's breakers' combined wish for backend `id`: open while
/// any breaker wants it open (until the last one's period ends), else
/// half-open with the fewest trials any breaker admits, else closed.
fn combine(c: &mut Controlled, id: u32) {
    let Some(backend) = c.pool.backends.get(id as usize) else {
        return;
    };
    let wants = c.breakers.iter().filter_map(|s| s.wants.get(id as usize));
    let mut combined = Want::Closed;
    for &(want, _) in wants {
        combined = match (combined, want) {
            (Want::Open { until: a }, Want::Open { until: b }) => Want::Open { until: a.max(b) },
            (Want::Open { .. }, _) => combined,
            (_, Want::Open { .. }) => want,
            (Want::HalfOpen(a), Want::HalfOpen(b)) => Want::HalfOpen(a.min(b)),
            (Want::HalfOpen(_), Want::Closed) => combined,
            (Want::Closed, _) => want,
        };
    }
    let Some(applied) = c.applied.get_mut(id as usize) else {
        return;
    };
    // A repeated half-open wish re-arms its trials; the rest is idempotent.
    if combined == *applied && !matches!(combined, Want::HalfOpen(_)) {
        return;
    }
    *applied = combined;
    let state = &backend.state;
    let before = state.breaker();
    let (to, open_ms, trials) = match combined {
        Want::Closed => (Breaker::Closed, 0, 0),
        Want::Open { until } => (
            Breaker::Open,
            until.saturating_duration_since(Instant::now()).as_millis() as u64,
            0,
        ),
        Want::HalfOpen(n) => (Breaker::HalfOpen, 0, n),
    };
    state.set_breaker(to, open_ms, trials);
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
