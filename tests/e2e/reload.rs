//! Hot reload under load: plugins and config change while requests flow,
//! and no request fails.

use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;
use switchyard_tests::*;

const SETTLE: Duration = Duration::from_secs(10);

fn tiered(cheap: &MockBackend, fast: &MockBackend, plugin: &str) -> String {
    format!(
        "[pools.p]\nbackends = [{}, {}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {{ plugin = \"{plugin}\" }}\n",
        backend_entry(cheap, r#"tier = "cheap""#),
        backend_entry(fast, r#"tier = "fast""#),
    )
}

/// The backend a high-priority request lands on right now.
async fn served_by(proxy: &TestProxy) -> String {
    get(&proxy.url("/x"), &[("x-priority", "high")])
        .await
        .backend()
        .to_string()
}

async fn reload_events(proxy: &TestProxy) -> Vec<serde_json::Value> {
    proxy.status().await["reloads"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A router plugin replaced 50 times, alternating between two versions that
/// route differently, while four clients send requests without pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_swapped_fifty_times_under_load_drops_nothing() {
    let (cheap, fast) = (mock("cheap"), mock("fast"));
    // `fixture-trap` sends everything to backend 0 (cheap); `priority-router`
    // sends high priority to the fast tier.
    let versions = [
        (plugin_bytes("priority-router.wasm"), "fast"),
        (plugin_bytes("fixture-trap.wasm"), "cheap"),
    ];
    let proxy = TestProxy::start(&tiered(&cheap, &fast, "fixture-trap.wasm"));
    std::fs::copy(
        plugin_dir().join("fixture-trap.wasm"),
        proxy.plugin_path("router.wasm"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    proxy.write_config(&tiered(&cheap, &fast, "router.wasm"));
    eventually(SETTLE, "the config naming router.wasm", || async {
        proxy.status().await["routes"][0]["router"]["file"] == "router.wasm"
    })
    .await;

    let load = Load::start(proxy.url("/x"), &[("x-priority", "high")], 4);
    for swap in 0..50 {
        let (bytes, expected) = &versions[swap % 2];
        // A plain overwrite, as `cp` does it: truncate, then write.
        std::fs::write(proxy.plugin_path("router.wasm"), bytes).unwrap_or_else(|e| panic!("{e}"));
        eventually(
            SETTLE,
            &format!("swap {swap} to route to {expected}"),
            || async { served_by(&proxy).await == *expected },
        )
        .await;
    }
    let stats = load.stop().await;
    assert_eq!(
        stats.failed, 0,
        "failed requests, first: {:?}",
        stats.first_failure
    );
    assert!(stats.ok > 100, "load ran: {stats:?}");
    let events = reload_events(&proxy).await;
    assert!(events.iter().any(|e| e["ok"] == true), "{events:?}");
}

/// Garbage, a truncated component and one built for another interface
/// version land in the plugin directory under load: each is refused and
/// reported, the running version keeps serving, no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugins_are_refused_while_the_old_version_serves() {
    let (cheap, fast) = (mock("cheap"), mock("fast"));
    let proxy = TestProxy::start(&tiered(&cheap, &fast, "priority-router.wasm"));
    assert_eq!(served_by(&proxy).await, "fast");
    let load = Load::start(proxy.url("/x"), &[("x-priority", "high")], 4);

    let good = plugin_bytes("priority-router.wasm");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage.wasm",
            b"definitely not wasm".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "priority-router.wasm",
            good[..good.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "priority-router.wasm",
            plugin_bytes("fixture-future-version.wasm"),
            "built for switchyard:policy@9.0.0, but this host speaks switchyard:policy 0.1.0–0.3.0",
        ),
    ];
    for (file, bytes, needle) in cases {
        let before = reload_events(&proxy).await.len();
        std::fs::write(proxy.plugin_path(file), &bytes).unwrap_or_else(|e| panic!("{e}"));
        eventually(SETTLE, &format!("{file} to be refused"), || async {
            reload_events(&proxy).await[before..].iter().any(|e| {
                e["ok"] == false
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(needle) && m.contains(file))
            })
        })
        .await;
        assert_eq!(
            served_by(&proxy).await,
            "fast",
            "the old version serves after {file}"
        );
    }
    let stats = load.stop().await;
    assert_eq!(
        stats.failed, 0,
        "failed requests, first: {:?}",
        stats.first_failure
    );
    assert!(stats.ok > 0);
    let status = proxy.status().await;
    assert_eq!(
        status["routes"][0]["router"]["version"]
            .as_str()
            .map(|v| &v[..12]),
        Some(hash_prefix(&good).as_str())
    );
}

/// The version the proxy reports for a plugin: the start of its SHA-256,
/// computed by the proxy's own loader.
fn hash_prefix(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("p.wasm");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    let runtime = switchyard::plugin::PluginRuntime::new(None).unwrap_or_else(|e| panic!("{e}"));
    let loaded = runtime
        .load(&path, "router")
        .unwrap_or_else(|e| panic!("{e}"));
    loaded.0.hash[..12].to_string()
}

/// Adding a backend and a route, then an invalid config, while requests flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_under_load() {
    let (a, b) = (mock("a"), mock("b"));
    let one = |extra: &str| {
        format!(
            "[pools.p]\nbackends = [{}{extra}]\n\n[[routes]]\nname = \"first\"\nmatch = {{ path_prefix = \"/first\" }}\npool = \"p\"\n",
            backend_entry(&a, "")
        )
    };
    let proxy = TestProxy::start(&one(""));
    let load = Load::start(proxy.url("/first/x"), &[], 4);
    assert_eq!(get(&proxy.url("/second/x"), &[]).await.status, 404);

    // Add backend b and a second route using round robin.
    let grown = format!(
        "{}\n[[routes]]\nname = \"second\"\nmatch = {{ path_prefix = \"/second\" }}\npool = \"p\"\nrouter = {{ plugin = \"round-robin.wasm\" }}\n",
        one(&format!(", {}", backend_entry(&b, "")))
    );
    proxy.write_config(&grown);
    eventually(SETTLE, "the second route", || async {
        get(&proxy.url("/second/x"), &[]).await.status == 200
    })
    .await;
    eventually(SETTLE, "traffic on the new backend", || async {
        b.requests() > 0
    })
    .await;

    // An invalid config is refused whole, naming the line; both routes stay.
    let broken = grown.replace("pool = \"p\"\nrouter", "pool = \"nope\"\nrouter");
    proxy.write_config(&broken);
    eventually(SETTLE, "the invalid config to be refused", || async {
        reload_events(&proxy).await.iter().any(|e| {
            e["ok"] == false
                && e["message"].as_str().is_some_and(|m| {
                    m.contains("switchyard.toml:")
                        && m.contains("pool `nope`, which is not defined")
                })
        })
    })
    .await;
    assert_eq!(get(&proxy.url("/second/x"), &[]).await.status, 200);
    let stats = load.stop().await;
    assert_eq!(
        stats.failed, 0,
        "failed requests, first: {:?}",
        stats.first_failure
    );
    assert_eq!(
        proxy.status().await["pools"][0]["backends"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

/// Live state survives a reload: a request in flight still counts on the
/// new table's backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_state_survives_reload() {
    let mut slow = MockOptions::new("slow");
    slow.latency = Duration::from_millis(1500);
    let b = mock_with(slow);
    let config = |name: &str| {
        format!(
            "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"{name}\"\npool = \"p\"\n",
            backend_entry(&b, "")
        )
    };
    let proxy = TestProxy::start(&config("before"));
    let url = proxy.url("/x");
    let pending = tokio::spawn(async move { get(&url, &[]).await.status });
    eventually(SETTLE, "the request in flight", || async {
        proxy.status().await["pools"][0]["backends"][0]["state"]["in_flight"] == 1
    })
    .await;
    proxy.write_config(&config("after"));
    eventually(SETTLE, "the reload", || async {
        proxy.status().await["routes"][0]["name"] == "after"
    })
    .await;
    assert_eq!(
        proxy.status().await["pools"][0]["backends"][0]["state"]["in_flight"],
        1
    );
    assert_eq!(pending.await.unwrap_or_else(|e| panic!("{e}")), 200);
    assert_eq!(
        proxy.status().await["pools"][0]["backends"][0]["state"]["in_flight"],
        0
    );
}

/// A 30-second stream started before a reload finishes intact after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_stream_outlives_a_reload() {
    let mut options = MockOptions::new("streamer");
    options.chunk_interval = Duration::from_secs(1);
    let b = mock_with(options);
    let config = |plugin: &str| {
        format!(
            "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {{ plugin = \"{plugin}\" }}\n",
            backend_entry(&b, "")
        )
    };
    let proxy = TestProxy::start(&config("round-robin.wasm"));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let uri = proxy
        .url("/sse?n=31")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = client.get(uri).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("stream broke: {e}"))?;
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
        }
        Ok::<_, String>(text)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.write_config(&config("priority-router.wasm"));
    eventually(SETTLE, "the reload", || async {
        proxy.status().await["routes"][0]["router"]["file"] == "priority-router.wasm"
    })
    .await;
    let text = reader
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..31 {
        assert!(
            text.contains(&format!("data: {{\"event\":{i}}}\n\n")),
            "event {i} missing: {text}"
        );
    }
}

