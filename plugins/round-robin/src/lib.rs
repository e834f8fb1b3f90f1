//! Round robin: each request goes to the next usable backend in turn; the
//! ones after it are the fallbacks.
//!
//! Each worker thread runs its own instance and rotates on its own, starting
//! at a random backend, so over many requests the spread is even.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

/// Position of the next backend to serve.
pub struct RoundRobin {
    next: usize,
}

impl Router for RoundRobin {
    fn init(_route: &str, _config: &Config) -> Result<Self, String> {
        Ok(RoundRobin {
            next: host::random() as usize,
        })
    }

    fn route(&mut self, _request: &Request, backends: &[BackendLoad]) -> Decision {
        let n = backends.len();
        let start = if n == 0 { 0 } else { self.next % n };
        self.next = start + 1;
        // The next usable backend, and the three after it as fallbacks.
        let order = backends[start..].iter().chain(&backends[..start]);
        Decision::forward(order.filter(|b| b.is_usable()).map(|b| b.id).take(4))
    }
}

export_router!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_skips_unusable_backends() {
        let mut r = RoundRobin { next: 0 };
        let mut loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        let req = Request::new(&[]);
        let firsts: Vec<u32> = (0..4)
            .map(|_| r.route(&req, &loads).candidates().unwrap()[0])
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0]);
        loads[1].set_breaker(BreakerState::Open);
        assert_eq!(r.route(&req, &loads).candidates().unwrap(), [2, 0]);
        let loads: Vec<BackendLoad> = (0..9).map(BackendLoad::idle).collect();
        assert_eq!(r.route(&req, &loads).candidates().unwrap(), [2, 3, 4, 5]);
    }

    #[test]
    fn empty_pool_gives_no_candidates() {
        let mut r = RoundRobin::init("chat", &Config::default()).unwrap();
        assert!(
            r.route(&Request::new(&[]), &[])
                .candidates()
                .unwrap()
                .is_empty()
        );
    }
}
