//! Prompt-prefix affinity for model servers with a prefix (KV) cache: a
//! request whose prompt begins like an earlier one's goes to the backend
//! that served that beginning, where the prefill is mostly cached.
//!
//! The prompt is the JSON body's `messages` (chat) or `prompt`
//! (completions), as the client wrote it. The host cuts it into blocks of
//! `block` bytes, up to `prefix_bytes`, and hands over a cumulative hash at
//! each block boundary (the `prompt-prefix` attribute), so a conversation
//! that grew by a turn still matches its earlier requests on every block
//! they share. Only the prompt's beginning must lie within the route's
//! `body_peek`. The backend of the longest known
//! prefix wins when it covers at least `min_match` (default half) of the
//! prompt's blocks, as long as it is under its load bound: at most
//! `load_factor` times the pool's mean in flight with this request (plus
//! one), its KV cache
//! not full (`load_score` under `max_load_score`, fed by the
//! `model-server-health` check), and usable. Otherwise (a new
//! conversation, or one that only shares a system prompt, which the whole
//! pool soon holds) the least loaded backend under the bound takes it, ties
//! broken by rendezvous hashing of its first block; the least loaded follow
//! as fallbacks ("consistent hashing with bounded loads").
//!
//! Prefixes are remembered in a table of `table_size` entries per worker
//! thread (direct-mapped: a newer prefix takes an older one's slot).
//!
//! Optionally hedged (`hedge_after` or `hedge_ttfb_factor`, see
//! [`switchyard_sdk::hedge`]).
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::hash::{combine, name_hashes};
use switchyard_sdk::hedge::Hedge;
use switchyard_sdk::prelude::*;

pub struct PrefixAffinity {
    interest: Interest,
    prefix: AttributeKey,
    hedge: Option<Hedge>,
    load_factor: f64,
    max_load_score: u32,
    /// Share of a prompt's blocks a known prefix must cover to count.
    min_match: f64,
    /// Prefix hash and the backend that served it, by slot; 0 = empty.
    table: Vec<(u64, u32)>,
    names: Vec<u64>,
}

