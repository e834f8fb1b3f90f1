//! A backend's live state as routers get it: the words of the interface's
//! `load-word` layout, each written at its case's number.

use crate::balance::LoadSnapshot;
use crate::plugin::{LOAD_WORDS, wit};

/// Appends one backend's live state to `out` in the interface's packed
/// layout (`load-word`).
pub fn push_load_words(out: &mut Vec<u32>, id: u32, s: &LoadSnapshot) {
    use crate::balance::{Breaker, Health};
    let split = |v: Option<u64>| {
        let v = v.unwrap_or(u64::MAX);
        [v as u32, (v >> 32) as u32]
    };
    let [rr_low, rr_high] = split(s.remaining_requests);
    let [rt_low, rt_high] = split(s.remaining_tokens);
    let health = match s.health {
        Health::Healthy => wit::Health::Healthy,
        Health::Degraded => wit::Health::Degraded,
        Health::Unhealthy => wit::Health::Unhealthy,
    };
    let breaker = match s.breaker {
        Breaker::Closed => wit::BreakerState::Closed,
        Breaker::Open => wit::BreakerState::Open,
        Breaker::HalfOpen => wit::BreakerState::HalfOpen,
    };
    use wit::LoadWord as W;
    let mut words = [0u32; LOAD_WORDS];
    for (word, value) in [
        (W::Id, id),
        (W::InFlight, s.in_flight),
        (W::EwmaLatencyUs, s.ewma_latency_us),
        (W::EwmaTtfbUs, s.ewma_ttfb_us),
        (W::ErrorRate, u32::from(s.error_rate)),
        (W::Health, health as u32),
        (W::Breaker, breaker as u32),
        (W::LoadScore, u32::from(s.load_score)),
        (W::RemainingRequestsLow, rr_low),
        (W::RemainingRequestsHigh, rr_high),
        (W::RemainingTokensLow, rt_low),
        (W::RemainingTokensHigh, rt_high),
        (W::QuotaResetMs, s.quota_reset_ms),
    ] {
        words[word as usize] = value;
    }
    out.extend_from_slice(&words);
}
