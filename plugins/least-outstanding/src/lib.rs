//! Least outstanding requests: the backend with the fewest requests in
//! flight (across the whole proxy) first, then the lowest latency. Long agent
//! runs pile up on one backend under round robin; here a backend holding
//! slow requests gets no more while an idle one exists.
//!
//! Optionally hedged (`hedge_after` or `hedge_ttfb_factor`, see
//! [`switchyard_sdk::hedge`]): a request whose first backend is slow to
//! answer goes to the next one too.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::hedge::Hedge;
use switchyard_sdk::prelude::*;

/// Rotates the scan start so equally loaded backends share the work.
pub struct LeastOutstanding {
    turn: usize,
    hedge: Option<Hedge>,
}

impl Router for LeastOutstanding {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        Ok(LeastOutstanding {
            turn: host::random() as usize,
            hedge: Hedge::from_config(config)?,
        })
    }

    fn route(&mut self, _request: &Request, backends: &[BackendLoad]) -> Decision {
        self.turn = self.turn.wrapping_add(1);
        let (n, turn) = (backends.len(), self.turn);
        let usable = (0..n)
            .map(move |i| &backends[(i + turn) % n])
            .filter(|b| b.is_usable());
        let candidates = Candidates::lowest_by_key(usable, 4, |b| (b.in_flight, b.ewma_latency_us));
        let decision = Decision::forward_to(candidates);
        match &self.hedge {
            Some(hedge) => hedge.apply(decision, backends),
            None => decision,
        }
    }
}

export_router!(LeastOutstanding);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewest_in_flight_first_then_latency() {
        let mut r = LeastOutstanding {
            turn: 0,
            hedge: None,
        };
        let mut loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        loads[0].in_flight = 4;
        loads[1].in_flight = 1;
        loads[1].ewma_latency_us = 900;
        loads[2].in_flight = 1;
        loads[2].ewma_latency_us = 300;
        let d = r.route(&Request::new(&[]), &loads);
        assert_eq!(d.candidates().unwrap(), [2, 1, 0]);
        assert_eq!(d.hedge_after_us(), None);
    }

    #[test]
    fn hedges_after_a_multiple_of_the_first_backends_ttfb() {
        let config = Config::from_pairs(&[("hedge_ttfb_factor", "2.5")]);
        let mut r = LeastOutstanding {
            turn: 0,
            hedge: Hedge::from_config(&config).unwrap(),
        };
        let mut loads: Vec<BackendLoad> = (0..2).map(BackendLoad::idle).collect();
        loads[0].ewma_ttfb_us = 80_000;
        loads[1].in_flight = 1;
        let d = r.route(&Request::new(&[]), &loads);
        assert_eq!(
            (d.candidates().unwrap()[0], d.hedge_after_us()),
            (0, Some(200_000))
        );
    }
}
