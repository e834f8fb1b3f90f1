//! Latency-aware least-loaded routing, in the manner of linkerd's peak-EWMA
//! balancer, made to hold on agent traffic where request sizes differ by a
//! hundred times.
//!
//! A backend's cost is its requests in flight plus the one to send, plus
//! a penalty for being slower than the fastest usable backend, raised by
//! its error rate:
//!
//! ```text
//! cost = (in_flight + 1 + slowness) x (1 + 20 x error share)
//! slowness = (latency / fastest latency - 1), at most latency_weight
//! ```
//!
//! The latency is a backend's typical speed: the host's decaying average
//! of time to first byte (the prefill of a streamed answer; a whole answer
//! otherwise), followed through its lows. The average alone jumps whenever
//! a long agent run ends, on fast and slow backends alike; its floor, kept
//! here per backend and let rise by 1/256 a decision (so it doubles in
//! about 180 decisions if a backend really slows down), tells a backend
//! that is slower at every request from one that just served a long one. The bound on the penalty is what makes this hold under a
//! mix of seconds-long agent runs and short calls: a backend that just
//! finished a long run has a high average for a while though it is free,
//! and a cost that multiplies load by latency (the textbook peak-EWMA)
//! would then send short calls to a busier backend, behind its long runs.
//! With `latency_weight` below 1 (the default, 0.9), in flight counts
//! decide and latency breaks their ties: a slower backend gets a request
//! only when it has fewer in flight. Above 1, latency may outweigh load,
//! which suits pools of similar requests on unequal hardware.
//!
//! Pools of up to `scan_below` usable backends (default 16) are compared
//! whole; larger ones by the power of two random choices, the loser and the
//! two cheapest of the rest as fallbacks.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

/// How much a 100 % error rate multiplies a backend's cost.
const ERROR_PENALTY: u64 = 20;

pub struct P2cEwma {
    /// The most slowness adds to a backend's load, in thousandths of a
    /// request.
    latency_weight: u64,
    scan_below: usize,
    /// Each backend's latency floor, microseconds, by id; 0 = none yet.
    floors: Vec<u64>,
}

impl Default for P2cEwma {
    fn default() -> Self {
        P2cEwma {
            latency_weight: 900,
            scan_below: 16,
            floors: Vec::new(),
        }
    }
}

/// The latency figure of `b`: time to first byte, else whole response.
fn latency(b: &BackendLoad) -> u64 {
    u64::from(if b.ewma_ttfb_us > 0 {
        b.ewma_ttfb_us
    } else {
        b.ewma_latency_us
    })
}

impl P2cEwma {
    /// Follows each backend's average through its lows: the floor drops to
    /// a lower average at once and rises by 1/256 a decision.
    fn update_floors(&mut self, backends: &[BackendLoad]) {
        for b in backends {
            let id = b.id as usize;
            if id >= self.floors.len() {
                if id > 4096 {
                    continue;
                }
                self.floors.resize(id + 1, 0);
            }
            let now = latency(b);
            let floor = &mut self.floors[id];
            *floor = match (*floor, now) {
                (_, 0) => 0,
                (0, n) => n,
                (f, n) => n.min(f + f / 256 + 1),
            };
        }
    }

    /// The typical latency of `b`: its floor, else its average.
    fn typical(&self, b: &BackendLoad) -> u64 {
        match self.floors.get(b.id as usize) {
            Some(&f) if f > 0 => f,
            _ => latency(b),
        }
    }

    /// Cost of sending one more request to `b`, given the fastest usable
    /// backend's typical latency (`fastest`, 0 when none has one yet).
    fn cost(&self, b: &BackendLoad, fastest: u64) -> u64 {
        let slowness = match self.typical(b) {
            // New backends count as the fastest, so they get probed.
            0 => 0,
            _ if fastest == 0 => 0,
            l => (l * 1000 / fastest)
                .saturating_sub(1000)
                .min(self.latency_weight),
        };
        let errors = 1000 + ERROR_PENALTY * u64::from(b.error_rate.min(1000));
        ((u64::from(b.in_flight) + 1) * 1000 + slowness) * errors / 1000
    }
}

