//! A pool's circuit breakers on the control thread: each breaker's wish per
//! backend, fed by outcomes and timers, combined (the most restrictive
//! wins) into the state the data path enforces.

use super::{Controlled, TRIAL_TIMEOUT, Timer};
use crate::balance::{BackendState, Breaker, Outcome, Timing};
use crate::plugin::{BreakerInstance, BreakerPolicy, wit};
use crate::pool::Pool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What one breaker wants for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Closed,
    Open { until: Instant },
    HalfOpen(u32),
}

/// One of a pool's breakers: its instance, and its wish per backend. A
/// wish's sequence number lets a stale timer know it was overtaken.
pub(super) struct BreakerSlot {
    pub(super) policy: Arc<BreakerPolicy>,
    pub(super) instance: Option<BreakerInstance>,
    pub(super) wants: Vec<(Want, u64)>,
}

pub(super) fn start_breaker(policy: &BreakerPolicy) -> Option<BreakerInstance> {
    match policy.instantiate() {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::error!(pool = %policy.spec.pool, "breaker plugin cannot start: {e}");
            None
        }
    }
}

/// Closes every breaker of `pool`: its breaker plugins are gone or replaced.
pub(super) fn reset_breakers(pool: &Pool) {
    for b in &pool.backends {
        if b.state.breaker() != Breaker::Closed {
            b.state.set_breaker(Breaker::Closed, 0, 0);
            publish_breaker(&pool.name, &b.name, Breaker::Closed);
        }
    }
}

pub(super) fn on_outcome(
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

pub(super) fn on_breaker_due(
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
pub(super) fn with_breaker<T>(
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
pub(super) fn combine(c: &mut Controlled, id: u32) {
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
pub(super) fn publish_breaker(pool: &str, backend: &str, to: Breaker) {
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
pub(super) fn backend_id(pool: &Pool, state: &Arc<BackendState>) -> Option<u32> {
    pool.backends
        .iter()
        .find(|b| Arc::ptr_eq(&b.state, state))
        .map(|b| b.id)
}
