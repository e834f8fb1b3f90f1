//! The admin listener: Prometheus metrics, live status as JSON, and a
//! health endpoint for orchestrators. Runs on its own thread, apart from the
//! proxy workers.

mod jobs;
mod rollout;

use crate::reload::Reloader;
use crate::route::RouteTable;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Histograms (all in seconds) get buckets from 100 µs to 10 min:
        // plugin calls at the low end, agent runs at the high end.
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ];
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&buckets) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("histogram buckets refused, exporting summaries: {e}");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Histogram samples pile up until upkeep folds them into buckets;
        // without it, memory grows with every request when nobody scrapes.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("switchyard-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start metrics upkeep; histograms grow until scraped: {e}");
        }
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// Binds `addr` and serves admin requests on a thread of its own. With a
/// `token`, every request but `/healthz` and the dashboard page must carry
/// it as `authorization: Bearer TOKEN`; the dashboard takes it from its URL
/// fragment (`/dashboard#token=TOKEN`) and sends it that way.
pub fn start(
    addr: SocketAddr,
    reloader: Arc<Reloader>,
    token: Option<String>,
) -> std::io::Result<SocketAddr> {
    let token: Option<Arc<str>> = token.map(Into::into);
    prometheus();
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("switchyard-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!("admin: cannot start runtime: {e}"),
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (reloader, token) = (reloader.clone(), token.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let reloader = reloader.clone();
                            let allowed = authorized(token.as_deref(), &req);
                            async move {
                                if allowed
                                    && req.method() == http::Method::POST
                                    && req.uri().path().starts_with("/jobs/")
                                {
                                    return Ok(jobs::post_event(&reloader, req).await);
                                }
                                Ok::<_, std::convert::Infallible>(if allowed {
                                    handle(&reloader, &req)
                                } else {
                                    let mut r = respond(
                                        StatusCode::UNAUTHORIZED,
                                        "text/plain",
                                        "admin token required\n".into(),
                                    );
                                    r.headers_mut().insert(
                                        header::WWW_AUTHENTICATE,
                                        header::HeaderValue::from_static("Bearer"),
                                    );
                                    r
                                })
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })?;
    tracing::info!(%bound, "admin listening");
    Ok(bound)
}

/// Whether `req` may see the admin API: no token set, `/healthz`, the
/// dashboard page itself (static; it asks for the token and sends it on
/// its API calls), or the token as a bearer header. Never in the query
/// string, which ends up in access logs and browser history.
fn authorized(token: Option<&str>, req: &Request<Incoming>) -> bool {
    let Some(token) = token else { return true };
    if matches!(req.uri().path(), "/healthz" | "/dashboard") {
        return true;
    }
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.as_bytes(), token.as_bytes()))
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn handle(reloader: &Reloader, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            publish_state(&reloader.shared.table.load());
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                prometheus().render() + &crate::histogram::render(),
            )
        }
        "/plugins" => {
            let table = reloader.shared.table.load();
            respond(
                StatusCode::OK,
                "application/json",
                plugins_json(&table).to_string(),
            )
        }
        "/" | "/dashboard" => {
            let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD.into());
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        path if path.starts_with("/runs/") => run_totals(reloader, &path["/runs/".len()..]),
        path if path.starts_with("/shadow/") => {
            let table = reloader.shared.table.load();
            match rollout::shadow_json(&table, &path["/shadow/".len()..]) {
                Some(v) => respond(StatusCode::OK, "application/json", v.to_string()),
                None => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "no route of that name has a shadow router\n".into(),
                ),
            }
        }
        "/status" => {
            let table = reloader.shared.table.load();
            let mut status = status_json(&table);
            status["reloads"] = json!(reloader.history());
            status["shared_store"] = json!(reloader.shared_store());
            let cpus = reloader.shared.placement.cpus();
            status["workers"] = json!(cpus.iter().map(|c| json!({ "cpu": c })).collect::<Vec<_>>());
            respond(StatusCode::OK, "application/json", status.to_string())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /dashboard, /metrics, /status, /plugins, /shadow/<route> or /healthz\n".into(),
        ),
    }
}