impl Router for P2cEwma {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let d = P2cEwma::default();
        let weight: f64 = config.parse("latency_weight")?.unwrap_or(0.9);
        if !(0.0..=100.0).contains(&weight) {
            return Err("latency_weight must be 0 to 100 (requests)".into());
        }
        let scan_below: usize = config.parse("scan_below")?.unwrap_or(d.scan_below);
        Ok(P2cEwma {
            latency_weight: (weight * 1000.0) as u64,
            scan_below,
            floors: Vec::new(),
        })
    }

    fn route(&mut self, _request: &Request, backends: &[BackendLoad]) -> Decision {
        self.update_floors(backends);
        let usable = || backends.iter().filter(|b| b.is_usable());
        let fastest = usable()
            .map(|b| self.typical(b))
            .filter(|&l| l > 0)
            .min()
            .unwrap_or(0);
        let n = usable().count();
        if n <= self.scan_below.max(2) {
            return Decision::forward_to(Candidates::lowest_by_key(usable(), 4, |b| {
                self.cost(b, fastest)
            }));
        }
        let r = host::random();
        let first = (r % n as u64) as usize;
        let second = (first + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
        let a = usable().nth(first);
        let b = usable().nth(second);
        let mut candidates =
            Candidates::lowest_by_key(a.into_iter().chain(b), 2, |b| self.cost(b, fastest));
        // The best of the rest as further fallbacks.
        candidates.extend_lowest_by_key(usable(), 2, |b| self.cost(b, fastest));
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

    fn first(r: &mut P2cEwma, loads: &[BackendLoad]) -> u32 {
        r.route(&Request::new(&[]), loads).candidates().unwrap()[0]
    }

    #[test]
    fn the_slow_backend_loses_every_duel() {
        let mut r = P2cEwma::default();
        let loads = loads(&[200_000, 1_000, 1_200]);
        for _ in 0..50 {
            assert_ne!(first(&mut r, &loads), 0);
        }
        // Also where pools are sampled, two at a time.
        let mut r = P2cEwma {
            scan_below: 2,
            ..P2cEwma::default()
        };
        for _ in 0..200 {
            assert_ne!(first(&mut r, &loads), 0);
        }
    }

    #[test]
    fn a_free_backend_with_a_long_runs_average_beats_a_busy_fast_one() {
        // b0 just finished a 3 s agent run: its average is high, it is free.
        // b1 is fast on average and has three requests in flight.
        let mut l = loads(&[600_000, 40_000]);
        l[1].in_flight = 3;
        assert_eq!(first(&mut P2cEwma::default(), &l), 0);
        // Weighted like load (as latency x load is), it would lose.
        let mut unbounded = P2cEwma {
            latency_weight: 100_000,
            ..P2cEwma::default()
        };
        assert_eq!(first(&mut unbounded, &l), 1);
    }

    #[test]
    fn latency_breaks_ties_of_load_and_a_weight_above_one_outweighs_it() {
        let mut l = loads(&[100_000, 40_000]);
        assert_eq!(
            first(&mut P2cEwma::default(), &l),
            1,
            "both idle: the faster"
        );
        l[1].in_flight = 1;
        assert_eq!(
            first(&mut P2cEwma::default(), &l),
            0,
            "fewer in flight wins"
        );
        let mut heavy =
            P2cEwma::init("r", &Config::from_pairs(&[("latency_weight", "2")])).unwrap();
        assert_eq!(first(&mut heavy, &l), 1, "1 + 1 against 0 + 1 + 1.5");
        l[1].in_flight = 2;
        assert_eq!(first(&mut heavy, &l), 0);
    }

    #[test]
    fn a_long_runs_spike_does_not_make_a_fast_backend_look_slow() {
        let mut r = P2cEwma::default();
        // Typical: b0 40 ms, b1 100 ms.
        let mut l = loads(&[40_000, 100_000]);
        first(&mut r, &l);
        // b0 just finished a 3 s run; its average jumps above b1's.
        l[0].ewma_latency_us = 600_000;
        l[1].in_flight = 1;
        l[0].in_flight = 1;
        assert_eq!(first(&mut r, &l), 0, "its floor is still 40 ms");
        // A backend that really slows down (15x) reaches its new speed in
        // about 700 decisions.
        for _ in 0..800 {
            first(&mut r, &l);
        }
        assert!(r.floors[0] >= 590_000, "{}", r.floors[0]);
    }

    #[test]
    fn time_to_first_byte_is_the_latency_when_known() {
        let mut l = loads(&[9_000_000, 100_000]);
        // A long stream whose first byte came fast.
        l[0].ewma_ttfb_us = 30_000;
        l[1].ewma_ttfb_us = 90_000;
        assert_eq!(first(&mut P2cEwma::default(), &l), 0);
    }

    #[test]
    fn errors_make_a_fast_backend_expensive() {
        let mut fast_failing = BackendLoad::idle(0);
        fast_failing.ewma_latency_us = 100;
        fast_failing.error_rate = 500;
        let mut healthy = BackendLoad::idle(1);
        healthy.ewma_latency_us = 800;
        let r = P2cEwma::default();
        assert!(r.cost(&fast_failing, 100) > r.cost(&healthy, 100));
        let d = P2cEwma::default().route(&Request::new(&[]), &[fast_failing, healthy]);
        assert_eq!(d.candidates().unwrap(), [1, 0]);
    }

    #[test]
    fn settings_are_checked() {
        assert!(P2cEwma::init("r", &Config::from_pairs(&[("latency_weight", "-1")])).is_err());
        let r = P2cEwma::init("r", &Config::from_pairs(&[("latency_weight", "3")])).unwrap();
        assert_eq!(r.latency_weight, 3000);
    }
}