/// A deleted plugin file leaves the loaded version serving until the config
/// stops naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_plugin_keeps_serving_until_unreferenced() {
    let (cheap, fast) = (mock("cheap"), mock("fast"));
    let proxy = TestProxy::start(&tiered(&cheap, &fast, "priority-router.wasm"));
    let load = Load::start(proxy.url("/x"), &[("x-priority", "high")], 2);
    let before = reload_events(&proxy).await.len();
    std::fs::remove_file(proxy.plugin_path("priority-router.wasm"))
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(SETTLE, "the reload after the deletion", || async {
        reload_events(&proxy).await.len() > before
    })
    .await;
    assert_eq!(
        served_by(&proxy).await,
        "fast",
        "the loaded version still routes"
    );
    assert_eq!(
        proxy.status().await["routes"][0]["router"]["file"],
        "priority-router.wasm"
    );

    // Once the config no longer names it, the built-in router takes over.
    proxy.write_config(&format!(
        "[pools.p]\nbackends = [{}, {}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(&cheap, ""),
        backend_entry(&fast, "")
    ));
    eventually(SETTLE, "the route without a plugin", || async {
        proxy.status().await["routes"][0]["router"].is_null()
    })
    .await;
    let stats = load.stop().await;
    assert_eq!(
        stats.failed, 0,
        "failed requests, first: {:?}",
        stats.first_failure
    );
}

