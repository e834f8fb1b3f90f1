//! Heavy and light lanes, as at a toll booth with a lane for trucks: each
//! request is classified from what the proxy sees cheaply, and heavy work
//! goes to the backends labelled for it, light work to the rest, so a burst
//! of long agent runs never queues the quick calls behind it.
//!
//! A request is **heavy** when any of these holds (each can be turned off):
//! its `kind_header` (default `x-agent-kind`) names a heavy kind; its JSON
//! `max_tokens` is at least `heavy_max_tokens`; its body is at least
//! `heavy_body_bytes`; its JSON `model` is one of `heavy_models`. A light
//! kind in the header makes it light whatever the rest says.
//!
//! Within a lane the backend with the least load for its size wins:
//! in-flight requests over its `weight`. A backend is full at its `slots`
//! label (requests it serves at once; none: never full) or when degraded;
//! when every backend of a request's lane is full or down, the request
//! spills to the other lane (counted with `host::counter_add`).
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Heavy,
    Light,
}

/// A backend as the lanes see it.
#[derive(Clone, Copy)]
struct Member {
    lane: Lane,
    weight: u64,
    /// Requests it serves at once; 0 = no limit.
    slots: u32,
}

pub struct Lanes {
    interest: Interest,
    kind: Option<AttributeKey>,
    max_tokens: Option<AttributeKey>,
    body: Option<AttributeKey>,
    model: Option<AttributeKey>,
    heavy_kinds: Vec<String>,
    light_kinds: Vec<String>,
    heavy_models: Vec<String>,
    heavy_max_tokens: u64,
    heavy_body_bytes: u64,
    lane_label: String,
    members: Vec<Member>,
}

impl Router for Lanes {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let mut interest = Interest::new();
        let list = |key: &str, default: &str| -> Vec<String> {
            let given: Vec<String> = config.list(key).map(String::from).collect();
            if config.get(key).is_some() {
                given
            } else {
                default
                    .split(',')
                    .map(String::from)
                    .filter(|s| !s.is_empty())
                    .collect()
            }
        };
        let header = config.get_or("kind_header", "x-agent-kind");
        let heavy_max_tokens = config.parse("heavy_max_tokens")?.unwrap_or(2048);
        let heavy_body_bytes = config.parse("heavy_body_bytes")?.unwrap_or(32 * 1024);
        let heavy_models = list("heavy_models", "");
        let kind = (!header.is_empty()).then(|| interest.add(Attribute::Header(header.into())));
        let max_tokens =
            (heavy_max_tokens > 0).then(|| interest.add(Attribute::JsonBody("max_tokens".into())));
        let body = (heavy_body_bytes > 0).then(|| interest.add(Attribute::BodySize));
        let model =
            (!heavy_models.is_empty()).then(|| interest.add(Attribute::JsonBody("model".into())));
        Ok(Lanes {
            interest,
            kind,
            max_tokens,
            body,
            model,
            heavy_kinds: list("heavy_kinds", "research,batch,long"),
            light_kinds: list("light_kinds", "chat,tool,short"),
            heavy_models,
            heavy_max_tokens,
            heavy_body_bytes,
            lane_label: config.get_or("lane_label", "lane").into(),
            members: Vec::new(),
        })
    }

    fn interest(&self) -> Vec<Attribute> {
        self.interest.to_list()
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.members = backends
            .iter()
            .map(|b| Member {
                lane: if b.label(&self.lane_label) == Some("heavy") {
                    Lane::Heavy
                } else {
                    Lane::Light
                },
                weight: u64::from(b.weight.max(1)),
                slots: b.label("slots").and_then(|s| s.parse().ok()).unwrap_or(0),
            })
            .collect();
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        let this = &*self;
        let lane = this.classify(request);
        let other = match lane {
            Lane::Heavy => Lane::Light,
            Lane::Light => Lane::Heavy,
        };
        let open = |l: Lane| {
            backends
                .iter()
                .filter(move |b| this.in_lane(b, l) && !this.full(b))
        };
        let (first, spilled) = if open(lane).next().is_some() {
            (lane, false)
        } else if open(other).next().is_some() {
            (other, true)
        } else {
            (lane, false)
        };
        if spilled {
            host::counter_add(
                match lane {
                    Lane::Heavy => "spilled_heavy",
                    Lane::Light => "spilled_light",
                },
                1,
            );
        }
        let load = |b: &BackendLoad| this.load(b);
        let mut candidates = Candidates::lowest_by_key(open(first), 3, load);
        // Then the rest of the pool, full or not, least loaded first.
        candidates.extend_lowest_by_key(backends.iter().filter(|b| b.is_usable()), 2, load);
        if candidates.as_slice().is_empty() {
            return Decision::reject(503, "no usable backend in either lane\n");
        }
        candidates.into_decision()
    }
}

impl Lanes {
    fn classify(&self, request: &Request) -> Lane {
        let text = |key: Option<AttributeKey>| key.and_then(|k| request.get(k));
        let number = |key| text(key).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(kind) = text(self.kind) {
            let kind = kind.trim();
            if self
                .light_kinds
                .iter()
                .any(|k| k.eq_ignore_ascii_case(kind))
            {
                return Lane::Light;
            }
            if self
                .heavy_kinds
                .iter()
                .any(|k| k.eq_ignore_ascii_case(kind))
            {
                return Lane::Heavy;
            }
        }
        let heavy = number(self.max_tokens).is_some_and(|n| n >= self.heavy_max_tokens)
            || number(self.body).is_some_and(|n| n >= self.heavy_body_bytes)
            || text(self.model).is_some_and(|m| self.heavy_models.contains(&m));
        if heavy { Lane::Heavy } else { Lane::Light }
    }

