//! An ordered preference list: the first usable backend of `order` serves,
//! the next ones are its fallbacks (local model first, then provider A, then
//! provider B). Backends not in the list get no traffic.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

pub struct FallbackChain {
    order: Vec<String>,
    /// Backend ids in preference order, resolved from names.
    chain: Vec<u32>,
}

impl Router for FallbackChain {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let order: Vec<String> = config.list("order").map(String::from).collect();
        if order.is_empty() {
            return Err("config key `order` must list backend names, e.g. order = [\"local\", \"provider-a\"]".into());
        }
        Ok(FallbackChain {
            order,
            chain: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.chain = self
            .order
            .iter()
            .filter_map(|name| backends.iter().find(|b| &b.name == name))
            .map(|b| b.id)
            .collect();
        for name in self
            .order
            .iter()
            .filter(|n| !backends.iter().any(|b| &&b.name == n))
        {
            host::warn(&format!(
                "fallback-chain: no backend named {name:?} in the pool"
            ));
        }
    }

    fn route(&mut self, _request: &Request, backends: &[BackendLoad]) -> Decision {
        let usable = |id: &&u32| {
            backends
                .get(**id as usize)
                .is_some_and(BackendLoad::is_usable)
        };
        Decision::forward(self.chain.iter().filter(usable).copied().take(4))
    }
}

export_router!(FallbackChain);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_usable_in_order() {
        let mut r = FallbackChain::init(
            "r",
            &Config::from_pairs(&[("order", "local,provider-a,provider-b")]),
        )
        .unwrap();
        r.set_backends(&[
            BackendInfo::new(0, "provider-b", &[]),
            BackendInfo::new(1, "local", &[]),
            BackendInfo::new(2, "provider-a", &[]),
            BackendInfo::new(3, "unlisted", &[]),
        ]);
        let mut loads: Vec<BackendLoad> = (0..4).map(BackendLoad::idle).collect();
        assert_eq!(
            r.route(&Request::new(&[]), &loads).candidates().unwrap(),
            [1, 2, 0]
        );
        loads[1].set_breaker(BreakerState::Open);
        assert_eq!(
            r.route(&Request::new(&[]), &loads).candidates().unwrap(),
            [2, 0]
        );
    }

    #[test]
    fn an_empty_order_is_refused() {
        assert!(FallbackChain::init("r", &Config::default()).is_err());
    }
}