/// `/runs/<id>`: a run's requests, tokens and estimated cost, summed over
/// every replica that shares the store.
fn run_totals(reloader: &Reloader, run: &str) -> Response<Full<Bytes>> {
    let table = reloader.shared.table.load();
    let Some(ledger) = &table.runs else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "runs are not counted (server.run_header is off)\n".into(),
        );
    };
    if !crate::shared::runs::is_run_id(run) {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "a run id is up to 128 letters, digits and -_.:\n".into(),
        );
    }
    match ledger.totals(run) {
        Ok(t) => respond(
            StatusCode::OK,
            "application/json",
            json!({
                "run": run, "requests": t.requests, "prompt_tokens": t.prompt_tokens,
                "completion_tokens": t.completion_tokens, "cost_usd": t.cost_microdollars as f64 / 1e6,
                "header": ledger.header.as_str(),
            })
            .to_string(),
        ),
        Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{e}\n")),
    }
}

/// The dashboard page: one self-contained file, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Sets the gauges of live backend state just before a scrape, so the data
/// path pays nothing for them.
fn publish_state(table: &RouteTable) {
    for r in &table.routes {
        if let Some(p) = &r.router {
            p.stats.publish();
        }
    }
    for p in &table.pools {
        if let Some(h) = p.health.as_ref().and_then(|h| h.plugin.as_ref()) {
            h.stats.publish();
        }
        for b in &p.breakers {
            b.stats.publish();
        }
        for b in &p.backends {
            let s = b.state.snapshot();
            let labels = [("pool", p.name.clone()), ("backend", b.name.clone())];
            metrics::gauge!("switchyard_backend_in_flight", &labels).set(f64::from(s.in_flight));
            metrics::gauge!("switchyard_backend_latency_ewma_seconds", &labels)
                .set(f64::from(s.ewma_latency_us) / 1e6);
            metrics::gauge!("switchyard_backend_ttfb_ewma_seconds", &labels)
                .set(f64::from(s.ewma_ttfb_us) / 1e6);
            metrics::gauge!("switchyard_backend_error_ratio", &labels)
                .set(f64::from(s.error_rate) / 1000.0);
            metrics::gauge!("switchyard_backend_health", &labels).set(f64::from(s.health as u8));
            metrics::gauge!("switchyard_breaker_state", &labels).set(f64::from(s.breaker as u8));
            metrics::gauge!("switchyard_backend_load_score", &labels).set(f64::from(s.load_score));
            if let Some(r) = s.remaining_requests {
                metrics::gauge!("switchyard_backend_quota_remaining_requests", &labels)
                    .set(r as f64);
            }
            if let Some(t) = s.remaining_tokens {
                metrics::gauge!("switchyard_backend_quota_remaining_tokens", &labels).set(t as f64);
            }
        }
    }
}

/// Every loaded plugin: routers by route, health checks and breakers by
/// pool, with version, load time, call counts and the last error.
pub fn plugins_json(table: &RouteTable) -> serde_json::Value {
    use crate::plugin::{CallStats, LoadedComponent};
    let entry = |kind: &str,
                 owner: String,
                 file: &str,
                 (c, interface): (&LoadedComponent, crate::plugin::Version),
                 stats: &CallStats,
                 quarantined: bool| {
        json!({
            "kind": kind, "owner": owner, "file": file, "version": c.hash,
            "interface": interface.to_string(),
            "loaded_at_unix": c.loaded_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "from_cache": c.from_cache,
            "calls": stats.calls(), "failures": stats.failures(), "last_error": stats.last_error(),
            "quarantined": quarantined,
        })
    };
    let mut out = Vec::new();
    for r in &table.routes {
        let roles = [
            ("router", r.router.as_ref()),
            (
                "router:canary-previous",
                r.canary.as_ref().map(|c| &c.previous),
            ),
            ("router:shadow", r.shadow.as_ref().map(|s| &s.plugin)),
        ];
        for (kind, p) in roles {
            if let Some(p) = p {
                out.push(entry(
                    kind,
                    format!("route:{}", r.name),
                    p.name(),
                    (&p.component, p.version),
                    &p.stats,
                    p.is_quarantined(),
                ));
            }
        }
    }
    for pool in &table.pools {
        if let Some(h) = pool.health.as_ref().and_then(|h| h.plugin.as_ref()) {
            out.push(entry(
                "health-check",
                format!("pool:{}", pool.name),
                h.name(),
                (&h.component, h.version),
                &h.stats,
                false,
            ));
        }
        for b in &pool.breakers {
            out.push(entry(
                "circuit-breaker",
                format!("pool:{}", pool.name),
                b.name(),
                (&b.component, b.version),
                &b.stats,
                false,
            ));
        }
    }
    json!(out)
}

