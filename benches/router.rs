//! Cost of one routing decision: the same policy compiled natively and run
//! as a Wasm component through the host's plugin runtime, at 2, 16 and 64
//! backends. Run: `./scripts/build-plugins.sh && cargo bench -p switchyard-benches`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;
use switchyard::balance::{Breaker, Health, LoadSnapshot};
use switchyard::config::FailurePolicy;
use switchyard::plugin::{PluginRuntime, RouterInstance, RouterPlugin, RouterSpec, wit};
use switchyard::pool::push_load_words;
use switchyard_sdk as sdk;
use switchyard_sdk::Router;

const SIZES: [u32; 3] = [2, 16, 64];

fn tier(i: u32) -> &'static str {
    if i.is_multiple_of(2) { "fast" } else { "cheap" }
}

fn wasm_router(
    runtime: &PluginRuntime,
    file: &str,
    n: u32,
) -> (std::sync::Arc<RouterPlugin>, RouterInstance) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let spec = RouterSpec {
        file: dir.join(file),
        route: "bench".into(),
        config: Vec::new(),
        on_failure: FailurePolicy::FailOpen,
        deadline: Duration::from_millis(10),
        memory_mb: 16,
        body_peek: 0,
        backends: (0..n)
            .map(|i| wit::BackendInfo {
                id: i,
                name: format!("b{i}"),
                address: format!("127.0.0.1:{}", 9000 + i),
                weight: 1,
                labels: vec![("tier".into(), tier(i).into())],
            })
            .collect(),
    };
    let plugin = RouterPlugin::load(runtime, spec)
        .unwrap_or_else(|e| panic!("{e}; build the plugins with ./scripts/build-plugins.sh"));
    let instance = plugin
        .instantiate()
        .unwrap_or_else(|e| panic!("instantiate: {e}"));
    (plugin, instance)
}

/// Packed loads as the proxy builds them for each decision.
fn wasm_loads(n: u32) -> Vec<u32> {
    let mut words = Vec::new();
    for l in native_loads(n) {
        let snapshot = LoadSnapshot {
            in_flight: l.in_flight,
            ewma_latency_us: l.ewma_latency_us,
            ewma_ttfb_us: l.ewma_ttfb_us,
            error_rate: 0,
            health: Health::Healthy,
            breaker: Breaker::Closed,
            load_score: 0,
            remaining_requests: l.remaining_requests(),
            remaining_tokens: None,
            quota_reset_ms: 0,
        };
        push_load_words(&mut words, l.id, &snapshot);
    }
    words
}

fn native_loads(n: u32) -> Vec<sdk::BackendLoad> {
    (0..n)
        .map(|i| {
            let mut l = sdk::BackendLoad::idle(i);
            l.in_flight = (i * 7) % 5;
            l.ewma_latency_us = 1000 + i * 13;
            l.ewma_ttfb_us = 500 + i;
            l.set_remaining_requests(Some(1000));
            l
        })
        .collect()
}

fn native_infos(n: u32) -> Vec<sdk::BackendInfo> {
    (0..n)
        .map(|i| sdk::BackendInfo::new(i, &format!("b{i}"), &[("tier", tier(i))]))
        .collect()
}

fn decisions(c: &mut Criterion) {
    let runtime = PluginRuntime::new(None).unwrap_or_else(|e| panic!("runtime: {e}"));
    let config = sdk::Config::default();
    let mut group = c.benchmark_group("decision");
    for n in SIZES {
        let loads = wasm_loads(n);
        let native = native_loads(n);

        let wasm_req = wit::Request {
            method: wit::Method::Post,
            client_ip: wit::IpAddress::V4(0x7f00_0001),
        };
        let (_plugin, mut instance) = wasm_router(&runtime, "priority-router.wasm", n);
        group.bench_with_input(BenchmarkId::new("priority-router/wasm", n), &n, |b, _| {
            b.iter(|| {
                let attributes = vec![wit::AttributeValue::Value("high".to_string())];
                black_box(instance.route(wasm_req, black_box(&loads), attributes))
            })
        });
        let mut router = priority_router::PriorityRouter::init("bench", &config)
            .unwrap_or_else(|e| panic!("{e}"));
        router.set_backends(&native_infos(n));
        let native_req = sdk::Request::new(&[Some("high")]);
        group.bench_with_input(BenchmarkId::new("priority-router/native", n), &n, |b, _| {
            b.iter(|| black_box(router.route(black_box(&native_req), black_box(&native))))
        });

        let bare_req = wit::Request {
            method: wit::Method::Get,
            client_ip: wit::IpAddress::V4(0x7f00_0001),
        };
        let (_plugin, mut instance) = wasm_router(&runtime, "round-robin.wasm", n);
        group.bench_with_input(BenchmarkId::new("round-robin/wasm", n), &n, |b, _| {
            b.iter(|| black_box(instance.route(bare_req, black_box(&loads), Vec::new())))
        });
        let mut router =
            round_robin::RoundRobin::init("bench", &config).unwrap_or_else(|e| panic!("{e}"));
        let native_req = sdk::Request::new(&[]);
        group.bench_with_input(BenchmarkId::new("round-robin/native", n), &n, |b, _| {
            b.iter(|| black_box(router.route(black_box(&native_req), black_box(&native))))
        });
    }
    group.finish();
}

