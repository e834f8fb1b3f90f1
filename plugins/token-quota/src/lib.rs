//! Multi-region dispatch by remaining quota: each backend (a region, say)
//! reports its remaining tokens in `x-ratelimit-remaining-tokens`; the
//! primary is drawn with probability in proportion to what remains, so load
//! spreads by quota, and a backend at 0 gets nothing until its reported
//! reset. Backends that never reported count as `unknown_tokens`.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

pub struct TokenQuota {
    unknown_tokens: u64,
}

impl TokenQuota {
    /// Tokens `b` may still take; 0 while exhausted and before its reset.
    fn remaining(&self, b: &BackendLoad) -> u64 {
        let exhausted = |left: Option<u64>| left == Some(0) && b.quota_reset_ms > 0;
        if exhausted(b.remaining_tokens()) || exhausted(b.remaining_requests()) {
            return 0;
        }
        match b.remaining_tokens() {
            // A reported 0 whose reset has passed is stale.
            Some(0) | None => self.unknown_tokens,
            Some(left) => left,
        }
    }
}

impl Router for TokenQuota {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        Ok(TokenQuota {
            unknown_tokens: config.parse("unknown_tokens")?.unwrap_or(100_000),
        })
    }

    fn route(&mut self, _request: &Request, backends: &[BackendLoad]) -> Decision {
        let open = || {
            backends
                .iter()
                .filter(|b| b.is_usable() && self.remaining(b) > 0)
        };
        let total: u64 = open().map(|b| self.remaining(b)).sum();
        if total == 0 {
            return Decision::reject(
                429,
                "every backend's token quota is exhausted until its reset\n",
            );
        }
        let mut ticket = host::random() % total;
        let primary = open().find(|b| {
            let r = self.remaining(b);
            if ticket < r {
                return true;
            }
            ticket -= r;
            false
        });
        let mut candidates: Candidates = primary.map(|b| b.id).into_iter().collect();
        candidates.extend_lowest_by_key(open(), 3, |b| core::cmp::Reverse(self.remaining(b)));
        candidates.into_decision()
    }
}

export_router!(TokenQuota);

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u32, tokens: Option<u64>, reset_ms: u32) -> BackendLoad {
        let mut b = BackendLoad::idle(id);
        b.set_remaining_tokens(tokens);
        b.quota_reset_ms = reset_ms;
        b
    }

    #[test]
    fn exhausted_regions_get_nothing_until_reset() {
        let mut r = TokenQuota::init("r", &Config::default()).unwrap();
        let loads = [region(0, Some(0), 30_000), region(1, Some(5_000), 0)];
        for _ in 0..50 {
            assert_eq!(
                r.route(&Request::new(&[]), &loads).candidates().unwrap(),
                [1]
            );
        }
        let after_reset = [region(0, Some(0), 0), region(1, Some(5_000), 0)];
        let firsts: Vec<u32> = (0..200)
            .map(|_| {
                r.route(&Request::new(&[]), &after_reset)
                    .candidates()
                    .unwrap()[0]
            })
            .collect();
        assert!(firsts.contains(&0));
    }

    #[test]
    fn spread_follows_remaining_quota() {
        let mut r = TokenQuota::init("r", &Config::default()).unwrap();
        let loads = [region(0, Some(90_000), 0), region(1, Some(10_000), 0)];
        let to_first = (0..2000)
            .filter(|_| r.route(&Request::new(&[]), &loads).candidates().unwrap()[0] == 0)
            .count();
        assert!((1650..=1950).contains(&to_first), "{to_first}");
    }

    #[test]
    fn all_exhausted_answers_429() {
        let mut r = TokenQuota::init("r", &Config::default()).unwrap();
        let d = r.route(&Request::new(&[]), &[region(0, Some(0), 1000)]);
        assert!(matches!(d, Decision::Reject { status: 429, .. }));
    }
}
