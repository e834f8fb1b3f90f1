//! Model-server health: each probe reads the server's Prometheus `/metrics`
//! page (vLLM, SGLang, TGI, or any server under configured metric names)
//! and turns three signals into the load score routers see and a verdict:
//!
//! - requests **waiting** in the server's queue, against `max_waiting`;
//! - requests **running** in its batch, against `max_running` (0: ignored);
//! - **KV-cache** use, a share from 0 to 1.
//!
//! The score is the largest of the three shares. Above `degraded_above`
//! the backend is degraded (routers prefer others); above
//! `unhealthy_above`, or with its KV cache at `kv_full`, it gets no new
//! requests until it reports lower. `fall` bad probes in a row take it out
//! and `rise` good ones bring it back. A probe without a 2xx counts as
//! bad; a page with none of the metrics degrades the backend (the names are
//! probably wrong, and its load is unknown).
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;
use switchyard_sdk::prometheus::Fold;

/// Queue metrics of the servers this knows, newest names first.
const WAITING: &[&str] = &[
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "tgi_queue_size",
];
const RUNNING: &[&str] = &[
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "tgi_batch_current_size",
];
/// KV-cache use as a share (vLLM renamed its gauge in 0.7; SGLang's token
/// usage is the share of KV slots taken).
const KV_CACHE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];

pub struct ModelServerHealth {
    waiting: Vec<String>,
    running: Vec<String>,
    kv_cache: Vec<String>,
    max_waiting: f64,
    max_running: f64,
    degraded_above: f64,
    unhealthy_above: f64,
    kv_full: f64,
    fall: u32,
    rise: u32,
    streaks: Vec<Streak>,
}

#[derive(Clone, Copy, Default)]
struct Streak {
    out: bool,
    bad: u32,
    good: u32,
}

/// What one `/metrics` page says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    pub kv_cache: Option<f64>,
}

impl HealthCheck for ModelServerHealth {
    fn init(_pool: &str, config: &Config) -> Result<Self, String> {
        let names = |key: &str, default: &[&str]| -> Vec<String> {
            let given: Vec<String> = config.list(key).map(String::from).collect();
            if given.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                given
            }
        };
        let check = ModelServerHealth {
            waiting: names("waiting_metrics", WAITING),
            running: names("running_metrics", RUNNING),
            kv_cache: names("kv_cache_metrics", KV_CACHE),
            max_waiting: config.parse("max_waiting")?.unwrap_or(16.0),
            max_running: config.parse("max_running")?.unwrap_or(0.0),
            degraded_above: config.parse("degraded_above")?.unwrap_or(0.8),
            unhealthy_above: config.parse("unhealthy_above")?.unwrap_or(1.0),
            kv_full: config.parse("kv_full")?.unwrap_or(0.98),
            fall: config.parse("fall")?.unwrap_or(2),
            rise: config.parse("rise")?.unwrap_or(1),
            streaks: Vec::new(),
        };
        if check.max_waiting <= 0.0 || check.max_running < 0.0 {
            return Err("max_waiting must be above 0 and max_running at least 0".into());
        }
        if check.degraded_above > check.unhealthy_above {
            return Err("need degraded_above <= unhealthy_above".into());
        }
        if !(0.0..=1.0).contains(&check.kv_full) {
            return Err("kv_full is a share, 0 to 1".into());
        }
        if check.fall == 0 || check.rise == 0 {
            return Err("fall and rise must be at least 1".into());
        }
        Ok(check)
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.streaks = vec![Streak::default(); backends.len()];
    }

    fn check(&mut self, probe: &ProbeResult) -> Verdict {
        let (score, bad, known) = match (&probe.body, (200..300).contains(&probe.status)) {
            (Some(page), true) => {
                let r = self.read(page);
                let score = self.score(&r);
                let kv_full = r.kv_cache.is_some_and(|kv| kv >= self.kv_full);
                let known = r.waiting.is_some() || r.running.is_some() || r.kv_cache.is_some();
                (score, score > self.unhealthy_above || kv_full, known)
            }
            // No body: the pool's health has no body_limit; no 2xx: down.
            (None, true) => (0.0, false, false),
            (_, false) => (f64::INFINITY, true, true),
        };
        let (fall, rise) = (self.fall, self.rise);
        let Some(streak) = self.streaks.get_mut(probe.backend as usize) else {
            return Verdict::new(Health::Healthy, 0);
        };
        if bad {
            streak.bad += 1;
            streak.good = 0;
            streak.out |= streak.bad >= fall;
        } else {
            streak.good += 1;
            streak.bad = 0;
            streak.out &= streak.good < rise;
        }
        let health = if streak.out {
            Health::Unhealthy
        } else if bad || score > self.degraded_above || !known {
            Health::Degraded
        } else {
            Health::Healthy
        };
        let load = if known { score.clamp(0.0, 1.0) } else { 1.0 };
        Verdict::new(health, (load * 1000.0) as u16)
    }
}

impl ModelServerHealth {
    /// The three signals, each under the first configured name the page has.
    pub fn read(&self, page: &[u8]) -> Reading {
        let first = |names: &[String], fold| {
            names
                .iter()
                .find_map(|n| switchyard_sdk::prometheus::value(page, n, fold))
        };
        Reading {
            waiting: first(&self.waiting, Fold::Sum),
            running: first(&self.running, Fold::Sum),
            kv_cache: first(&self.kv_cache, Fold::Max),
        }
    }

