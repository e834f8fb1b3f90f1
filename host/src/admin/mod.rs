//! The admin listener: Prometheus metrics, live status as JSON, and a
//! health endpoint for orchestrators. Runs on its own thread, apart from the
//! proxy workers.

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
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// Binds `addr` and serves admin requests on a thread of its own.
pub fn start(addr: SocketAddr, reloader: Arc<Reloader>) -> std::io::Result<SocketAddr> {
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
                    let reloader = reloader.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let reloader = reloader.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(&reloader, &req)) }
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

fn handle(reloader: &Reloader, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            prometheus().render(),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/status" => {
            let table = reloader.shared.table.load();
            let mut status = status_json(&table);
            status["reloads"] = json!(reloader.history());
            respond(StatusCode::OK, "application/json", status.to_string())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /status or /healthz\n".into(),
        ),
    }
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
            json!({
                "name": r.name, "pool": r.pool.name, "router": plugin,
                "limits": limits, "fallback": fallback,
                "retries": { "attempts": r.retries.attempts, "on_429": r.retries.on_429, "on_5xx": r.retries.on_5xx },
            })
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
            let breaker = p.breaker.as_ref().map(|x| plugin(&x.component, x.name()));
            json!({
                "name": p.name, "backends": backends, "max_in_flight": p.max_in_flight,
                "health": health, "breaker": breaker,
            })
        })
        .collect();
    json!({ "routes": routes, "pools": pools })
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