/// The floor of a plugin call: round robin over an empty pool (one
/// `cabi_realloc` entry for the empty list, the call, a compact answer).
fn call_floor(c: &mut Criterion) {
    let runtime = PluginRuntime::new(None).unwrap_or_else(|e| panic!("runtime: {e}"));
    let (_plugin, mut instance) = wasm_router(&runtime, "round-robin.wasm", 0);
    let request = wit::Request {
        method: wit::Method::Get,
        client_ip: wit::IpAddress::V4(0x7f00_0001),
    };
    c.bench_function("call-floor/round-robin/wasm/0", |b| {
        b.iter(|| black_box(instance.route(request, &[], Vec::new())))
    });
    // The same call, and a 16-backend decision, compiled without epoch
    // checks: what the per-call deadline costs.
    let unbounded =
        PluginRuntime::with_deadlines(None, false).unwrap_or_else(|e| panic!("runtime: {e}"));
    let (_plugin, mut free) = wasm_router(&unbounded, "round-robin.wasm", 0);
    c.bench_function("call-floor/round-robin/wasm/0/no-deadline", |b| {
        b.iter(|| black_box(free.route(request, &[], Vec::new())))
    });
    let loads = wasm_loads(16);
    let (_p, mut with) = wasm_router(&runtime, "priority-router.wasm", 16);
    let (_q, mut without) = wasm_router(&unbounded, "priority-router.wasm", 16);
    c.bench_function("deadline/priority-router/wasm/16/with", |b| {
        b.iter(|| {
            black_box(with.route(
                request,
                &loads,
                vec![wit::AttributeValue::Value("high".into())],
            ))
        })
    });
    c.bench_function("deadline/priority-router/wasm/16/without", |b| {
        b.iter(|| {
            black_box(without.route(
                request,
                &loads,
                vec![wit::AttributeValue::Value("high".into())],
            ))
        })
    });
}

/// Loading a plugin: compiling it, loading it from the on-disk cache, and
/// creating an instance (what each worker does per plugin version).
fn loading(c: &mut Criterion) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/priority-router.wasm");
    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    group.bench_function("engine-only", |b| {
        b.iter(|| black_box(PluginRuntime::new(None).unwrap_or_else(|e| panic!("{e}"))))
    });
    group.bench_function("compile/priority-router", |b| {
        b.iter(|| {
            let runtime = PluginRuntime::new(None).unwrap_or_else(|e| panic!("{e}"));
            black_box(
                runtime
                    .load(&file, "router")
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        })
    });
    let cache = std::env::temp_dir().join(format!("switchyard-bench-cache-{}", std::process::id()));
    PluginRuntime::new(Some(cache.clone()))
        .unwrap_or_else(|e| panic!("runtime: {e}"))
        .load(&file, "router")
        .unwrap_or_else(|e| panic!("fill cache: {e}"));
    group.bench_function("from-disk-cache/priority-router", |b| {
        b.iter(|| {
            let runtime = PluginRuntime::new(Some(cache.clone())).unwrap_or_else(|e| panic!("{e}"));
            let loaded = runtime
                .load(&file, "router")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(loaded.0.from_cache);
            black_box(loaded);
        })
    });
    let runtime = PluginRuntime::new(None).unwrap_or_else(|e| panic!("{e}"));
    let (plugin, _) = wasm_router(&runtime, "priority-router.wasm", 16);
    group.bench_function("instantiate+init/priority-router/16", |b| {
        b.iter(|| black_box(plugin.instantiate().unwrap_or_else(|e| panic!("{e}"))))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&cache);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = decisions, call_floor, loading
}
criterion_main!(benches);
