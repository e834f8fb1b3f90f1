//! Sticky sessions by rendezvous hashing: every backend gets a score from
//! the session key (a LangGraph `thread_id` header, a cookie) and its name;
//! the highest usable score wins, so a key stays on one backend and, when
//! that backend goes away, moves to its next-ranked backend and only there.
//! Bounded load: a backend above `load_factor` times the average load (and
//! above `min_load` requests in flight, so light traffic never moves keys) is
//! passed over. Requests without a key go to the least loaded backend.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::hash::{combine, hash_bytes, name_hashes};
use switchyard_sdk::prelude::*;

pub struct StickySession {
    interest: Interest,
    /// The session key's value.
    key: AttributeKey,
    /// Load bound in hundredths: 125 = 1.25 x average.
    load_factor: u64,
    /// In-flight requests a backend may always hold, whatever the average.
    min_load: u64,
    /// Hash of each backend's name, by id.
    names: Vec<u64>,
}

impl Router for StickySession {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let key = match (config.get("header"), config.get("cookie")) {
            (Some(h), None) => Attribute::Header(h.into()),
            (None, Some(c)) => Attribute::Cookie(c.into()),
            (None, None) => Attribute::Header("x-thread-id".into()),
            (Some(_), Some(_)) => return Err("set either `header` or `cookie`, not both".into()),
        };
        let factor: f64 = config.parse("load_factor")?.unwrap_or(1.25);
        if !(1.0..=100.0).contains(&factor) {
            return Err("`load_factor` must be at least 1.0".into());
        }
        let mut interest = Interest::new();
        let key = interest.add(key);
        Ok(StickySession {
            interest,
            key,
            load_factor: (factor * 100.0) as u64,
            min_load: config.parse("min_load")?.unwrap_or(2),
            names: Vec::new(),
        })
    }

    fn interest(&self) -> Vec<Attribute> {
        self.interest.to_list()
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.names = name_hashes(backends);
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        let usable = || backends.iter().filter(|b| b.is_usable());
        let Some(key) = request.get(self.key) else {
            return Decision::forward_to(Candidates::lowest_by_key(usable(), 4, |b| b.in_flight));
        };
        let key = hash_bytes(key.as_bytes());
        let rank = |b: &BackendLoad| {
            core::cmp::Reverse(combine(
                key,
                self.names.get(b.id as usize).copied().unwrap_or(0),
            ))
        };
        // Bound: ceil(factor x (load + this request) / backends).
        let n = usable().count() as u64;
        let load: u64 = usable().map(|b| u64::from(b.in_flight)).sum();
        let bound = (self.load_factor * (load + 1)).div_ceil(100 * n.max(1));
        let within = |b: &&BackendLoad| u64::from(b.in_flight) < bound.max(self.min_load).max(1);
        let mut candidates = Candidates::lowest_by_key(usable().filter(within), 2, rank);
        candidates.extend_lowest_by_key(usable(), 2, rank);
        candidates.into_decision()
    }
}

export_router!(StickySession);

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> StickySession {
        let mut r = StickySession::init("r", &Config::default()).unwrap();
        r.set_backends(
            &(0..4)
                .map(|i| BackendInfo::new(i, ["a", "b", "c", "d"][i as usize], &[]))
                .collect::<Vec<_>>(),
        );
        r
    }

    #[test]
    fn a_key_stays_and_hands_over_to_its_next_ranked() {
        let mut r = router();
        let mut loads: Vec<BackendLoad> = (0..4).map(BackendLoad::idle).collect();
        let req = Request::new(&[Some("thread-42")]);
        let ranking = r.route(&req, &loads).candidates().unwrap().to_vec();
        for _ in 0..20 {
            assert_eq!(r.route(&req, &loads).candidates().unwrap()[0], ranking[0]);
        }
        loads[ranking[0] as usize].set_health(Health::Unhealthy);
        for _ in 0..20 {
            assert_eq!(r.route(&req, &loads).candidates().unwrap()[0], ranking[1]);
        }
    }

    #[test]
    fn a_busy_backend_is_passed_over() {
        let mut r = router();
        let mut loads: Vec<BackendLoad> = (0..4).map(BackendLoad::idle).collect();
        let req = Request::new(&[Some("thread-7")]);
        let home = r.route(&req, &loads).candidates().unwrap()[0];
        loads[home as usize].in_flight = 6;
        loads[(home as usize + 1) % 4].in_flight = 2;
        // Average with this request: 9 / 4; bound ceil(1.25 x 9 / 4) = 3.
        assert_ne!(r.route(&req, &loads).candidates().unwrap()[0], home);
        // Light load never moves a key.
        let mut light: Vec<BackendLoad> = (0..4).map(BackendLoad::idle).collect();
        light[home as usize].in_flight = 1;
        assert_eq!(r.route(&req, &light).candidates().unwrap()[0], home);
    }
}
