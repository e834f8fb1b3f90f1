//! Smooth weighted round robin: each backend receives its weight's share of
//! requests, interleaved rather than in bursts (weights 9:1 give nine
//! requests to one backend for every one to the other, spread out). The
//! "90 % local model, 10 % premium" canary is this router with weights 9 and 1.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

/// Weights by backend id, and each backend's running credit.
pub struct Weighted {
    weights: Vec<i64>,
    credit: Vec<i64>,
}

impl Router for Weighted {
    fn init(_route: &str, _config: &Config) -> Result<Self, String> {
        Ok(Weighted {
            weights: Vec::new(),
            credit: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.weights = backends.iter().map(|b| i64::from(b.weight)).collect();
        self.credit = vec![0; backends.len()];
    }

    fn route(&mut self, _request: &Request, backends: &[BackendLoad]) -> Decision {
        // Every usable backend earns its weight; the richest is picked and
        // pays the total back. Unusable backends neither earn nor pay.
        let mut total = 0;
        for b in backends.iter().filter(|b| b.is_usable()) {
            let i = b.id as usize;
            let w = self.weights.get(i).copied().unwrap_or(1);
            if let Some(c) = self.credit.get_mut(i) {
                *c += w;
                total += w;
            }
        }
        let usable = backends.iter().filter(|b| b.is_usable());
        let by_credit = |b: &BackendLoad| {
            core::cmp::Reverse(self.credit.get(b.id as usize).copied().unwrap_or(0))
        };
        let candidates = Candidates::lowest_by_key(usable, 4, by_credit);
        if let Some(&first) = candidates.as_slice().first()
            && let Some(c) = self.credit.get_mut(first as usize)
        {
            *c -= total;
        }
        Decision::forward_to(candidates)
    }
}

export_router!(Weighted);

#[cfg(test)]
mod tests {
    use super::*;

    fn router(weights: &[u32]) -> Weighted {
        let mut r = Weighted::init("r", &Config::default()).unwrap();
        let infos: Vec<BackendInfo> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| BackendInfo {
                weight: w,
                ..BackendInfo::new(i as u32, "b", &[])
            })
            .collect();
        r.set_backends(&infos);
        r
    }

    #[test]
    fn ninety_ten_is_exact_and_interleaved() {
        let mut r = router(&[9, 1]);
        let loads: Vec<BackendLoad> = (0..2).map(BackendLoad::idle).collect();
        let picks: Vec<u32> = (0..20)
            .map(|_| r.route(&Request::new(&[]), &loads).candidates().unwrap()[0])
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 2);
        // Never two premium picks in a row.
        assert!(picks.windows(2).all(|w| w != [1, 1]), "{picks:?}");
    }

    #[test]
    fn unusable_backends_get_nothing() {
        let mut r = router(&[1, 1, 1]);
        let mut loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        loads[1].set_health(Health::Unhealthy);
        for _ in 0..6 {
            let d = r.route(&Request::new(&[]), &loads);
            assert!(!d.candidates().unwrap().contains(&1));
        }
    }
}
