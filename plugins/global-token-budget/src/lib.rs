//! Global token budget: each backend of the pool may use `tokens` tokens
//! (prompt plus completion, from the responses' `usage`) per `window`,
//! counted across every proxy replica in the shared store. Once a backend's
//! budget for the current window is spent, the breaker opens it until the
//! window ends, so routers send its traffic elsewhere and, with every
//! backend spent, the route's fallback answers.
//!
//! The budget is global because the count is: every replica adds its
//! responses' tokens to one counter per backend and window
//! (`<key>:<backend>:<window number>`), with windows aligned to the wall
//! clock so replicas agree on them. Four replicas share one budget instead
//! of getting four.
//!
//! When the shared store is unreachable, `on_unavailable` decides:
//! `local` (the default) enforces the budget on this replica's own counts,
//! `allow` lets traffic through uncounted. Either way requests keep flowing
//! and the outage is counted in the plugin counter `shared_unavailable`.
//!
//! Config: `tokens` (required), `window` (default `60s`), `key` (default
//! `token-budget:<pool>`), `on_unavailable`. A backend label
//! `token_budget` overrides `tokens` for that backend.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;
use switchyard_sdk::shared::SharedError;

/// What to do while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Enforce the budget on this replica's own counts.
    Local,
    /// Let traffic through without counting it.
    Allow,
}

struct Backend {
    name: String,
    budget: u64,
    /// This replica's own count in `window`, for `OnUnavailable::Local`.
    window: u64,
    local: u64,
}

pub struct GlobalTokenBudget {
    tokens: u64,
    window_ms: u64,
    key: String,
    on_unavailable: OnUnavailable,
    backends: Vec<Backend>,
}

impl GlobalTokenBudget {
    fn window_now(&self) -> (u64, u64) {
        let now = shared::wall_clock_ms();
        let window = now / self.window_ms;
        let left = (window + 1) * self.window_ms - now;
        (window, left)
    }

    fn counter_key(&self, backend: &str, window: u64) -> String {
        format!("{}:{backend}:{window}", self.key)
    }

    /// Open until the window ends, when `used` reaches the budget.
    fn verdict(used: u64, budget: u64, left_ms: u64) -> Option<BreakerUpdate> {
        (used >= budget).then(|| BreakerUpdate::Open(left_ms.clamp(1, u64::from(u32::MAX)) as u32))
    }

    fn unavailable(&self, e: &SharedError) {
        host::counter_add("shared_unavailable", 1);
        if let SharedError::Invalid(m) = e {
            host::warn(&format!("shared store refused a call: {m}"));
        }
    }
}

