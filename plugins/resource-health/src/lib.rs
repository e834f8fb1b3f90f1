//! Resource-aware health: each probe's body is the backend's load report,
//! such as `{"cpu":0.93,"mem":0.41,"queue":12}`. The load score is the
//! busiest resource (cpu and mem as shares, queue against `queue_max`);
//! above `degraded_above` the backend is degraded (routers prefer others),
//! above `unhealthy_above` it gets no new requests until it reports lower.
//!
//! `fall` bad probes in a row take a backend out and `rise` good ones bring
//! it back, so one odd report does not flap it. A non-2xx probe, or none,
//! counts as bad with the highest score. Set `body_limit` in the pool's
//! `health` so the host hands the body over.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::json;
use switchyard_sdk::prelude::*;

/// Settings and per-backend streaks.
pub struct ResourceHealth {
    degraded_above: f64,
    unhealthy_above: f64,
    queue_max: f64,
    fall: u32,
    rise: u32,
    backends: Vec<Streak>,
}

/// What one backend's recent probes said.
#[derive(Clone, Copy, Default)]
struct Streak {
    out: bool,
    bad: u32,
    good: u32,
}

impl HealthCheck for ResourceHealth {
    fn init(_pool: &str, config: &Config) -> Result<Self, String> {
        let check = ResourceHealth {
            degraded_above: config.parse("degraded_above")?.unwrap_or(0.8),
            unhealthy_above: config.parse("unhealthy_above")?.unwrap_or(0.9),
            queue_max: config.parse("queue_max")?.unwrap_or(100.0),
            fall: config.parse("fall")?.unwrap_or(1),
            rise: config.parse("rise")?.unwrap_or(1),
            backends: Vec::new(),
        };
        if check.degraded_above > check.unhealthy_above || check.queue_max <= 0.0 {
            return Err("need degraded_above <= unhealthy_above and queue_max > 0".into());
        }
        if check.fall == 0 || check.rise == 0 {
            return Err("fall and rise must be at least 1".into());
        }
        Ok(check)
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.backends = vec![Streak::default(); backends.len()];
    }

    fn check(&mut self, probe: &ProbeResult) -> Verdict {
        let score = self.score(probe);
        let bad = score > self.unhealthy_above;
        let (fall, rise) = (self.fall, self.rise);
        let Some(streak) = self.backends.get_mut(probe.backend as usize) else {
            return Verdict::new(Health::Healthy, 0);
        };
        if bad {
            streak.bad += 1;
            streak.good = 0;
            if streak.bad >= fall {
                streak.out = true;
            }
        } else {
            streak.good += 1;
            streak.bad = 0;
            if streak.good >= rise {
                streak.out = false;
            }
        }
        let health = if streak.out {
            Health::Unhealthy
        } else if score > self.degraded_above || bad {
            Health::Degraded
        } else {
            Health::Healthy
        };
        Verdict::new(health, (score.clamp(0.0, 1.0) * 1000.0) as u16)
    }
}

impl ResourceHealth {
    /// The busiest resource as a share, 0.0..; a failed probe is 1.0 plus.
    fn score(&self, probe: &ProbeResult) -> f64 {
        if !(200..300).contains(&probe.status) {
            return f64::INFINITY;
        }
        let Some(body) = &probe.body else { return 0.0 };
        let cpu = json::number(body, "cpu").unwrap_or(0.0);
        let mem = json::number(body, "mem").unwrap_or(0.0);
        let queue = json::number(body, "queue").unwrap_or(0.0) / self.queue_max;
        cpu.max(mem).max(queue)
    }
}

export_health_check!(ResourceHealth);

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(status: u16, body: &str) -> ProbeResult {
        ProbeResult {
            backend: 0,
            status,
            latency_us: 900,
            body: Some(body.as_bytes().to_vec()),
        }
    }

    fn check(pairs: &[(&str, &str)]) -> ResourceHealth {
        let mut c = ResourceHealth::init("p", &Config::from_pairs(pairs)).unwrap();
        c.set_backends(&[BackendInfo::new(0, "a", &[])]);
        c
    }

    #[test]
    fn busy_backends_degrade_then_leave() {
        let mut c = check(&[]);
        let v = c.check(&probe(200, r#"{"cpu":0.3,"mem":0.41,"queue":12}"#));
        assert_eq!((v.health, v.load_score), (Health::Healthy, 410));
        let v = c.check(&probe(200, r#"{"cpu":0.85}"#));
        assert_eq!((v.health, v.load_score), (Health::Degraded, 850));
        assert_eq!(
            c.check(&probe(200, r#"{"cpu":0.95}"#)).health,
            Health::Unhealthy
        );
        assert_eq!(
            c.check(&probe(200, r#"{"queue":150}"#)).health,
            Health::Unhealthy
        );
        assert_eq!(
            c.check(&probe(200, r#"{"cpu":0.2}"#)).health,
            Health::Healthy
        );
        let v = c.check(&probe(503, ""));
        assert_eq!((v.health, v.load_score), (Health::Unhealthy, 1000));
    }

    #[test]
    fn fall_and_rise_need_streaks() {
        let mut c = check(&[("fall", "2"), ("rise", "2")]);
        assert_eq!(
            c.check(&probe(200, r#"{"cpu":0.99}"#)).health,
            Health::Degraded
        );
        assert_eq!(
            c.check(&probe(200, r#"{"cpu":0.99}"#)).health,
            Health::Unhealthy
        );
        assert_eq!(
            c.check(&probe(200, r#"{"cpu":0.1}"#)).health,
            Health::Unhealthy
        );
        assert_eq!(
            c.check(&probe(200, r#"{"cpu":0.1}"#)).health,
            Health::Healthy
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = [("degraded_above", "0.95"), ("unhealthy_above", "0.5")];
        assert!(ResourceHealth::init("p", &Config::from_pairs(&bad)).is_err());
        assert!(ResourceHealth::init("p", &Config::from_pairs(&[("fall", "0")])).is_err());
    }
}
