//! Reload latency, end to end on loopback: from writing a changed plugin
//! (one that must be compiled) to the first request it serves, and the time
//! to start serving with 10 plugins from the on-disk cache.
//! Run: `./scripts/build-plugins.sh && cargo bench -p switchyard-benches --bench reload`.

use std::time::{Duration, Instant};
use switchyard_tests::*;

const SWAPS: usize = 20;
const STARTS: usize = 7;

/// Appends a custom section, so the bytes (and their hash) are new and the
/// proxy must compile them, while the component behaves the same.
fn variant(component: &[u8], tag: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"switchyard-bench";
    let payload = format!("{tag}-{}", std::process::id());
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn show(what: &str, v: &[Duration]) {
    let (min, max) = (v.iter().min().copied(), v.iter().max().copied());
    println!(
        "{what:<55} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   (n = {})",
        median(v.to_vec()).as_secs_f64() * 1e3,
        min.unwrap_or_default().as_secs_f64() * 1e3,
        max.unwrap_or_default().as_secs_f64() * 1e3,
        v.len()
    );
}

async fn write_to_served() -> Vec<Duration> {
    let (cheap, fast) = (mock("cheap"), mock("fast"));
    let config = format!(
        "[pools.p]\nbackends = [{}, {}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {{ plugin = \"router.wasm\" }}\n",
        backend_entry(&cheap, r#"tier = "cheap""#),
        backend_entry(&fast, r#"tier = "fast""#),
    );
    let versions = [
        (plugin_bytes("priority-router.wasm"), "fast"),
        (plugin_bytes("fixture-trap.wasm"), "cheap"),
    ];
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let initial = variant(&versions[1].0, usize::MAX);
    std::fs::write(dir.path().join("router.wasm"), initial).unwrap_or_else(|e| panic!("{e}"));
    let proxy = TestProxy::start_in(dir.path(), &config);
    let mut times = Vec::new();
    for swap in 0..SWAPS {
        let (bytes, expected) = &versions[swap % 2];
        let bytes = variant(bytes, swap);
        let started = Instant::now();
        std::fs::write(proxy.plugin_path("router.wasm"), bytes).unwrap_or_else(|e| panic!("{e}"));
        loop {
            let r = get(&proxy.url("/x"), &[("x-priority", "high")]).await;
            if r.backend() == *expected {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "swap {swap} never served"
            );
        }
        times.push(started.elapsed());
    }
    times
}

fn start_with_ten_plugins() -> (Duration, Vec<Duration>) {
    let b = mock("b");
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    let base = plugin_bytes("round-robin.wasm");
    let mut config = format!("[pools.p]\nbackends = [{}]\n", backend_entry(&b, ""));
    for i in 0..10 {
        std::fs::write(dir.join(format!("p{i}.wasm")), variant(&base, 1000 + i))
            .unwrap_or_else(|e| panic!("{e}"));
        config.push_str(&format!(
            "\n[[routes]]\nname = \"r{i}\"\nmatch = {{ path_prefix = \"/r{i}\" }}\npool = \"p\"\nrouter = {{ plugin = \"p{i}.wasm\" }}\n"
        ));
    }
    let started = Instant::now();
    drop(TestProxy::start_in(dir, &config));
    let cold = started.elapsed();
    let warm = (0..STARTS)
        .map(|_| {
            let started = Instant::now();
            let proxy = TestProxy::start_in(dir, &config);
            let ready = started.elapsed();
            drop(proxy);
            ready
        })
        .collect();
    (cold, warm)
}

fn main() {
    // `cargo bench` passes `--bench`; no filtering is offered.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let swaps = runtime.block_on(write_to_served());
    show("plugin write -> first request served (new compile)", &swaps);
    let (cold, warm) = start_with_ten_plugins();
    show("start with 10 plugins, nothing cached (compiles)", &[cold]);
    show("start with 10 plugins from the on-disk cache", &warm);
}
