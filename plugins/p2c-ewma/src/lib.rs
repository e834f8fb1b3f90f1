//! Power of two choices over latency: pick two usable backends at random and
//! send the request to the one with the lower cost, where cost is the latency
//! average times the requests in flight, raised by the error rate so a
//! backend that fails fast does not look fast.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

/// How much a 100 % error rate multiplies a backend's cost.
const ERROR_PENALTY: u64 = 20;

pub struct P2cEwma;

/// Cost of sending one more request to `b`; `unseen` stands in for the
/// latency of a backend with no history yet.
fn cost(b: &BackendLoad, unseen: u64) -> u64 {
    let latency = if b.ewma_latency_us == 0 {
        unseen
    } else {
        u64::from(b.ewma_latency_us)
    };
    let errors = 1000 + ERROR_PENALTY * u64::from(b.error_rate.min(1000));
    latency.max(1) * (u64::from(b.in_flight) + 1) * errors / 1000
}

impl Router for P2cEwma {
    fn init(_route: &str, _config: &Config) -> Result<Self, String> {
        Ok(P2cEwma)
    }

    fn route(&mut self, _request: &Request, backends: &[BackendLoad]) -> Decision {
        let usable = || backends.iter().filter(|b| b.is_usable());
        let n = usable().count();
        if n < 3 {
            let unseen = usable()
                .map(|b| u64::from(b.ewma_latency_us))
                .filter(|&l| l > 0)
                .min()
                .unwrap_or(1);
            return Decision::forward_to(Candidates::lowest_by_key(usable(), 4, |b| {
                cost(b, unseen)
            }));
        }
        // Optimistic about new backends, so they get probed.
        let unseen = usable()
            .map(|b| u64::from(b.ewma_latency_us))
            .filter(|&l| l > 0)
            .min()
            .unwrap_or(1);
        let r = host::random();
        let first = (r % n as u64) as usize;
        let second = (first + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
        let a = usable().nth(first);
        let b = usable().nth(second);
        let mut candidates =
            Candidates::lowest_by_key(a.into_iter().chain(b), 2, |b| cost(b, unseen));
        // The best of the rest as further fallbacks.
        candidates.extend_lowest_by_key(usable(), 2, |b| cost(b, unseen));
        candidates.into_decision()
    }
}

export_router!(P2cEwma);

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(latencies: &[u32]) -> Vec<BackendLoad> {
        latencies
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let mut b = BackendLoad::idle(i as u32);
                b.ewma_latency_us = l;
                b
            })
            .collect()
    }

    #[test]
    fn the_slow_backend_loses_every_duel() {
        let mut r = P2cEwma;
        let loads = loads(&[200_000, 1_000, 1_200]);
        for _ in 0..200 {
            let d = r.route(&Request::new(&[]), &loads);
            assert_ne!(d.candidates().unwrap()[0], 0);
        }
    }

    #[test]
    fn errors_make_a_fast_backend_expensive() {
        let mut fast_failing = BackendLoad::idle(0);
        fast_failing.ewma_latency_us = 100;
        fast_failing.error_rate = 500;
        let mut healthy = BackendLoad::idle(1);
        healthy.ewma_latency_us = 800;
        assert!(cost(&fast_failing, 1) > cost(&healthy, 1));
        let d = P2cEwma.route(&Request::new(&[]), &[fast_failing, healthy]);
        assert_eq!(d.candidates().unwrap(), [1, 0]);
    }
}
