//! Plugins compiled against released interface versions keep loading: the
//! 0.1.0 and 0.2.0 components in `tests/compat/` (each built before the
//! next version existed) run in a proxy beside freshly built ones, as
//! routers, health checks and breakers, and each is reported with the
//! version it speaks.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_tests::*;

/// The compiled 0.1.0 plugins.
fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compat/policy@0.1.0")
}

/// A plugin directory with today's plugins, the 0.1.0 ones as
/// `v0_1-*.wasm` and the 0.2.0 ones as `v0_2-*.wasm`.
fn mixed_plugins() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(plugin_dir()).expect("plugins") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap_or_default()))
                .expect("copy");
        }
    }
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("compat");
    for (version, prefix) in [("0.1.0", "v0_1"), ("0.2.0", "v0_2")] {
        let folder = compat.join(format!("policy@{version}"));
        for entry in std::fs::read_dir(&folder).expect("tests/compat/policy@…") {
            let path = entry.expect("entry").path();
            let name = format!(
                "{prefix}-{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            std::fs::copy(&path, dir.path().join(name)).expect("copy");
        }
    }
    dir
}

async fn plugin_interfaces(proxy: &TestProxy) -> Vec<(String, String, String)> {
    let admin = proxy.proxy().admin_addr.expect("admin");
    let plugins = get(&format!("http://{admin}/plugins"), &[]).await.json();
    plugins
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (text("owner"), text("file"), text("interface"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_built_for_0_1_run_beside_0_2_ones() {
    let (cheap, fast) = (mock("cheap"), mock("fast"));
    let (small, large) = (mock("small"), mock("large"));
    let flaky = mock("flaky");
    for b in [&cheap, &fast, &flaky] {
        b.set_load_report(r#"{"cpu":0.2,"mem":0.3}"#);
    }
    let plugins = mixed_plugins();
    let config = format!(
        "[pools.tiers]\nmax_fails = 0\nbackends = [{}, {}, {}]\n\
         health = {{ path = \"/health\", interval = \"200ms\", body_limit = \"1KiB\", plugin = \"v0_1-resource-health.wasm\" }}\n\
         breaker = {{ plugin = \"v0_1-error-rate-breaker.wasm\", config = {{ min_requests = 5, window = \"5s\", cool_down = \"60s\" }} }}\n\n\
         [pools.models]\nbackends = [{}, {}]\n\n\
         [[routes]]\nname = \"old\"\nmatch = {{ path_prefix = \"/old\" }}\npool = \"tiers\"\n\
         router = {{ plugin = \"v0_1-priority-router.wasm\" }}\n\n\
         [[routes]]\nname = \"old-models\"\nmatch = {{ path_prefix = \"/v1\" }}\npool = \"models\"\n\
         router = {{ plugin = \"v0_1-model-router.wasm\", body_peek = \"4KiB\" }}\n\n\
         [[routes]]\nname = \"new\"\npool = \"tiers\"\nrouter = {{ plugin = \"round-robin.wasm\" }}\n",
        backend_entry(&cheap, r#"tier = "cheap""#),
        backend_entry(&fast, r#"tier = "fast""#),
        backend_entry(&flaky, r#"tier = "flaky""#),
        backend_entry(&small, r#"models = "small-model""#),
        backend_entry(&large, r#"models = "large-model""#),
    );
    let proxy = TestProxy::start_in(plugins.path(), &config);

    // Each plugin runs through the bindings of the version it was built for.
    let interfaces = plugin_interfaces(&proxy).await;
    for (owner, file, interface) in [
        (
            "route:old",
            "v0_1-priority-router.wasm",
            "switchyard:policy@0.1.0",
        ),
        (
            "route:old-models",
            "v0_1-model-router.wasm",
            "switchyard:policy@0.1.0",
        ),
        ("route:new", "round-robin.wasm", "switchyard:policy@0.3.0"),
        (
            "pool:tiers",
            "v0_1-resource-health.wasm",
            "switchyard:policy@0.1.0",
        ),
        (
            "pool:tiers",
            "v0_1-error-rate-breaker.wasm",
            "switchyard:policy@0.1.0",
        ),
    ] {
        assert!(
            interfaces.contains(&(owner.into(), file.into(), interface.into())),
            "{owner} {file} {interface} not in {interfaces:?}"
        );
    }

    // The 0.1.0 router reads its header attribute and decides as it did.
    for _ in 0..5 {
        let r = get(&proxy.url("/old/x"), &[("x-priority", "high")]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "fast"),
            "{}",
            r.text()
        );
    }
    // The 0.1.0 model router reads a body field; past the peek it is told
    // the field is absent, which is all 0.1.0 can say.
    let chat = |model: &str, filler: usize| {
        Bytes::from(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(filler)
        ))
    };
    let json = [("content-type", "application/json")];
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &json,
        chat("large-model", 10),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.backend()),
        (200, "large"),
        "{}",
        r.text()
    );
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &json,
        chat("large-model", 8192),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // The 0.1.0 health check turns load reports into health...
    fast.set_load_report(r#"{"cpu":0.99,"mem":0.3}"#);
    eventually(Duration::from_secs(5), "fast to turn unhealthy", || async {
        let status = proxy.status().await;
        status.to_string().contains("\"unhealthy\"")
    })
    .await;
    fast.set_load_report(r#"{"cpu":0.1,"mem":0.3}"#);
    // ...and the 0.1.0 breaker opens a failing backend, fed by the 0.2.0
    // router's traffic.
    flaky.fail_every(1);
    for _ in 0..30 {
        let _ = get(&proxy.url("/x"), &[]).await;
    }
    eventually(
        Duration::from_secs(5),
        "flaky's breaker to open",
        || async {
            let status = proxy.status().await;
            status["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
                .any(|b| b["name"] == "flaky" && b["state"]["breaker"] == "open")
        },
    )
    .await;
}

/// 0.2.0 components beside 0.3.0 ones: a router reading a body field
/// (and told `not-seen` past the peek), a router reading the whole prompt
/// as a body field, a breaker fed by a 0.3.0 router's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_built_for_0_2_run_beside_0_3_ones() {
    let (small, large) = (mock("small"), mock("large"));
    let (gpu_a, gpu_b, flaky) = (mock("gpu-a"), mock("gpu-b"), mock("flaky"));
    let plugins = mixed_plugins();
    let config = format!(
        "[pools.models]\nbackends = [{}, {}]\n\n\
         [pools.gpus]\nmax_fails = 0\nbackends = [{}, {}, {}]\n\
         breaker = {{ plugin = \"v0_2-error-rate-breaker.wasm\", config = {{ min_requests = 5, window = \"5s\", cool_down = \"60s\" }} }}\n\n\
         [[routes]]\nname = \"models\"\nmatch = {{ path_prefix = \"/v1\" }}\npool = \"models\"\n\
         router = {{ plugin = \"v0_2-model-router.wasm\", body_peek = \"4KiB\" }}\n\n\
         [[routes]]\nname = \"prefix\"\nmatch = {{ path_prefix = \"/prefix\" }}\npool = \"gpus\"\n\
         router = {{ plugin = \"v0_2-prefix-affinity.wasm\", body_peek = \"64KiB\", config = {{ block = 64 }} }}\n\n\
         [[routes]]\nname = \"new\"\npool = \"gpus\"\nrouter = {{ plugin = \"round-robin.wasm\" }}\n",
        backend_entry(&small, r#"models = "small-model""#),
        backend_entry(&large, r#"models = "large-model""#),
        backend_entry(&gpu_a, ""),
        backend_entry(&gpu_b, ""),
        backend_entry(&flaky, ""),
    );
    let proxy = TestProxy::start_in(plugins.path(), &config);
    let interfaces = plugin_interfaces(&proxy).await;
    for (owner, file, interface) in [
        (
            "route:models",
            "v0_2-model-router.wasm",
            "switchyard:policy@0.2.0",
        ),
        (
            "route:prefix",
            "v0_2-prefix-affinity.wasm",
            "switchyard:policy@0.2.0",
        ),
        ("route:new", "round-robin.wasm", "switchyard:policy@0.3.0"),
        (
            "pool:gpus",
            "v0_2-error-rate-breaker.wasm",
            "switchyard:policy@0.2.0",
        ),
    ] {
        assert!(
            interfaces.contains(&(owner.into(), file.into(), interface.into())),
            "{owner} {file} {interface} not in {interfaces:?}"
        );
    }
    let json = [("content-type", "application/json")];
    let chat = |model: &str, filler: usize| {
        Bytes::from(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(filler)
        ))
    };
    let r = send(
        "POST",
        &proxy.url("/v1/chat"),
        &json,
        chat("large-model", 10),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.backend()),
        (200, "large"),
        "{}",
        r.text()
    );
    // 0.2.0 tells a field past the peek from a missing one.
    let r = send(
        "POST",
        &proxy.url("/v1/chat"),
        &json,
        chat("large-model", 8192),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("model_not_seen"), "{}", r.text());
    // The 0.2.0 prefix router still keeps a conversation on its backend.
    let mut home = None;
    for turn in 1..=4 {
        let turns: Vec<String> = (0..turn)
            .map(|t| {
                format!(
                    r#"{{"role":"user","content":"step {t} {}"}}"#,
                    "y".repeat(80)
                )
            })
            .collect();
        let body = format!(r#"{{"model":"m","messages":[{}]}}"#, turns.join(","));
        let r = send("POST", &proxy.url("/prefix"), &json, Bytes::from(body)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let backend = r.backend().to_string();
        assert_eq!(
            home.get_or_insert(backend.clone()),
            &backend,
            "moved at turn {turn}"
        );
    }
    // The 0.2.0 breaker opens a failing backend, fed by the 0.3.0 router.
    flaky.fail_every(1);
    for _ in 0..30 {
        let _ = get(&proxy.url("/x"), &[]).await;
    }
    eventually(
        Duration::from_secs(5),
        "flaky's breaker to open",
        || async {
            let status = proxy.status().await;
            status["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
                .any(|b| b["name"] == "flaky" && b["state"]["breaker"] == "open")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_stamped_for_one_version_and_exporting_another_is_refused() {
    // A 0.1.0 component whose custom section claims 0.2.0: the host trusts
    // neither and says what it found.
    let mut bytes = std::fs::read(compat_dir().join("round-robin.wasm")).expect("compat plugin");
    let name = b"switchyard:policy-version";
    let mut section = vec![0u8, (1 + name.len() + 5) as u8, name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(b"0.2.0");
    bytes.extend_from_slice(&section);
    let plugins = mixed_plugins();
    std::fs::write(plugins.path().join("stamped.wasm"), &bytes).expect("write");
    let b = mock("b");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {{ plugin = \"stamped.wasm\" }}\n",
        backend_entry(&b, "")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\n{config}",
            plugins.path().display(),
            dir.path().join("cache").display()
        ),
    )
    .expect("config");
    let loaded = switchyard::config::Config::load(&path).expect("config parses");
    let err = switchyard::Switchyard::start(&loaded)
        .err()
        .expect("a mislabelled component is refused")
        .to_string();
    assert!(
        err.contains("stamped.wasm")
            && err.contains("stamped switchyard:policy@0.2.0")
            && err.contains("switchyard:policy/router@0.1.0"),
        "{err}"
    );
}

/// An attribute only 0.2.0 has, through the real host: the body's size
/// from `content-length`, and `not-seen` for a chunked body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_2_router_reads_the_body_size() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = mock("b");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n\
         router = {{ plugin = \"fixture-body-size.wasm\", config = {{ max = 100 }} }}\n",
        backend_entry(&b, "")
    );
    let proxy = TestProxy::start(&config);
    let small = send("POST", &proxy.url("/ok"), &[], Bytes::from(vec![b'x'; 10])).await;
    assert_eq!(small.status, 200, "{}", small.text());
    let big = send("POST", &proxy.url("/ok"), &[], Bytes::from(vec![b'x'; 500])).await;
    assert_eq!(big.status, 413, "{}", big.text());
    assert!(big.text().contains("500 bytes"), "{}", big.text());
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    s.write_all(
        b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 411"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