/// Routes with their plugins and versions, pools with live backend state.
pub fn status_json(table: &RouteTable) -> serde_json::Value {
    let routes: Vec<_> = table
        .routes
        .iter()
        .map(|r| {
            let plugin = r.router.as_ref().map(|p| {
                json!({
                    "file": p.name(),
                    "version": p.component.hash,
                    "interface": p.version.to_string(),
                    "loaded_at_unix": p.component.loaded_at
                        .duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "from_cache": p.component.from_cache,
                    "on_failure": format!("{:?}", p.spec.on_failure),
                    "quarantined": p.is_quarantined(),
                })
            });
            let limits = r.admission.as_ref().map(|a| {
                json!({ "in_flight": a.in_flight(), "waiting": a.waiting() })
            });
            let fallback = r.fallback.as_ref().map(|f| {
                json!({ "pool": f.pool.as_ref().map(|p| p.name.clone()), "status": f.status })
            });
            let jobs = r.jobs.as_ref().map(|j| {
                let mut counts = j.counts.to_json();
                counts["max_in_flight"] = json!(j.settings.max_in_flight);
                counts["ttl_s"] = json!(j.settings.ttl.as_secs());
                counts["job_timeout_ms"] = json!(j.settings.job_timeout.as_millis() as u64);
                counts
            });
            let mut entry = json!({
                "name": r.name, "pool": r.pool.name, "router": plugin,
                "limits": limits, "fallback": fallback, "jobs": jobs,
                "retries": { "attempts": r.retries.attempts, "on_429": r.retries.on_429, "on_5xx": r.retries.on_5xx },
            });
            if let (Some(o), serde_json::Value::Object(more)) =
                (entry.as_object_mut(), rollout::route_status(r))
            {
                o.extend(more);
            }
            entry
        })
        .collect();
    let pools: Vec<_> = table
        .pools
        .iter()
        .map(|p| {
            let backends: Vec<_> = p
                .backends
                .iter()
                .map(|b| json!({
                    "id": b.id, "name": b.name, "address": b.address, "weight": b.weight,
                    "tls": b.endpoint.is_tls(), "protocol": format!("{:?}", b.endpoint.protocol).to_lowercase(),
                    "labels": b.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                    "state": b.state.snapshot(),
                    "breaker_open_ms": b.state.breaker_remaining_ms(),
                    "trial_permits": b.state.trial_permits(),
                }))
                .collect();
            let plugin = |c: &crate::plugin::LoadedComponent, file: &str| {
                json!({ "file": file, "version": c.hash })
            };
            let health = p.health.as_ref().map(|h| {
                json!({
                    "path": h.config.path, "interval_ms": h.config.interval.as_millis() as u64,
                    "plugin": h.plugin.as_ref().map(|x| plugin(&x.component, x.name())),
                })
            });
            let breakers: Vec<_> = p
                .breakers
                .iter()
                .map(|x| plugin(&x.component, x.name()))
                .collect();
            json!({
                "name": p.name, "backends": backends, "max_in_flight": p.max_in_flight,
                "health": health, "breakers": breakers,
            })
        })
        .collect();
    let jobs = table.jobs.as_ref().map(|store| {
        json!({ "store": store.describe(), "shared": store.is_shared(), "held_here": store.held() })
    });
    json!({ "routes": routes, "pools": pools, "jobs": jobs })
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}
