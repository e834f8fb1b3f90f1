//! Rate-limit cool-down: a backend that answers 429 gets no traffic until
//! its `retry-after` has passed (or `default` when it sends none, capped at
//! `max`), then it is closed again. Nothing else opens it, so it sits apart
//! from health checks and error-rate breaking.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

pub struct RateLimitCooldown {
    default_ms: u64,
    max_ms: u64,
}

impl CircuitBreaker for RateLimitCooldown {
    fn init(_pool: &str, config: &Config) -> Result<Self, String> {
        let cooldown = RateLimitCooldown {
            default_ms: config.millis("default")?.unwrap_or(1_000),
            max_ms: config.millis("max")?.unwrap_or(60_000),
        };
        if cooldown.default_ms == 0 || cooldown.max_ms == 0 {
            return Err("default and max must be above zero".into());
        }
        Ok(cooldown)
    }

    fn record(&mut self, outcome: &Outcome) -> Option<BreakerUpdate> {
        if outcome.error != Some(ErrorKind::RateLimited) {
            return None;
        }
        let ms = outcome
            .retry_after_ms
            .map_or(self.default_ms, u64::from)
            .clamp(1, self.max_ms);
        Some(BreakerUpdate::Open(ms.min(u64::from(u32::MAX)) as u32))
    }

    fn cool_down_ended(&mut self, _backend: u32) -> BreakerUpdate {
        BreakerUpdate::Closed
    }
}

export_breaker!(RateLimitCooldown);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cools_down_for_retry_after_only_on_429() {
        let mut c = RateLimitCooldown::init("p", &Config::from_pairs(&[("max", "30s")])).unwrap();
        let mut limited = Outcome::with_status(0, 429);
        limited.retry_after_ms = Some(2000);
        assert_eq!(c.record(&limited), Some(BreakerUpdate::Open(2000)));
        limited.retry_after_ms = None;
        assert_eq!(c.record(&limited), Some(BreakerUpdate::Open(1000)));
        limited.retry_after_ms = Some(3_600_000);
        assert_eq!(c.record(&limited), Some(BreakerUpdate::Open(30_000)));
        assert_eq!(c.record(&Outcome::with_status(0, 503)), None);
        assert_eq!(c.record(&Outcome::with_status(0, 0)), None);
        assert_eq!(c.cool_down_ended(0), BreakerUpdate::Closed);
    }
}