impl Router for PrefixAffinity {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let block: u32 = config.parse("block")?.unwrap_or(256);
        let max_bytes: u32 = config.parse("prefix_bytes")?.unwrap_or(8192);
        let table_size: usize = config.parse("table_size")?.unwrap_or(4096);
        let load_factor: f64 = config.parse("load_factor")?.unwrap_or(1.25);
        if !(16..=65536).contains(&block)
            || !block.is_multiple_of(8)
            || !(block..=1 << 20).contains(&max_bytes)
        {
            return Err(
                "need a block of 16 to 65536 bytes, a multiple of 8, and block <= prefix_bytes <= 1048576"
                    .into(),
            );
        }
        let mut interest = Interest::new();
        let prefix = interest.add(Attribute::PromptPrefix(PrefixBlocks { block, max_bytes }));
        if !(1..=1 << 20).contains(&table_size) || load_factor < 1.0 {
            return Err("table_size must be 1 to 1048576 and load_factor at least 1".into());
        }
        Ok(PrefixAffinity {
            interest,
            prefix,
            hedge: Hedge::from_config(config)?,
            load_factor,
            max_load_score: config.parse("max_load_score")?.unwrap_or(900),
            min_match: config.parse("min_match")?.unwrap_or(0.5),
            table: vec![(0, 0); table_size],
            names: Vec::new(),
        })
    }

    fn interest(&self) -> Vec<Attribute> {
        self.interest.to_list()
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.names = name_hashes(backends);
        // Ids may now mean other backends.
        self.table.iter_mut().for_each(|e| *e = (0, 0));
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        let usable: Vec<&BackendLoad> = backends.iter().filter(|b| b.is_usable()).collect();
        if usable.is_empty() {
            return Decision::reject(503, "no usable backend\n");
        }
        // Bounded loads: a backend takes one more while it would stay within
        // load_factor times the mean with this request counted, plus one of
        // slack so a quiet pool keeps its affinity.
        let total = usable.iter().map(|b| u64::from(b.in_flight)).sum::<u64>() as f64;
        let share = self.load_factor * (total + 1.0) / usable.len() as f64;
        // `ceil`, which `core` lacks.
        let bound = share as u32 + u32::from(f64::from(share as u32) < share) + 1;
        let fits = |b: &BackendLoad| b.in_flight < bound && b.load_score < self.max_load_score;
        let hashes = request
            .get(self.prefix)
            .map(|h| parse_hashes(&h))
            .unwrap_or_default();
        // The longest prefix seen before, on a backend under its bound; it
        // counts only when it covers `min_match` of the prompt's blocks, so
        // a new conversation that merely shares a system prompt (which the
        // whole pool soon holds) is not pulled onto one backend.
        let needed = (hashes.len() as f64 * self.min_match) as usize;
        let known = hashes.iter().enumerate().rev().find_map(|(i, &h)| {
            let (stored, id) = self.table[self.slot(h)];
            (stored == h && i + 1 >= needed.max(1))
                .then(|| usable.iter().find(|b| b.id == id && fits(b)))
                .flatten()
                .map(|b| b.id)
        });
        // Otherwise the least loaded under the bound, ties broken by
        // rendezvous hashing of the prompt's first block.
        let chosen = known.or_else(|| {
            let key = hashes.first().copied()?;
            usable
                .iter()
                .filter(|b| fits(b))
                .min_by_key(|b| {
                    let rank = combine(key, self.names.get(b.id as usize).copied().unwrap_or(0));
                    (b.in_flight, b.load_score / 100, u64::MAX - rank)
                })
                .map(|b| b.id)
        });
        if known.is_some() {
            host::counter_add("prefix_hits", 1);
        } else if !hashes.is_empty() {
            host::counter_add("prefix_misses", 1);
        }
        let mut candidates = Candidates::default();
        if let Some(id) = chosen {
            candidates.push(id);
            // It will hold these prefixes now.
            for &h in &hashes {
                let slot = self.slot(h);
                self.table[slot] = (h, id);
            }
        }
        candidates.extend_lowest_by_key(usable.iter().copied(), 3, |b| (b.in_flight, b.load_score));
        let decision = candidates.into_decision();
        match &self.hedge {
            Some(hedge) => hedge.apply(decision, backends),
            None => decision,
        }
    }
}

/// The host's comma-separated hex hashes, made non-zero (0 marks an empty
/// slot); anything unreadable is left out.
fn parse_hashes(text: &str) -> Vec<u64> {
    text.split(',')
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .map(|h| h | 1)
        .collect()
}

impl PrefixAffinity {
    fn slot(&self, h: u64) -> usize {
        (h % self.table.len() as u64) as usize
    }
}

export_router!(PrefixAffinity);

#[cfg(test)]
mod tests {
    use super::*;

    fn router(pairs: &[(&str, &str)], n: u32) -> (PrefixAffinity, Vec<BackendLoad>) {
        let mut r = PrefixAffinity::init("r", &Config::from_pairs(pairs)).unwrap();
        let infos: Vec<BackendInfo> = (0..n)
            .map(|i| BackendInfo::new(i, &format!("gpu-{i}"), &[]))
            .collect();
        r.set_backends(&infos);
        (r, (0..n).map(BackendLoad::idle).collect())
    }

    /// The request as the host hands it over: the `prompt-prefix` hashes
    /// of `text` in blocks of `block` bytes (a stand-in hash with the same
    /// prefix property as the host's).
    fn chat_in(block: usize, text: &str) -> Request {
        use switchyard_sdk::hash::hash_bytes;
        let mut h = 0u64;
        let mut hashes = Vec::new();
        for chunk in text.as_bytes().chunks(block) {
            if chunk.len() < block && !hashes.is_empty() {
                break;
            }
            h = combine(h, hash_bytes(chunk));
            hashes.push(format!("{h:016x}"));
        }
        Request::with_values(vec![AttributeValue::Value(hashes.join(","))])
    }

