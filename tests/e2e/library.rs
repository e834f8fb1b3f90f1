//! Each router of the policy library, compiled to Wasm, in the real proxy
//! with real backends: its defining behaviour under real traffic.

use std::collections::HashMap;
use std::time::Duration;
use switchyard_testkit::TokenQuota;
use switchyard_tests::*;

fn route(backends: &[(&MockBackend, &str)], router: &str) -> String {
    let entries: Vec<String> = backends
        .iter()
        .map(|(b, extra)| {
            format!(
                "{{ name = \"{}\", address = \"{}\"{extra} }}",
                b.name, b.addr
            )
        })
        .collect();
    format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {router}\n",
        entries.join(", ")
    )
}

/// Sends `n` requests, `concurrency` at a time, and counts them by backend.
async fn spread(
    proxy: &TestProxy,
    headers: &[(&str, &str)],
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let per_task = n / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let url = proxy.url("/x");
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut seen = Vec::new();
            for _ in 0..per_task {
                let r = get(&url, &pairs).await;
                assert_eq!(r.status, 200, "{}", r.text());
                seen.push(r.backend().to_string());
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for b in t.await.unwrap_or_else(|e| panic!("{e}")) {
            *counts.entry(b).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_canary_splits_ninety_ten() {
    let (local, premium) = (mock("local"), mock("premium"));
    let proxy = TestProxy::start(&route(
        &[(&local, ", weight = 9"), (&premium, ", weight = 1")],
        "{ plugin = \"weighted.wasm\" }",
    ));
    let counts = spread(&proxy, &[], 2000, 4).await;
    let share = counts.get("premium").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (0.07..=0.13).contains(&share),
        "premium share {share}: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_avoids_a_backend_holding_slow_requests() {
    let mut slow = MockOptions::new("slow");
    slow.latency = Duration::from_secs(3);
    let (slow, idle) = (mock_with(slow), mock("idle"));
    let proxy = TestProxy::start(&route(
        &[(&slow, ""), (&idle, "")],
        "{ plugin = \"least-outstanding.wasm\" }",
    ));
    // Background requests until the slow backend holds at least one and
    // the idle one has finished all of its own.
    let mut background = Vec::new();
    for _ in 0..4 {
        let url = proxy.url("/x");
        background.push(tokio::spawn(async move { get(&url, &[]).await.status }));
    }
    eventually(
        Duration::from_secs(5),
        "all four dispatched, one held",
        || async {
            let status = proxy.status().await;
            let in_flight =
                |i: usize| status["pools"][0]["backends"][i]["state"]["in_flight"].as_u64();
            slow.requests() + idle.requests() == 4
                && in_flight(0) >= Some(1)
                && in_flight(1) == Some(0)
        },
    )
    .await;
    let before = slow.requests();
    let mut served = Vec::new();
    for _ in 0..30 {
        let r = get(&proxy.url("/x"), &[]).await;
        served.push((r.status.as_u16(), r.backend().to_string()));
    }
    assert_eq!(
        slow.requests(),
        before,
        "nothing more reached the busy backend: {served:?}"
    );
    assert!(
        served.iter().all(|(s, b)| *s == 200 && b == "idle"),
        "{served:?}"
    );
    for t in background {
        assert_eq!(t.await.unwrap_or_else(|e| panic!("{e}")), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_shifts_traffic_away_from_a_slow_backend() {
    let mut slow = MockOptions::new("slow");
    slow.latency = Duration::from_millis(200);
    let (slow, a, b) = (mock_with(slow), mock("a"), mock("b"));
    let proxy = TestProxy::start(&route(
        &[(&slow, ""), (&a, ""), (&b, "")],
        "{ plugin = \"p2c-ewma.wasm\" }",
    ));
    let counts = spread(&proxy, &[], 400, 4).await;
    let to_slow = counts.get("slow").copied().unwrap_or(0);
    assert!(
        to_slow <= 20,
        "the 200 ms backend got {to_slow} of 400: {counts:?}"
    );
    // Both fast backends serve: latency decides between them too, so a
    // mock that lagged for a moment on a busy test machine may get a third
    // of the other's share, never none.
    assert!(
        counts.get("a").copied().unwrap_or(0) >= 50 && counts.get("b").copied().unwrap_or(0) >= 50,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_aware_picks_the_cheapest_acceptable() {
    let mut slow_cheap = MockOptions::new("local");
    slow_cheap.latency = Duration::from_millis(300);
    let (local, mid, premium) = (mock_with(slow_cheap), mock("mid"), mock("premium"));
    let proxy = TestProxy::start(&route(
        &[
            (&local, ", labels = { cost = 0.2 }"),
            (&mid, ", labels = { cost = 2.5 }"),
            (&premium, ", labels = { cost = 10 }"),
        ],
        "{ plugin = \"cost-aware.wasm\" }",
    ));
    // No limits: the cheapest.
    assert_eq!(get(&proxy.url("/x"), &[]).await.backend(), "local");
    // A latency budget the local model (300 ms, now measured) cannot meet.
    for _ in 0..5 {
        assert_eq!(
            get(&proxy.url("/x"), &[("x-sla-ms", "100")])
                .await
                .backend(),
            "mid"
        );
    }
    // A cost ceiling below mid leaves only... nothing under 100 ms: fastest.
    let r = get(
        &proxy.url("/x"),
        &[("x-sla-ms", "100"), ("x-max-cost", "1")],
    )
    .await;
    assert!(["mid", "premium"].contains(&r.backend()), "{}", r.backend());
    assert_eq!(
        get(&proxy.url("/x"), &[("x-max-cost", "5")])
            .await
            .backend(),
        "local"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_quota_moves_off_an_exhausted_region_and_returns_after_reset() {
    // Equal budgets, but each request to east uses a fifth of its window.
    let window = Duration::from_secs(3);
    let mut east = MockOptions::new("us-east-1");
    east.quota = Some(TokenQuota {
        tokens: 10_000,
        window,
        per_request: 2_000,
    });
    let mut west = MockOptions::new("eu-west-1");
    west.quota = Some(TokenQuota {
        tokens: 10_000,
        window,
        per_request: 10,
    });
    let (east, west) = (mock_with(east), mock_with(west));
    let proxy = TestProxy::start(&route(
        &[(&east, ""), (&west, "")],
        "{ plugin = \"token-quota.wasm\", config = { unknown_tokens = 10000 } }",
    ));
    // Until east reports 0 left, both serve (east's share shrinks with its quota).
    eventually(
        Duration::from_secs(2),
        "us-east-1 to report its quota spent",
        || async {
            get(&proxy.url("/x"), &[]).await;
            proxy.status().await["pools"][0]["backends"][0]["state"]["remaining_tokens"] == 0
        },
    )
    .await;
    let spent_at = east.requests();
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/x"), &[]).await.backend(), "eu-west-1");
    }
    assert_eq!(
        east.requests(),
        spent_at,
        "no request reached the exhausted region"
    );
    // After the reported reset east is back.
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let counts = spread(&proxy, &[], 60, 2).await;
    assert!(
        counts.get("us-east-1").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_session_keeps_a_thread_hands_over_and_bounds_load() {
    let backends: Vec<MockBackend> = ["a", "b", "c"].iter().map(|n| mock(n)).collect();
    let pairs: Vec<(&MockBackend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let proxy = TestProxy::start(&route(&pairs, "{ plugin = \"sticky-session.wasm\" }"));
    // One request at a time, as a thread's steps run: all on one backend.
    let counts = spread(&proxy, &[("x-thread-id", "thread-42")], 60, 1).await;
    assert_eq!(counts.len(), 1, "one thread, one backend: {counts:?}");
    let home = counts.keys().next().cloned().unwrap_or_default();

    // Other keys spread over the pool.
    let mut homes = std::collections::HashSet::new();
    for k in 0..30 {
        homes.insert(
            get(&proxy.url("/x"), &[("x-thread-id", &format!("t-{k}"))])
                .await
                .backend()
                .to_string(),
        );
    }
    assert_eq!(homes.len(), 3, "{homes:?}");

    // The home backend dies: the thread moves to one other backend and stays.
    let mut backends = backends;
    let pos = backends.iter().position(|b| b.name == home).unwrap_or(0);
    drop(backends.remove(pos));
    let counts = spread(&proxy, &[("x-thread-id", "thread-42")], 30, 1).await;
    assert_eq!(counts.len(), 1, "handed over to one backend: {counts:?}");
    assert!(!counts.contains_key(&home));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_session_respects_the_load_bound() {
    let backends: Vec<MockBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let mut o = MockOptions::new(n);
            o.latency = Duration::from_millis(300);
            mock_with(o)
        })
        .collect();
    let pairs: Vec<(&MockBackend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let proxy = TestProxy::start(&route(&pairs, "{ plugin = \"sticky-session.wasm\" }"));
    // Nine concurrent requests of one thread: the bound (1.25 x average)
    // keeps the home backend from taking them all.
    let counts = spread(&proxy, &[("x-thread-id", "busy-thread")], 9, 9).await;
    let most = counts.values().copied().max().unwrap_or(0);
    assert!(most < 9 && counts.len() >= 2, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hash_keeps_a_client_on_one_backend() {
    let backends: Vec<MockBackend> = ["a", "b", "c"].iter().map(|n| mock(n)).collect();
    let pairs: Vec<(&MockBackend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let proxy = TestProxy::start(&route(&pairs, "{ plugin = \"client-hash.wasm\" }"));
    let counts = spread(&proxy, &[], 60, 3).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_chain_follows_its_order() {
    let (local, a, b) = (mock("local"), mock("provider-a"), mock("provider-b"));
    let proxy = TestProxy::start(&route(
        &[(&b, ""), (&a, ""), (&local, "")],
        "{ plugin = \"fallback-chain.wasm\", config = { order = [\"local\", \"provider-a\", \"provider-b\"] } }",
    ));
    assert_eq!(spread(&proxy, &[], 20, 2).await.get("local"), Some(&20));
    drop(local);
    assert_eq!(
        spread(&proxy, &[], 20, 2).await.get("provider-a"),
        Some(&20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_send_heavy_work_to_the_heavy_lane_and_spill_when_full() {
    let mut slow_light = MockOptions::new("light");
    slow_light.latency = Duration::from_millis(600);
    let (light, heavy) = (mock_with(slow_light), mock("heavy"));
    let proxy = TestProxy::start(&route(
        &[
            (&light, ", labels = { slots = 1 }"),
            (&heavy, ", weight = 8, labels = { lane = \"heavy\" }"),
        ],
        "{ plugin = \"lanes.wasm\", config = { heavy_max_tokens = 1000 } }",
    ));
    const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
    let json = JSON;
    let post = |body: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let url = proxy.url("/v1/chat/completions");
        async move {
            send(
                "POST",
                &url,
                headers,
                bytes::Bytes::from_static(body.as_bytes()),
            )
            .await
        }
    };
    let r = post(r#"{"max_tokens":4000,"messages":[]}"#, json).await;
    assert_eq!(r.backend(), "heavy", "many tokens: {}", r.text());
    let r = get(&proxy.url("/x"), &[("x-agent-kind", "research")]).await;
    assert_eq!(r.backend(), "heavy");
    let r = post(r#"{"max_tokens":50,"messages":[]}"#, json).await;
    assert_eq!(r.backend(), "light", "few tokens");
    // The light lane's one slot taken: the next light request spills.
    let busy = tokio::spawn(post(r#"{"max_tokens":10}"#, json));
    eventually(Duration::from_secs(3), "the light backend busy", || async {
        proxy.status().await["pools"][0]["backends"][0]["state"]["in_flight"] == 1
    })
    .await;
    let r = get(&proxy.url("/x"), &[("x-agent-kind", "chat")]).await;
    assert_eq!(r.backend(), "heavy", "spilled over");
    assert_eq!(busy.await.expect("join").backend(), "light");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_keeps_each_conversation_on_one_backend() {
    let backends: Vec<MockBackend> = (0..4).map(|i| mock(&format!("gpu-{i}"))).collect();
    let pairs: Vec<(&MockBackend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let proxy = TestProxy::start(&route(
        &pairs,
        "{ plugin = \"prefix-affinity.wasm\", body_peek = \"1KiB\", config = { block = 64 } }",
    ));
    // Bodies grow past the 1 KiB peek from the third turn on: the host
    // hashes the prompt's beginning, which is all the router needs.
    let mut homes = HashMap::new();
    for turn in 1..=5 {
        for convo in 0..6 {
            let mut messages = vec![
                serde_json::json!({"role": "system", "content": format!("agent {convo}: {}", "plan carefully. ".repeat(8))}),
            ];
            for t in 0..turn {
                messages.push(
                    serde_json::json!({"role": "user", "content": format!("step {t} of the task {}", "z".repeat(300))}),
                );
            }
            let body = serde_json::json!({"model": "m", "messages": messages}).to_string();
            let r = send(
                "POST",
                &proxy.url("/v1/chat/completions"),
                &[("content-type", "application/json")],
                bytes::Bytes::from(body),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let home = homes
                .entry(convo)
                .or_insert_with(|| r.backend().to_string());
            assert_eq!(
                *home,
                r.backend(),
                "conversation {convo} moved at turn {turn}"
            );
        }
    }
    let used: std::collections::HashSet<_> = homes.values().collect();
    assert!(
        used.len() >= 2,
        "six conversations on one backend: {homes:?}"
    );
}

/// A vLLM-style `/metrics` page of over 100 KB (histograms first, as
/// vLLM prints them), with the given queue and KV-cache use.
fn vllm_page(waiting: u32, kv: f64) -> String {
    let mut page = String::new();
    for h in 0..60 {
        page.push_str(&format!(
            "# HELP vllm:histogram_{h}_seconds A latency histogram.\n# TYPE vllm:histogram_{h}_seconds histogram\n"
        ));
        for le in [
            "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75",
            "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "+Inf",
        ] {
            page.push_str(&format!(
                "vllm:histogram_{h}_seconds_bucket{{le=\"{le}\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} 1532.0\n"
            ));
        }
    }
    page.push_str(&format!(
        "# TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} 24.0\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} {waiting}.0\n\
         # TYPE vllm:gpu_cache_usage_perc gauge\n\
         vllm:gpu_cache_usage_perc{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} {kv}\n"
    ));
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_server_health_takes_a_queued_server_out_and_brings_it_back() {
    let (busy, calm) = (mock("vllm-0"), mock("vllm-1"));
    busy.set_load_report(&vllm_page(0, 0.2));
    calm.set_load_report(&vllm_page(0, 0.2));
    assert!(
        vllm_page(0, 0.2).len() > 100_000,
        "a page the size of a real one"
    );
    let config = format!(
        "[pools.p]\nbackends = [{}, {}]\n\
         health = {{ path = \"/health\", interval = \"100ms\", body_limit = \"256KiB\", \
         plugin = \"model-server-health.wasm\", config = {{ max_waiting = 10, fall = 1 }} }}\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(&busy, ""),
        backend_entry(&calm, "")
    );
    let proxy = TestProxy::start(&config);
    let state = |status: &serde_json::Value, i: usize| {
        let s = &status["pools"][0]["backends"][i]["state"];
        (
            s["health"].as_str().unwrap_or("").to_string(),
            s["load_score"].as_u64().unwrap_or(0),
        )
    };
    eventually(Duration::from_secs(5), "both healthy at 200", || async {
        let s = proxy.status().await;
        state(&s, 0) == ("healthy".into(), 200) && state(&s, 1) == ("healthy".into(), 200)
    })
    .await;
    // Its queue grows past max_waiting: out of rotation.
    busy.set_load_report(&vllm_page(25, 0.6));
    calm.set_load_report(&vllm_page(4, 0.3));
    eventually(
        Duration::from_secs(5),
        "the queued server is out",
        || async {
            let s = proxy.status().await;
            state(&s, 0) == ("unhealthy".into(), 1000) && state(&s, 1) == ("healthy".into(), 400)
        },
    )
    .await;
    let counts = spread(&proxy, &[], 20, 2).await;
    assert_eq!(counts.get("vllm-1"), Some(&20), "{counts:?}");
    // A full KV cache degrades it before the queue does.
    busy.set_load_report(&vllm_page(0, 0.9));
    eventually(
        Duration::from_secs(5),
        "back, degraded by its cache",
        || async { state(&proxy.status().await, 0) == ("degraded".into(), 900) },
    )
    .await;
    busy.set_load_report(&vllm_page(0, 0.1));
    eventually(Duration::from_secs(5), "healthy again", || async {
        state(&proxy.status().await, 0) == ("healthy".into(), 100)
    })
    .await;
}

/// Every plugin README's config names a file the build writes.
#[test]
fn plugin_readmes_name_the_files_the_build_writes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let built = plugin_dir();
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("plugins/") {
        let readme = entry.expect("entry").path().join("README.md");
        let Ok(text) = std::fs::read_to_string(&readme) else {
            continue;
        };
        for part in text.split("plugin = \"").skip(1) {
            let file = part.split('"').next().unwrap_or_default();
            assert!(
                built.join(file).exists(),
                "{} names {file}, which the build does not write",
                readme.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 14,
        "only {checked} plugin names found in the READMEs"
    );
}
