//! Same client address, same backend: rendezvous hashing of the client IP
//! over the usable backends, the equivalent of nginx `ip_hash`. When a
//! backend goes away only its clients move, each to its next-ranked backend.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::hash::{combine, hash_bytes, name_hashes};
use switchyard_sdk::prelude::*;

pub struct ClientHash {
    /// Hash of each backend's name, by id.
    names: Vec<u64>,
}

impl Router for ClientHash {
    fn init(_route: &str, _config: &Config) -> Result<Self, String> {
        Ok(ClientHash { names: Vec::new() })
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.names = name_hashes(backends);
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        let client = match request.client_ip {
            IpAddress::V4(v4) => hash_bytes(&v4.to_be_bytes()),
            IpAddress::V6((hi, lo)) => {
                combine(hash_bytes(&hi.to_be_bytes()), hash_bytes(&lo.to_be_bytes()))
            }
        };
        let rank = |b: &BackendLoad| {
            core::cmp::Reverse(combine(
                client,
                self.names.get(b.id as usize).copied().unwrap_or(0),
            ))
        };
        let candidates =
            Candidates::lowest_by_key(backends.iter().filter(|b| b.is_usable()), 4, rank);
        Decision::forward_to(candidates)
    }
}

export_router!(ClientHash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_spread_and_stay() {
        let mut r = ClientHash::init("r", &Config::default()).unwrap();
        r.set_backends(
            &(0..3)
                .map(|i| BackendInfo::new(i, ["a", "b", "c"][i as usize], &[]))
                .collect::<Vec<_>>(),
        );
        let loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        let mut seen = [0u32; 3];
        for ip in 0..300u32 {
            let mut req = Request::new(&[]);
            req.client_ip = IpAddress::V4(0x0a00_0000 + ip);
            let first = r.route(&req, &loads).candidates().unwrap()[0];
            assert_eq!(r.route(&req, &loads).candidates().unwrap()[0], first);
            seen[first as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "{seen:?}");
    }
}