/// A config naming a plugin that is not there yet is refused; when the file
/// arrives, the config is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_waiting_for_its_plugin_applies_when_the_file_arrives() {
    let (cheap, fast) = (mock("cheap"), mock("fast"));
    let proxy = TestProxy::start(&tiered(&cheap, &fast, "round-robin.wasm"));
    proxy.write_config(&tiered(&cheap, &fast, "late.wasm"));
    eventually(
        SETTLE,
        "the config to be refused for the missing file",
        || async {
            reload_events(&proxy).await.iter().any(|e| {
                e["ok"] == false
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("late.wasm: cannot read"))
            })
        },
    )
    .await;
    assert_eq!(
        proxy.status().await["routes"][0]["router"]["file"],
        "round-robin.wasm"
    );
    std::fs::write(
        proxy.plugin_path("late.wasm"),
        plugin_bytes("priority-router.wasm"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eventually(SETTLE, "the waiting config to apply", || async {
        proxy.status().await["routes"][0]["router"]["file"] == "late.wasm"
    })
    .await;
    assert_eq!(served_by(&proxy).await, "fast");
}

/// A config mounted the way Kubernetes mounts a ConfigMap: the file is a
/// link through `..data`, and an update points `..data` at a new directory
/// in one rename. The proxy picks the new config up like a local edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_swap_reloads_the_config() {
    use std::os::unix::fs::symlink;
    let (a, b) = (mock("a"), mock("b"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path();
    let version = |name: &str, backend: &MockBackend| {
        let at = root.join(name);
        std::fs::create_dir(&at).unwrap_or_else(|e| panic!("{e}"));
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\ndrain_timeout = \"1s\"\n\n\
             [plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\n\
             [pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            plugin_dir().display(),
            root.join("cache").display(),
            backend_entry(backend, "")
        );
        std::fs::write(at.join("switchyard.toml"), config).unwrap_or_else(|e| panic!("{e}"));
    };
    version("..2026_11_24_01", &a);
    symlink("..2026_11_24_01", root.join("..data")).unwrap_or_else(|e| panic!("{e}"));
    symlink("..data/switchyard.toml", root.join("switchyard.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = switchyard::config::Config::load(&root.join("switchyard.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let proxy = switchyard::Switchyard::start(&config).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/x", proxy.addr());
    assert_eq!(get(&url, &[]).await.backend(), "a");

    // The kubelet's updates: new directory, new link, one rename, old one
    // gone. Twice, as the first update removes the directory the file
    // resolved to at start.
    let c = mock("c");
    let mut current = "..2026_11_24_01".to_string();
    for (next, backend) in [("..2026_11_24_02", &b), ("..2026_11_24_03", &c)] {
        version(next, backend);
        symlink(next, root.join("..data_tmp")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(root.join("..data_tmp"), root.join("..data"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_dir_all(root.join(&current)).unwrap_or_else(|e| panic!("{e}"));
        current = next.to_string();
        eventually(SETTLE, "the swapped config to serve", || async {
            get(&url, &[]).await.backend() == backend.name
        })
        .await;
    }
    proxy.shutdown();
}

/// Edge values a config may hold by mistake or by malice.
const EDGE_VALUES: &[&str] = &[
    "0",
    "-1",
    "18446744073709551615",
    "99999999999999999999",
    "1e308",
    "nan",
    "\"\"",
    "\"10\"",
    "\"99999999999999999999h\"",
    "\"18446744073709551615s\"",
    "\"1ms\"",
    "\"0s\"",
    "\"-5s\"",
    "\"1.5MiB\"",
    "\"999999TiB\"",
    "\"ünïcødé\"",
    "\"127.0.0.1\"",
    "\"[::1]:99999\"",
    "true",
    "[]",
    "[\"a\", 1]",
    "{}",
    "{ env = \"NO_SUCH_VARIABLE\" }",
    "{ file = \"/no/such/file\" }",
];

/// Keys placed into the config's tables with edge values.
const FUZZ_KEYS: &[&str] = &[
    "max_fails",
    "fail_timeout",
    "max_in_flight",
    "weight",
    "protocol",
    "attempts",
    "budget_ratio",
    "first_byte",
    "total",
    "connect",
    "deadline",
    "memory_mb",
    "body_peek",
    "queue",
    "queue_timeout",
    "strip_prefix",
    "set_headers",
    "address",
    "tls",
    "discover",
];

/// `good` with one line changed: a value replaced, a key added with an edge
/// value, a line dropped or duplicated, or a line cut short.
fn mutated(good: &str, seed: &mut u64) -> String {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed as usize
    };
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    let at = next() % lines.len();
    let edge = EDGE_VALUES[next() % EDGE_VALUES.len()];
    match next() % 5 {
        0 => {
            if let Some((key, _)) = lines[at].split_once(" = ") {
                lines[at] = format!("{key} = {edge}");
            }
        }
        1 => {
            let key = FUZZ_KEYS[next() % FUZZ_KEYS.len()];
            if lines[at].ends_with('}') && lines[at].contains(" = {") {
                let line = lines[at].trim_end_matches('}').trim_end().to_string();
                lines[at] = format!("{line}, {key} = {edge} }}");
            } else {
                lines.insert(at, format!("{key} = {edge}"));
            }
        }
        2 => {
            lines.remove(at);
        }
        3 => {
            let line = lines[at].clone();
            lines.insert(at, line);
        }
        _ => {
            let cut = lines[at].len() / 2;
            let cut = (0..=cut)
                .rev()
                .find(|&c| lines[at].is_char_boundary(c))
                .unwrap_or(0);
            lines[at].truncate(cut);
        }
    }
    lines.join("\n")
}

/// Mutated configs loaded into a running proxy, one after another: each
/// is applied or refused with a message, the proxy answers every request
/// meanwhile, and the good config serves again at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_configs_reloaded_live_never_take_the_proxy_down() {
    let (a, b) = (mock("a"), mock("b"));
    let good = format!(
        "[pools.p]\nmax_fails = 3\nfail_timeout = \"2s\"\nbackends = [{}, {}]\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\ntimeouts = {{ connect = \"1s\", first_byte = \"2s\" }}\n\
         retries = {{ attempts = 2, budget_ratio = 0.2 }}\nlimits = {{ max_in_flight = 64, queue = 8 }}\n\
         router = {{ plugin = \"round-robin.wasm\", deadline = \"5ms\", memory_mb = 8 }}\n",
        backend_entry(&a, ""),
        backend_entry(&b, "")
    );
    let proxy = TestProxy::start(&good);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let (mut applied, mut refused) = (0, 0);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..150 {
        let text = mutated(&good, &mut seed);
        proxy.write_config(&text);
        let outcome = tokio::task::block_in_place(|| proxy.proxy().reloader.reload("fuzz"));
        match outcome {
            Ok(()) => applied += 1,
            Err(e) => {
                assert!(!e.trim().is_empty(), "case {i}: an empty error for\n{text}");
                refused += 1;
            }
        }
        // Whatever was loaded, the proxy answers: `send` fails the test on
        // a dead socket; the status may be an error if the mutation broke
        // the route.
        let r = send("GET", &proxy.url("/ok"), &[], Bytes::new()).await;
        *statuses.entry(r.status.as_u16()).or_insert(0) += 1;
    }
    eprintln!("{applied} mutated configs applied, {refused} refused; answers {statuses:?}");
    assert!(
        applied > 10 && refused > 10,
        "{applied} applied, {refused} refused"
    );
    proxy.write_config(&good);
    tokio::task::block_in_place(|| proxy.proxy().reloader.reload("fuzz"))
        .expect("the good config reloads");
    assert_eq!(get(&proxy.url("/ok"), &[]).await.status, 200);
}