impl CircuitBreaker for GlobalTokenBudget {
    fn init(pool: &str, config: &Config) -> Result<Self, String> {
        let tokens = config
            .parse::<u64>("tokens")?
            .ok_or("`tokens` (the budget per backend and window) is required")?;
        let window_ms = config.millis("window")?.unwrap_or(60_000);
        if tokens == 0 || window_ms == 0 {
            return Err("tokens and window must be above zero".into());
        }
        let on_unavailable = match config.get_or("on_unavailable", "local") {
            "local" => OnUnavailable::Local,
            "allow" => OnUnavailable::Allow,
            other => {
                return Err(format!(
                    "on_unavailable {other:?}: expected \"local\" or \"allow\""
                ));
            }
        };
        let key = match config.get("key") {
            Some(k) => k.to_string(),
            None => format!("token-budget:{pool}"),
        };
        Ok(GlobalTokenBudget {
            tokens,
            window_ms,
            key,
            on_unavailable,
            backends: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.backends = backends
            .iter()
            .map(|b| Backend {
                name: b.name.clone(),
                budget: b
                    .labels
                    .iter()
                    .find(|(k, _)| k == "token_budget")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(self.tokens),
                window: 0,
                local: 0,
            })
            .collect();
    }

    fn record(&mut self, outcome: &Outcome) -> Option<BreakerUpdate> {
        let tokens = u64::from(outcome.prompt_tokens) + u64::from(outcome.completion_tokens);
        if tokens == 0 {
            return None;
        }
        let (window, left) = self.window_now();
        let key = self.counter_key(&self.backends.get(outcome.backend as usize)?.name, window);
        let ttl = (2 * self.window_ms).min(u64::from(u32::MAX)) as u32;
        let counted = shared::counter_add(&key, tokens as i64, ttl);
        let b = self.backends.get_mut(outcome.backend as usize)?;
        if b.window != window {
            b.window = window;
            b.local = 0;
        }
        b.local += tokens;
        let (local, budget) = (b.local, b.budget);
        host::counter_add("tokens_counted", tokens);
        match counted {
            Ok(used) => Self::verdict(used.max(0) as u64, budget, left),
            Err(e) => {
                self.unavailable(&e);
                match self.on_unavailable {
                    OnUnavailable::Local => Self::verdict(local, budget, left),
                    OnUnavailable::Allow => None,
                }
            }
        }
    }

    fn cool_down_ended(&mut self, backend: u32) -> BreakerUpdate {
        let (window, left) = self.window_now();
        let Some(b) = self.backends.get(backend as usize) else {
            return BreakerUpdate::Closed;
        };
        // Other replicas may have spent the new window's budget already.
        let used = match shared::counter_get(&self.counter_key(&b.name, window)) {
            Ok(used) => used.max(0) as u64,
            Err(e) => {
                self.unavailable(&e);
                0
            }
        };
        Self::verdict(used, b.budget, left).unwrap_or(BreakerUpdate::Closed)
    }
}

export_breaker!(GlobalTokenBudget);

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(pairs: &[(&str, &str)]) -> GlobalTokenBudget {
        let mut b = GlobalTokenBudget::init("models", &Config::from_pairs(pairs)).unwrap();
        let info = |id: u32, name: &str, labels: Vec<(String, String)>| BackendInfo {
            id,
            name: name.into(),
            address: "127.0.0.1:1".into(),
            weight: 1,
            labels,
        };
        b.set_backends(&[
            info(0, "fast", vec![]),
            info(1, "cheap", vec![("token_budget".into(), "50".into())]),
        ]);
        b
    }

    #[test]
    fn opens_until_the_window_ends_once_the_budget_is_spent() {
        shared::set_wall_clock_ms(Some(60_000 * 1000 + 15_000));
        let mut b = budget(&[("tokens", "100")]);
        let used = |p, c| Outcome::with_status(0, 200).tokens(p, c);
        assert_eq!(b.record(&used(30, 30)), None);
        assert_eq!(
            b.record(&Outcome::with_status(0, 200)),
            None,
            "no usage, no count"
        );
        assert_eq!(b.record(&used(20, 20)), Some(BreakerUpdate::Open(45_000)));
        // Still the same window: stays open.
        assert_eq!(b.cool_down_ended(0), BreakerUpdate::Open(45_000));
        // The next window starts with a fresh budget.
        shared::set_wall_clock_ms(Some(60_000 * 1001));
        assert_eq!(b.cool_down_ended(0), BreakerUpdate::Closed);
        // The label overrides the budget of `cheap`.
        let cheap = Outcome::with_status(1, 200).tokens(40, 10);
        assert_eq!(b.record(&cheap), Some(BreakerUpdate::Open(60_000)));
    }

    #[test]
    fn counts_what_other_replicas_added() {
        shared::set_wall_clock_ms(Some(7 * 60_000));
        let mut b = budget(&[("tokens", "100"), ("key", "shared-test")]);
        // Another replica spent 95 tokens of `fast` in this window.
        shared::counter_add("shared-test:fast:7", 95, 120_000).unwrap();
        let small = Outcome::with_status(0, 200).tokens(3, 2);
        assert_eq!(b.record(&small), Some(BreakerUpdate::Open(60_000)));
    }

    #[test]
    fn an_outage_falls_back_as_configured() {
        shared::set_wall_clock_ms(Some(3 * 60_000));
        shared::set_unavailable(true);
        let used = Outcome::with_status(0, 200).tokens(60, 60);
        let mut local = budget(&[("tokens", "100")]);
        assert_eq!(local.record(&used), Some(BreakerUpdate::Open(60_000)));
        assert_eq!(local.cool_down_ended(0), BreakerUpdate::Closed);
        let mut allow = budget(&[("tokens", "100"), ("on_unavailable", "allow")]);
        assert_eq!(allow.record(&used), None);
        shared::set_unavailable(false);
    }

    #[test]
    fn refuses_bad_config() {
        let init =
            |pairs: &[(&str, &str)]| GlobalTokenBudget::init("p", &Config::from_pairs(pairs));
        assert!(init(&[]).is_err());
        assert!(init(&[("tokens", "0")]).is_err());
        assert!(init(&[("tokens", "10"), ("on_unavailable", "maybe")]).is_err());
        assert!(init(&[("tokens", "10"), ("window", "10s")]).is_ok());
    }
}