    fn chat(text: &str) -> Request {
        chat_in(64, text)
    }

    fn conversation(system: &str, turns: usize) -> String {
        let mut s = format!(r#"[{{"role":"system","content":"{system}"}}"#);
        for t in 0..turns {
            s.push_str(&format!(
                r#",{{"role":"user","content":"turn {t} {}"}}"#,
                "x".repeat(300)
            ));
        }
        s.push(']');
        s
    }

    fn first(r: &mut PrefixAffinity, req: &Request, loads: &[BackendLoad]) -> u32 {
        r.route(req, loads).candidates().unwrap()[0]
    }

    #[test]
    fn a_growing_conversation_stays_on_its_backend() {
        let (mut r, loads) = router(&[("block", "64")], 8);
        let system = "You are a research agent. ".repeat(10);
        let home = first(&mut r, &chat(&conversation(&system, 1)), &loads);
        for turns in 2..8 {
            assert_eq!(
                first(&mut r, &chat(&conversation(&system, turns)), &loads),
                home
            );
        }
        // Other conversations spread over the pool.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..40 {
            seen.insert(first(
                &mut r,
                &chat(&conversation(&format!("agent {i} "), 1)),
                &loads,
            ));
        }
        assert!(seen.len() >= 6, "{seen:?}");
    }

    #[test]
    fn a_shared_system_prompt_finds_the_backend_that_holds_it() {
        let (mut r, mut loads) = router(&[("block", "64")], 4);
        let system = "Shared planner instructions. ".repeat(20);
        let a = first(&mut r, &chat(&conversation(&system, 1)), &loads);
        // A different user turn after the same system prompt: same backend,
        // even where rendezvous alone would pick another.
        loads[a as usize].in_flight = 1;
        let b = first(
            &mut r,
            &chat(&format!("{}X", &conversation(&system, 0)[..system.len()])),
            &loads,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn an_overloaded_or_full_backend_spills() {
        let (mut r, mut loads) = router(&[("block", "64")], 4);
        let convo = conversation(&"Long system prompt. ".repeat(50), 2);
        let home = first(&mut r, &chat(&convo), &loads);
        loads[home as usize].in_flight = 5; // mean 1.25, bound 2
        let spilled = first(&mut r, &chat(&convo), &loads);
        assert_ne!(spilled, home);
        loads[home as usize].in_flight = 0;
        loads[spilled as usize].load_score = 950; // its KV cache full
        assert_ne!(first(&mut r, &chat(&convo), &loads), spilled);
    }

    #[test]
    fn hedges_when_configured() {
        let (mut r, mut loads) = router(&[("block", "64"), ("hedge_after", "300ms")], 2);
        loads[1].in_flight = 2;
        let d = r.route(&chat("a prompt"), &loads);
        assert_eq!(d.hedge_after_us(), Some(300_000));
        assert_eq!(parse_hashes("00000000000000a0,zz,ff"), [0xa1, 0xff]);
    }

    #[test]
    fn no_prompt_is_least_loaded() {
        let (mut r, mut loads) = router(&[], 3);
        loads[0].in_flight = 3;
        loads[1].in_flight = 1;
        for none in [AttributeValue::Absent, AttributeValue::NotSeen] {
            assert_eq!(first(&mut r, &Request::with_values(vec![none]), &loads), 2);
        }
        for bad in ["0", "12", "100000"] {
            assert!(PrefixAffinity::init("r", &Config::from_pairs(&[("block", bad)])).is_err());
        }
        let r = PrefixAffinity::init("r", &Config::from_pairs(&[("block", "512")])).unwrap();
        assert_eq!(
            r.interest(),
            [Attribute::PromptPrefix(PrefixBlocks {
                block: 512,
                max_bytes: 8192
            })]
        );
    }
}