    fn member(&self, b: &BackendLoad) -> Member {
        self.members.get(b.id as usize).copied().unwrap_or(Member {
            lane: Lane::Light,
            weight: 1,
            slots: 0,
        })
    }

    fn in_lane(&self, b: &BackendLoad, lane: Lane) -> bool {
        b.is_usable() && self.member(b).lane == lane
    }

    fn full(&self, b: &BackendLoad) -> bool {
        let m = self.member(b);
        (m.slots > 0 && b.in_flight >= m.slots) || b.health() == Health::Degraded
    }

    /// In flight per unit of weight, in thousandths.
    fn load(&self, b: &BackendLoad) -> u64 {
        (u64::from(b.in_flight) + 1) * 1000 / self.member(b).weight
    }
}

export_router!(Lanes);

#[cfg(test)]
mod tests {
    use super::*;

    /// The exercise of the source documents: server A with 8 cores, server
    /// B with 64; B takes the trucks, A the cars.
    fn lanes(pairs: &[(&str, &str)]) -> (Lanes, Vec<BackendLoad>) {
        let mut r = Lanes::init("r", &Config::from_pairs(pairs)).unwrap();
        let mut a = BackendInfo::new(0, "a-8-cores", &[("slots", "8")]);
        a.weight = 1;
        let mut b = BackendInfo::new(1, "b-64-cores", &[("lane", "heavy"), ("slots", "64")]);
        b.weight = 8;
        r.set_backends(&[a, b]);
        (r, (0..2).map(BackendLoad::idle).collect())
    }

    /// Values in the order `init` declares them: kind, max_tokens, body size.
    fn req(kind: Option<&str>, max_tokens: Option<u64>, body: Option<u64>) -> Request {
        let v = |s: Option<String>| s.map_or(AttributeValue::Absent, AttributeValue::Value);
        Request::with_values(vec![
            v(kind.map(String::from)),
            v(max_tokens.map(|n| n.to_string())),
            v(body.map(|n| n.to_string())),
        ])
    }

    fn first(r: &mut Lanes, request: &Request, loads: &[BackendLoad]) -> u32 {
        r.route(request, loads).candidates().unwrap()[0]
    }

    #[test]
    fn requests_take_their_lane() {
        let (mut r, loads) = lanes(&[]);
        assert_eq!(
            first(&mut r, &req(None, None, Some(200)), &loads),
            0,
            "a car"
        );
        assert_eq!(first(&mut r, &req(Some("research"), None, None), &loads), 1);
        assert_eq!(
            first(&mut r, &req(None, Some(4096), None), &loads),
            1,
            "many tokens"
        );
        assert_eq!(
            first(&mut r, &req(None, None, Some(100_000)), &loads),
            1,
            "a big prompt"
        );
        assert_eq!(
            first(&mut r, &req(Some("chat"), Some(8000), None), &loads),
            0,
            "a light kind wins"
        );
    }

    #[test]
    fn a_full_lane_spills_to_the_other() {
        let (mut r, mut loads) = lanes(&[]);
        loads[0].in_flight = 8;
        assert_eq!(
            first(&mut r, &req(None, None, None), &loads),
            1,
            "A's 8 slots taken"
        );
        loads[0].in_flight = 3;
        loads[1].in_flight = 64;
        assert_eq!(first(&mut r, &req(Some("batch"), None, None), &loads), 0);
        // Both full: the request's own lane, then the other.
        loads[0].in_flight = 8;
        let d = r.route(&req(Some("batch"), None, None), &loads);
        assert_eq!(d.candidates().unwrap(), [1, 0]);
    }

    #[test]
    fn weights_share_a_lane_by_size() {
        let mut r = Lanes::init("r", &Config::new(Vec::new())).unwrap();
        let small = BackendInfo::new(0, "small", &[("lane", "heavy")]);
        let mut big = BackendInfo::new(1, "big", &[("lane", "heavy")]);
        big.weight = 8;
        r.set_backends(&[small, big]);
        let mut loads: Vec<BackendLoad> = (0..2).map(BackendLoad::idle).collect();
        loads[1].in_flight = 6;
        // (6 + 1) / 8 against (0 + 1) / 1: the big one still wins.
        assert_eq!(first(&mut r, &req(Some("long"), None, None), &loads), 1);
        loads[1].in_flight = 8;
        assert_eq!(first(&mut r, &req(Some("long"), None, None), &loads), 0);
    }

    #[test]
    fn models_can_be_heavy_and_rules_can_be_off() {
        let mut r = Lanes::init(
            "r",
            &Config::from_pairs(&[
                ("heavy_models", "o1,deepseek-r1"),
                ("heavy_body_bytes", "0"),
            ]),
        )
        .unwrap();
        r.set_backends(&[
            BackendInfo::new(0, "light", &[]),
            BackendInfo::new(1, "heavy", &[("lane", "heavy")]),
        ]);
        let loads: Vec<BackendLoad> = (0..2).map(BackendLoad::idle).collect();
        // Declared: kind, max_tokens, model (body size is off).
        let with_model = |m: &str| {
            Request::with_values(vec![
                AttributeValue::Absent,
                AttributeValue::Absent,
                AttributeValue::Value(m.into()),
            ])
        };
        assert_eq!(first(&mut r, &with_model("o1"), &loads), 1);
        assert_eq!(first(&mut r, &with_model("gpt-4o-mini"), &loads), 0);
        assert_eq!(r.interest().len(), 3);
    }
}
