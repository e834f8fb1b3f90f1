//! Active health probes: one task per backend on the control thread, each
//! probing on the pool's interval over a fresh connection, judged by the
//! pool's health plugin (one shared instance) or the built-in check.

use crate::balance::{BackendState, Health};
use crate::config::HealthConfig;
use crate::plugin::{HealthInstance, HealthPolicy, wit};
use crate::pool::Pool;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The probe tasks of one pool and what they were started for.
pub struct Probes {
    config: HealthConfig,
    plugin: Option<Arc<HealthPolicy>>,
    /// `(name, address)` of each backend probed.
    backends: Vec<(String, String)>,
    tasks: Vec<JoinHandle<()>>,
}

/// The pool's health plugin instance, shared by its probe tasks.
struct Judge {
    policy: Option<Arc<HealthPolicy>>,
    instance: Option<HealthInstance>,
}

impl Probes {
    /// Starts probing every backend of `pool`, staggered over one interval.
    pub fn start(pool: &Pool) -> Probes {
        let Some(health) = &pool.health else {
            unreachable!("only pools with health checks are probed")
        };
        let judge = Rc::new(RefCell::new(Judge {
            policy: health.plugin.clone(),
            instance: None,
        }));
        let n = pool.backends.len().max(1) as u32;
        let tasks = pool
            .backends
            .iter()
            .map(|b| {
                let target = Target {
                    pool: pool.name.clone(),
                    name: b.name.clone(),
                    endpoint: b.endpoint.clone(),
                    host: b.host_header.clone(),
                    id: b.id,
                    state: b.state.clone(),
                };
                let offset = health.config.interval / n * b.id;
                tokio::task::spawn_local(probe_loop(
                    target,
                    health.config.clone(),
                    judge.clone(),
                    offset,
                ))
            })
            .collect();
        Probes {
            config: health.config.clone(),
            plugin: health.plugin.clone(),
            backends: backend_list(pool),
            tasks,
        }
    }

    /// Whether these probes already do what `pool` asks.
    pub fn serves(&self, pool: &Pool) -> bool {
        let Some(health) = &pool.health else {
            return false;
        };
        health.config == self.config
            && match (&health.plugin, &self.plugin) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && backend_list(pool) == self.backends
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn backend_list(pool: &Pool) -> Vec<(String, String)> {
    pool.backends
        .iter()
        .map(|b| (b.name.clone(), b.address.clone()))
        .collect()
}

struct Target {
    pool: String,
    name: String,
    endpoint: Arc<crate::endpoint::Endpoint>,
    host: http::HeaderValue,
    id: u32,
    state: Arc<BackendState>,
}

async fn probe_loop(
    target: Target,
    config: HealthConfig,
    judge: Rc<RefCell<Judge>>,
    offset: Duration,
) {
    tokio::time::sleep(offset).await;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Health> = None;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let (status, body) = match tokio::time::timeout(config.timeout, probe(&target, &config))
            .await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                tracing::debug!(pool = %target.pool, backend = %target.name, "probe failed: {reason}");
                (0, None)
            }
            Err(_) => (0, None),
        };
        let result = wit::ProbeResult {
            backend: target.id,
            status,
            latency_us: started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
            body,
        };
        let verdict = judge.borrow_mut().judge(&target.pool, &result);
        let health = match verdict.health {
            wit::Health::Healthy => Health::Healthy,
            wit::Health::Degraded => Health::Degraded,
            wit::Health::Unhealthy => Health::Unhealthy,
        };
        target.state.set_health(health, verdict.load_score);
        let result_label = if (200..300).contains(&status) {
            "ok"
        } else {
            "failed"
        };
        metrics::counter!("switchyard_health_probes_total", "pool" => target.pool.clone(), "result" => result_label)
            .increment(1);
        metrics::gauge!("switchyard_backend_load_score", "pool" => target.pool.clone(), "backend" => target.name.clone())
            .set(f64::from(verdict.load_score.min(1000)));
        if last != Some(health) {
            let label = match health {
                Health::Healthy => "healthy",
                Health::Degraded => "degraded",
                Health::Unhealthy => "unhealthy",
            };
            metrics::gauge!("switchyard_backend_health", "pool" => target.pool.clone(), "backend" => target.name.clone())
                .set(f64::from(health as u8));
            if last.is_some() {
                metrics::counter!("switchyard_health_transitions_total",
                    "pool" => target.pool.clone(), "backend" => target.name.clone(), "to" => label)
                .increment(1);
                tracing::info!(pool = %target.pool, backend = %target.name, status, load_score = verdict.load_score, "backend is now {label}");
            }
            last = Some(health);
        }
    }
}

impl Judge {
    /// The plugin's verdict, or the built-in one when there is no plugin or
    /// it failed (then its instance is replaced on the next probe).
    fn judge(&mut self, pool: &str, probe: &wit::ProbeResult) -> wit::Verdict {
        let builtin = wit::Verdict {
            health: if (200..300).contains(&probe.status) {
                wit::Health::Healthy
            } else {
                wit::Health::Unhealthy
            },
            load_score: 0,
        };
        let Some(policy) = &self.policy else {
            return builtin;
        };
        if self.instance.is_none() {
            match policy.instantiate() {
                Ok(i) => self.instance = Some(i),
                Err(e) => {
                    tracing::error!(
                        pool,
                        "health plugin cannot start, using the built-in check: {e}"
                    );
                    return builtin;
                }
            }
        }
        let Some(instance) = self.instance.as_mut() else {
            return builtin;
        };
        let timer = policy.stats.start();
        let result = instance.check(probe);
        policy.stats.finish(timer);
        match result {
            Ok(v) => v,
            Err(failure) => {
                policy.stats.failed(failure.kind(), format!("{failure:?}"));
                metrics::counter!("switchyard_plugin_failures_total",
                    "plugin" => policy.name().to_string(), "route" => format!("pool:{pool}"), "kind" => failure.kind())
                .increment(1);
                tracing::warn!(pool, plugin = %policy.name(), "health plugin failed ({failure:?}); built-in check applies");
                self.instance = None;
                builtin
            }
        }
    }
}

/// One probe over a fresh connection: the status and, when asked, up to
/// `body_limit` bytes of the body.
async fn probe(target: &Target, config: &HealthConfig) -> Result<(u16, Option<Vec<u8>>), String> {
    // HTTP/1.1 always, over TLS where the backend has it.
    let dialed = target
        .endpoint
        .dial(config.timeout, true)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(dialed.stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method(config.method.as_str())
        .uri(config.path.as_str())
        .header(http::header::HOST, target.host.clone())
        .header(http::header::USER_AGENT, "switchyard-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    if config.body_limit == 0 {
        return Ok((status, None));
    }
    let limit = config.body_limit as usize;
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while out.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let take = data.len().min(limit - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
            Some(Err(e)) => return Err(format!("body: {e}")),
            None => break,
        }
    }
    Ok((status, Some(out)))
}
