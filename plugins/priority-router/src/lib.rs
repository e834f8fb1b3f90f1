//! Priority routing per graph: requests whose priority header holds a "high"
//! value go to the fast tier, all others to the cheap tier; the other tier is
//! the fallback. A `graphs` table can pin graphs (named by the `x-graph`
//! header) to a tier. Within a tier, the least-loaded backend comes first.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

/// The router's state: its config and each backend's tier.
pub struct PriorityRouter {
    interest: Interest,
    /// The priority header's value.
    priority: AttributeKey,
    /// The graph header's value, asked for only when graphs are pinned.
    graph: Option<AttributeKey>,
    high_values: Vec<String>,
    high_tier: String,
    tier_label: String,
    /// Graph name to tier, from the `graphs` table.
    graphs: Vec<(String, String)>,
    /// Each backend's tier label, by backend id.
    tiers: Vec<String>,
    /// Rotates the start among equally loaded backends.
    turn: usize,
}

impl Router for PriorityRouter {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let header = config.get_or("header", "x-priority");
        if header.is_empty() {
            return Err("config key `header` must not be empty".into());
        }
        let mut high_values: Vec<String> = config.list("high").map(String::from).collect();
        if high_values.is_empty() {
            high_values.push("high".into());
        }
        let graphs: Vec<(String, String)> = config
            .table("graphs")
            .map(|(g, t)| (g.into(), t.into()))
            .collect();
        let mut interest = Interest::new();
        let priority = interest.add(Attribute::Header(header.into()));
        let graph = (!graphs.is_empty()).then(|| {
            interest.add(Attribute::Header(
                config.get_or("graph_header", "x-graph").into(),
            ))
        });
        Ok(PriorityRouter {
            interest,
            priority,
            graph,
            high_values,
            high_tier: config.get_or("high_tier", "fast").into(),
            tier_label: config.get_or("tier_label", "tier").into(),
            graphs,
            tiers: Vec::new(),
            turn: 0,
        })
    }

    fn interest(&self) -> Vec<Attribute> {
        self.interest.to_list()
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.tiers = backends
            .iter()
            .map(|b| b.label(&self.tier_label).unwrap_or("").into())
            .collect();
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        let pinned = self
            .graph
            .and_then(|key| request.get(key))
            .and_then(|g| self.graphs.iter().find(|(name, _)| *name == g))
            .map(|(_, tier)| tier.as_str());
        let high = pinned.is_none()
            && request
                .get(self.priority)
                .is_some_and(|v| self.high_values.iter().any(|h| h.eq_ignore_ascii_case(&v)));
        let (tiers, high_tier) = (&self.tiers, self.high_tier.as_str());
        let tier_of = |b: &BackendLoad| tiers.get(b.id as usize).map_or("", String::as_str);
        // A pinned graph prefers its tier; otherwise high priority prefers the
        // high tier and the rest every other tier.
        let preferred = |b: &BackendLoad| match pinned {
            Some(tier) => tier_of(b) == tier,
            None => (tier_of(b) == high_tier) == high,
        };
        let least_loaded = |b: &BackendLoad| (b.in_flight, b.ewma_latency_us);
        // Start the scan at a rotating offset so equally loaded backends share.
        self.turn = self.turn.wrapping_add(1);
        let (n, turn) = (backends.len(), self.turn);
        let usable = (0..n)
            .map(move |i| &backends[(i + turn) % n])
            .filter(|b| b.is_usable());
        // The two best of the preferred tier, then the best of the other, so
        // the host's few attempts reach the other tier when this one fails.
        let mut candidates =
            Candidates::lowest_by_key(usable.clone().filter(|b| preferred(b)), 2, least_loaded);
        let room = 4 - candidates.len();
        let others =
            Candidates::lowest_by_key(usable.filter(|b| !preferred(b)), room, least_loaded);
        candidates.extend(others.as_slice().iter().copied());
        Decision::forward_to(candidates)
    }
}

export_router!(PriorityRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> PriorityRouter {
        let mut r = PriorityRouter::init("chat", &Config::default()).unwrap();
        r.set_backends(&[
            BackendInfo::new(0, "cheap-1", &[("tier", "cheap")]),
            BackendInfo::new(1, "fast-1", &[("tier", "fast")]),
            BackendInfo::new(2, "cheap-2", &[("tier", "cheap")]),
        ]);
        r
    }

    fn loads() -> Vec<BackendLoad> {
        (0..3).map(BackendLoad::idle).collect()
    }

    #[test]
    fn high_priority_prefers_the_fast_tier() {
        let d = router().route(&Request::new(&[Some("high")]), &loads());
        assert_eq!(d.candidates().unwrap()[0], 1);
        assert_eq!(d.candidates().unwrap().len(), 3);
    }

    #[test]
    fn large_pools_keep_a_fallback_from_the_other_tier() {
        let mut r = PriorityRouter::init("chat", &Config::default()).unwrap();
        let infos: Vec<BackendInfo> = (0..10)
            .map(|i| BackendInfo::new(i, "b", &[("tier", if i < 8 { "fast" } else { "cheap" })]))
            .collect();
        r.set_backends(&infos);
        let mut loads: Vec<BackendLoad> = (0..10).map(BackendLoad::idle).collect();
        loads[8].in_flight = 3;
        let d = r.route(&Request::new(&[Some("high")]), &loads);
        let c = d.candidates().unwrap();
        assert_eq!(c.len(), 4);
        assert!(c[..2].iter().all(|&id| id < 8), "{c:?}");
        assert_eq!(c[2..], [9, 8]);
    }

    #[test]
    fn other_requests_prefer_the_cheap_tier_and_fall_back_to_fast() {
        let mut loads = loads();
        loads[0].in_flight = 5;
        let d = router().route(&Request::new(&[None]), &loads);
        assert_eq!(d.candidates().unwrap(), [2, 0, 1]);
    }

    #[test]
    fn unusable_backends_are_skipped() {
        let mut loads = loads();
        loads[1].set_health(Health::Unhealthy);
        let d = router().route(&Request::new(&[Some("HIGH")]), &loads);
        assert!(!d.candidates().unwrap().contains(&1));
    }

    #[test]
    fn graphs_pin_their_tier() {
        let config = Config::from_pairs(&[("graphs.research", "fast"), ("graphs.chat", "cheap")]);
        let mut r = PriorityRouter::init("r", &config).unwrap();
        r.set_backends(&[
            BackendInfo::new(0, "cheap-1", &[("tier", "cheap")]),
            BackendInfo::new(1, "fast-1", &[("tier", "fast")]),
        ]);
        assert_eq!(r.interest().len(), 2);
        let route = |r: &mut PriorityRouter, attrs: &[Option<&str>]| {
            r.route(&Request::new(attrs), &loads()[..2])
                .candidates()
                .unwrap()[0]
        };
        assert_eq!(route(&mut r, &[None, Some("research")]), 1);
        assert_eq!(
            route(&mut r, &[Some("high"), Some("chat")]),
            0,
            "the graph pin wins"
        );
        assert_eq!(route(&mut r, &[Some("high"), Some("other")]), 1);
        assert_eq!(route(&mut r, &[None, None]), 0);
    }

    #[test]
    fn empty_header_name_is_refused() {
        assert!(PriorityRouter::init("chat", &Config::from_pairs(&[("header", "")])).is_err());
    }
}
