//! A hedging rule read from a router's config, so every router offers
//! hedged first tokens with the same keys:
//!
//! - `hedge_after = "150ms"`: hedge after a fixed delay;
//! - `hedge_ttfb_factor = 3.0`: hedge after that multiple of the first
//!   candidate's average time to first byte (about its p95 for the
//!   latencies model servers show), kept within `hedge_min` (default
//!   `"20ms"`) and `hedge_max` (default `"10s"`); no hedge while the
//!   backend has no average yet.
//!
//! Neither key: no hedging.

use crate::{BackendLoad, Config, Decision};
use alloc::string::String;

/// When to hedge a request, by its first candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Hedge {
    fixed_us: Option<u32>,
    factor: f64,
    min_us: u32,
    max_us: u32,
}

impl Hedge {
    /// The rule in `config`, `None` when it sets neither `hedge_after` nor
    /// `hedge_ttfb_factor`; `Err` names a bad or conflicting key.
    pub fn from_config(config: &Config) -> Result<Option<Hedge>, String> {
        let micros = |key: &str, default: u64| -> Result<u32, String> {
            let ms = config.millis(key)?.unwrap_or(default);
            u32::try_from(ms * 1000).map_err(|_| alloc::format!("{key}: at most 4294s"))
        };
        let fixed = config.millis("hedge_after")?;
        let factor: Option<f64> = config.parse("hedge_ttfb_factor")?;
        let rule = match (fixed, factor) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("set hedge_after or hedge_ttfb_factor, not both".into());
            }
            (Some(_), None) => Hedge {
                fixed_us: Some(micros("hedge_after", 0)?),
                factor: 0.0,
                min_us: 0,
                max_us: u32::MAX,
            },
            (None, Some(f)) if f.is_finite() && f >= 1.0 => Hedge {
                fixed_us: None,
                factor: f,
                min_us: micros("hedge_min", 20)?,
                max_us: micros("hedge_max", 10_000)?,
            },
            (None, Some(f)) => {
                return Err(alloc::format!(
                    "hedge_ttfb_factor must be at least 1, not {f}"
                ));
            }
        };
        if rule.min_us > rule.max_us {
            return Err("hedge_min must not exceed hedge_max".into());
        }
        Ok(Some(rule))
    }

    /// The delay for a request whose first candidate is `primary`, if it
    /// is to be hedged.
    pub fn after_us(&self, primary: &BackendLoad) -> Option<u32> {
        if let Some(us) = self.fixed_us {
            return Some(us);
        }
        if primary.ewma_ttfb_us == 0 {
            return None;
        }
        let us = f64::from(primary.ewma_ttfb_us) * self.factor;
        Some((us as u32).clamp(self.min_us, self.max_us))
    }

    /// `decision` hedged by this rule (a reject, or a forward whose first
    /// candidate is not in `backends`, stays as it is).
    pub fn apply(&self, decision: Decision, backends: &[BackendLoad]) -> Decision {
        let primary = decision
            .candidates()
            .and_then(|c| c.first())
            .and_then(|&id| backends.iter().find(|b| b.id == id));
        match primary.and_then(|p| self.after_us(p)) {
            Some(us) => decision.hedged(us),
            None => decision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pairs: &[(&str, &str)]) -> Result<Option<Hedge>, String> {
        Hedge::from_config(&Config::from_pairs(pairs))
    }

    #[test]
    fn fixed_and_ttfb_rules() {
        assert_eq!(rule(&[]), Ok(None));
        let mut b = BackendLoad::idle(1);
        let fixed = rule(&[("hedge_after", "150ms")]).unwrap().unwrap();
        assert_eq!(fixed.after_us(&b), Some(150_000));
        let factor = rule(&[("hedge_ttfb_factor", "3")]).unwrap().unwrap();
        assert_eq!(factor.after_us(&b), None, "no average yet");
        b.ewma_ttfb_us = 40_000;
        assert_eq!(factor.after_us(&b), Some(120_000));
        b.ewma_ttfb_us = 1_000;
        assert_eq!(factor.after_us(&b), Some(20_000), "hedge_min");
        b.ewma_ttfb_us = 9_000_000;
        assert_eq!(factor.after_us(&b), Some(10_000_000), "hedge_max");
        let d = factor.apply(Decision::forward([1, 0]), &[BackendLoad::idle(0), b]);
        assert_eq!(d.hedge_after_us(), Some(10_000_000));
        assert_eq!(
            factor
                .apply(Decision::reject(503, "x"), &[b])
                .hedge_after_us(),
            None
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(rule(&[("hedge_after", "1s"), ("hedge_ttfb_factor", "2")]).is_err());
        assert!(rule(&[("hedge_ttfb_factor", "0.5")]).is_err());
        assert!(rule(&[("hedge_ttfb_factor", "x")]).is_err());
        assert!(
            rule(&[
                ("hedge_ttfb_factor", "2"),
                ("hedge_min", "5s"),
                ("hedge_max", "1s")
            ])
            .is_err()
        );
    }
}
