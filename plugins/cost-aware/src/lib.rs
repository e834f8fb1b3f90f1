//! The cheapest backend that meets the request's limits: a maximum cost
//! (`x-max-cost`, compared with the backend's `cost` label) and a latency
//! budget (`x-sla-ms`, compared with the backend's latency average). When no
//! backend meets them, the fastest ones are tried, or with `strict = true`
//! the request is answered 503.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

pub struct CostAware {
    interest: Interest,
    max_cost: AttributeKey,
    sla: AttributeKey,
    strict: bool,
    /// `cost` label by backend id, in thousandths.
    costs: Vec<u64>,
}

/// Parses a decimal such as `0.5` or `12` into thousandths.
fn milli(text: &str) -> Option<u64> {
    let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let whole: u64 = whole.parse().ok()?;
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    Some(whole * 1000 + frac3.parse::<u64>().ok()?)
}

impl Router for CostAware {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let mut interest = Interest::new();
        let max_cost = interest.add(Attribute::Header(
            config.get_or("cost_header", "x-max-cost").into(),
        ));
        let sla = interest.add(Attribute::Header(
            config.get_or("sla_header", "x-sla-ms").into(),
        ));
        Ok(CostAware {
            interest,
            max_cost,
            sla,
            strict: config.parse("strict")?.unwrap_or(false),
            costs: Vec::new(),
        })
    }

    fn interest(&self) -> Vec<Attribute> {
        self.interest.to_list()
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.costs = backends
            .iter()
            .map(|b| b.label("cost").and_then(milli).unwrap_or(u64::MAX))
            .collect();
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        let max_cost = request
            .get(self.max_cost)
            .and_then(|v| milli(&v))
            .unwrap_or(u64::MAX);
        let sla_us = request
            .get(self.sla)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(u64::MAX, |ms| ms * 1000);
        let cost = |b: &BackendLoad| self.costs.get(b.id as usize).copied().unwrap_or(u64::MAX);
        let meets =
            |b: &&BackendLoad| cost(b) <= max_cost && u64::from(b.ewma_latency_us) <= sla_us;
        let usable = backends.iter().filter(|b| b.is_usable());
        let acceptable = Candidates::lowest_by_key(usable.clone().filter(meets), 4, |b| {
            (cost(b), b.ewma_latency_us)
        });
        if !acceptable.is_empty() {
            return Decision::forward_to(acceptable);
        }
        if self.strict {
            return Decision::reject(
                503,
                "no backend meets this request's cost and latency limits\n",
            );
        }
        Decision::forward_to(Candidates::lowest_by_key(usable, 4, |b| b.ewma_latency_us))
    }
}

export_router!(CostAware);

#[cfg(test)]
mod tests {
    use super::*;

    fn router(strict: &str) -> CostAware {
        let mut r = CostAware::init("r", &Config::from_pairs(&[("strict", strict)])).unwrap();
        r.set_backends(&[
            BackendInfo::new(0, "premium", &[("cost", "10")]),
            BackendInfo::new(1, "mid", &[("cost", "2.5")]),
            BackendInfo::new(2, "local", &[("cost", "0.2")]),
        ]);
        r
    }

    fn loads() -> Vec<BackendLoad> {
        let mut l: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        l[0].ewma_latency_us = 50_000;
        l[1].ewma_latency_us = 80_000;
        l[2].ewma_latency_us = 400_000;
        l
    }

    #[test]
    fn cheapest_acceptable_wins() {
        let mut r = router("false");
        assert_eq!(
            r.route(&Request::new(&[None, None]), &loads())
                .candidates()
                .unwrap()[0],
            2
        );
        let d = r.route(&Request::new(&[None, Some("100")]), &loads());
        assert_eq!(d.candidates().unwrap(), [1, 0]);
        let d = r.route(&Request::new(&[Some("5"), Some("100")]), &loads());
        assert_eq!(d.candidates().unwrap(), [1]);
    }

    #[test]
    fn nothing_acceptable_means_fastest_or_503() {
        let d = router("false").route(&Request::new(&[Some("0.1"), None]), &loads());
        assert_eq!(d.candidates().unwrap(), [0, 1, 2]);
        let d = router("true").route(&Request::new(&[Some("0.1"), None]), &loads());
        assert!(matches!(d, Decision::Reject { status: 503, .. }));
    }

    #[test]
    fn decimals_parse_to_thousandths() {
        assert_eq!(milli("2.5"), Some(2500));
        assert_eq!(milli("0.0015"), Some(1));
        assert_eq!(milli("x"), None);
    }
}