    /// The largest of the signals' shares; 0 when the page has none.
    pub fn score(&self, r: &Reading) -> f64 {
        let waiting = r.waiting.map_or(0.0, |w| w / self.max_waiting);
        let running = match (r.running, self.max_running) {
            (Some(n), max) if max > 0.0 => n / max,
            _ => 0.0,
        };
        let kv = r.kv_cache.unwrap_or(0.0);
        waiting.max(running).max(kv).max(0.0)
    }
}

export_health_check!(ModelServerHealth);

#[cfg(test)]
mod tests {
    use super::*;

    /// Written from vLLM's documented metrics (0.6 names).
    fn vllm(waiting: f64, running: f64, kv: f64) -> String {
        format!(
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{{model_name=\"llama\"}} {running}\n\
             # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{model_name=\"llama\"}} {waiting}\n\
             # HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n\
             # TYPE vllm:gpu_cache_usage_perc gauge\n\
             vllm:gpu_cache_usage_perc{{model_name=\"llama\"}} {kv}\n\
             vllm:prompt_tokens_total{{model_name=\"llama\"}} 123456.0\n"
        )
    }

    fn probe(status: u16, body: &str) -> ProbeResult {
        ProbeResult {
            backend: 0,
            status,
            latency_us: 2_000,
            body: Some(body.as_bytes().to_vec()),
        }
    }

    fn check(pairs: &[(&str, &str)]) -> ModelServerHealth {
        let mut c = ModelServerHealth::init("gpu", &Config::from_pairs(pairs)).unwrap();
        c.set_backends(&[BackendInfo::new(0, "vllm-0", &[])]);
        c
    }

    #[test]
    fn queue_and_cache_become_the_load_score() {
        let mut c = check(&[("max_waiting", "10"), ("fall", "1")]);
        let v = c.check(&probe(200, &vllm(2.0, 30.0, 0.35)));
        assert_eq!(
            (v.health, v.load_score),
            (Health::Healthy, 350),
            "the KV cache leads"
        );
        let v = c.check(&probe(200, &vllm(6.0, 30.0, 0.35)));
        assert_eq!(
            (v.health, v.load_score),
            (Health::Healthy, 600),
            "the queue leads"
        );
        let v = c.check(&probe(200, &vllm(9.0, 30.0, 0.35)));
        assert_eq!((v.health, v.load_score), (Health::Degraded, 900));
        let v = c.check(&probe(200, &vllm(12.0, 30.0, 0.35)));
        assert_eq!((v.health, v.load_score), (Health::Unhealthy, 1000));
        let v = c.check(&probe(200, &vllm(0.0, 30.0, 0.2)));
        assert_eq!(v.health, Health::Healthy, "back after one good probe");
    }

    #[test]
    fn a_full_kv_cache_takes_a_backend_out_after_fall_probes() {
        let mut c = check(&[]);
        let full = vllm(0.0, 64.0, 0.99);
        assert_eq!(
            c.check(&probe(200, &full)).health,
            Health::Degraded,
            "one probe: degraded"
        );
        assert_eq!(
            c.check(&probe(200, &full)).health,
            Health::Unhealthy,
            "fall = 2"
        );
        assert_eq!(
            c.check(&probe(200, &vllm(0.0, 10.0, 0.5))).health,
            Health::Healthy
        );
    }

    #[test]
    fn running_counts_against_max_running_when_set() {
        let mut c = check(&[("max_running", "64")]);
        let v = c.check(&probe(200, &vllm(0.0, 48.0, 0.1)));
        assert_eq!(v.load_score, 750);
        let mut c = check(&[]);
        assert_eq!(c.check(&probe(200, &vllm(0.0, 48.0, 0.1))).load_score, 100);
    }

    #[test]
    fn other_servers_and_configured_names() {
        let sglang = "sglang:num_queue_reqs{model_name=\"qwen\"} 8\n\
                      sglang:num_running_reqs{model_name=\"qwen\"} 40\n\
                      sglang:token_usage{model_name=\"qwen\"} 0.5\n";
        let mut c = check(&[]);
        assert_eq!(c.check(&probe(200, sglang)).load_score, 500);
        let tgi = "# TYPE tgi_queue_size gauge\ntgi_queue_size 12\ntgi_batch_current_size 4\n";
        assert_eq!(c.check(&probe(200, tgi)).load_score, 750);
        let custom = "my_queue{shard=\"0\"} 3\nmy_queue{shard=\"1\"} 5\n";
        let mut c = check(&[("waiting_metrics", "my_queue"), ("max_waiting", "10")]);
        assert_eq!(
            c.check(&probe(200, custom)).load_score,
            800,
            "summed over shards"
        );
    }

    #[test]
    fn failures_and_unknown_pages() {
        let mut c = check(&[("fall", "1")]);
        let v = c.check(&probe(503, "busy"));
        assert_eq!((v.health, v.load_score), (Health::Unhealthy, 1000));
        let mut c = check(&[]);
        let v = c.check(&probe(200, "# nothing we know\nup 1\n"));
        assert_eq!((v.health, v.load_score), (Health::Degraded, 1000));
    }

    #[test]
    fn bad_settings_are_refused() {
        for pairs in [
            &[("max_waiting", "0")][..],
            &[("degraded_above", "0.9"), ("unhealthy_above", "0.5")],
            &[("kv_full", "2")],
            &[("fall", "0")],
            &[("max_waiting", "lots")],
        ] {
            assert!(
                ModelServerHealth::init("p", &Config::from_pairs(pairs)).is_err(),
                "{pairs:?}"
            );
        }
    }
}
