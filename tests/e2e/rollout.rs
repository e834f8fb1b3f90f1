//! Shipping a router: a shadow on live traffic, a record replayed offline,
//! and a canary that rolls back by itself, in the real proxy with compiled
//! plugins and real backends.

use std::time::Duration;
use switchyard::rollout::replay::{ReplayOptions, replay};
use switchyard_tests::*;

fn pool(backends: &[&MockBackend]) -> String {
    let entries: Vec<String> = backends.iter().map(|b| backend_entry(b, "")).collect();
    format!("[pools.p]\nbackends = [{}]\n\n", entries.join(", "))
}

async fn admin(proxy: &TestProxy, path: &str) -> serde_json::Value {
    let addr = proxy
        .proxy()
        .admin_addr
        .unwrap_or_else(|| unreachable!("tests enable admin"));
    get(&format!("http://{addr}{path}"), &[]).await.json()
}

/// Polls the admin `path` until `done` holds of it (5 s at most) and
/// returns the last answer.
async fn admin_until(
    proxy: &TestProxy,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let view = admin(proxy, path).await;
        if done(&view) || std::time::Instant::now() > until {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` requests, two at a time; request `i` carries the headers
/// `headers(i)`. Returns the statuses and answering backends.
async fn send_many(
    proxy: &TestProxy,
    n: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<(u16, String)> {
    let headers = std::sync::Arc::new(headers);
    let mut tasks = Vec::new();
    for lane in 0..2 {
        let (url, headers) = (proxy.url("/v1/chat/completions"), headers.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (lane..n).step_by(2) {
                let h = headers(i);
                let pairs: Vec<(&str, &str)> =
                    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let r = get(&url, &pairs).await;
                out.push((r.status.as_u16(), r.backend().to_string()));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    all
}

/// Every third request of ten (3, 6, 9) carries `x-pick: 1`: a 30 % share.
fn picks_b(i: usize) -> bool {
    matches!(i % 10, 3 | 6 | 9)
}

fn pick_headers(i: usize) -> Vec<(String, String)> {
    let mut h = vec![("x-thread-id".to_string(), format!("t{i}"))];
    if picks_b(i) {
        h.push(("x-pick".into(), "1".into()));
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_disagrees_on_a_known_share_is_counted_and_never_acts() {
    let (a, b) = (mock("a"), mock("b"));
    // Live: everything to `a`. Shadow: `b` when `x-pick: 1` (30 %).
    let config = format!(
        "{}[[routes]]\nname = \"shadowed\"\npool = \"p\"\n\
         router = {{ plugin = \"fixture-trap.wasm\", shadow = {{ plugin = \"fixture-pick.wasm\", sample = 1.0 }} }}\n",
        pool(&[&a, &b])
    );
    let proxy = TestProxy::start(&config);
    let replies = send_many(&proxy, 1000, pick_headers).await;
    assert!(
        replies.iter().all(|(s, who)| *s == 200 && who == "a"),
        "the shadow acted"
    );
    let view = admin_until(&proxy, "/shadow/shadowed", |v| v["sampled"] == 1000).await;
    assert_eq!(view["same"], 700, "{view}");
    assert_eq!(view["different"], 300, "{view}");
    assert_eq!(view["failed"], 0, "{view}");
    assert!((view["agreement"].as_f64().unwrap_or(0.0) - 0.7).abs() < 1e-9);
    let traffic = view["traffic"].as_array().cloned().unwrap_or_default();
    let shift = |name: &str| {
        traffic
            .iter()
            .find(|t| t["backend"] == name)
            .map(|t| t["shift"].as_i64().unwrap_or(0))
    };
    assert_eq!(shift("b"), Some(300), "{view}");
    assert_eq!(shift("a"), Some(-300), "{view}");
    let ring = view["recent_disagreements"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ring.len(), 32, "the ring is bounded");
    for d in &ring {
        assert_eq!(d["attributes"][0][1], "1", "{d}");
        assert_eq!(d["live"]["forward"][0], 0, "{d}");
        assert_eq!(d["shadow"]["forward"][0], 1, "{d}");
    }
    let status = proxy.status().await;
    assert_eq!(status["routes"][0]["shadow"]["different"], 300);
    let plugins = admin(&proxy, "/plugins").await;
    assert!(
        plugins.as_array().is_some_and(|p| p
            .iter()
            .any(|e| e["kind"] == "router:shadow" && e["file"] == "fixture-pick.wasm")),
        "{plugins}"
    );
    let addr = proxy.proxy().admin_addr.unwrap_or_else(|| unreachable!());
    let metrics = get(&format!("http://{addr}/metrics"), &[]).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_shadow_decisions_total")
                && l.contains("result=\"different\"")
                && l.ends_with(" 300")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_traps_or_spins_fails_no_request() {
    let a = mock("a");
    let config = format!(
        "{}[[routes]]\nname = \"trapping\"\npool = \"p\"\nmatch = {{ path_prefix = \"/trap\" }}\n\
         router = {{ plugin = \"fixture-pick.wasm\", shadow = {{ plugin = \"fixture-trap.wasm\" }} }}\n\
         [[routes]]\nname = \"spinning\"\npool = \"p\"\n\
         router = {{ plugin = \"fixture-pick.wasm\", shadow = {{ plugin = \"fixture-spin.wasm\", deadline = \"5ms\" }} }}\n",
        pool(&[&a])
    );
    let proxy = TestProxy::start(&config);
    for path in ["/trap/x", "/spin/x"] {
        for _ in 0..60 {
            let r = get(&proxy.url(path), &[("x-trap", "1")]).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(r.backend(), "a");
        }
    }
    for (route, kind) in [("trapping", "trap"), ("spinning", "deadline")] {
        let view = admin_until(&proxy, &format!("/shadow/{route}"), |v| v["failed"] == 60).await;
        assert_eq!(view["failed"], 60, "{view}");
        // Five failures in a row quarantine it; it is then skipped, counted.
        assert!(view["failures"][kind].as_u64().unwrap_or(0) >= 5, "{view}");
        assert_eq!(view["same"], 0, "{view}");
        assert!(
            view["recent_disagreements"][0]["shadow_failure"].is_string(),
            "{view}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_trace_replays_the_same_plugin_unchanged_and_another_as_it_runs_live() {
    let (a, b) = (mock("a"), mock("b"));
    let body = |router: &str| {
        format!(
            "[pools.p]\nbackends = [{}, {}]\n\
             [[routes]]\nname = \"research\"\npool = \"p\"\nrouter = {{ plugin = \"{router}\" }}\n\
             record = {{ path = \"trace.jsonl\", sample = 1.0, attributes = [\"header:x-pick\", \"header:x-trap\"] }}\n",
            backend_entry(&a, "cost = \"1\""),
            backend_entry(&b, "cost = \"2\""),
        )
    };
    // The live router decides on the request's latency budget and the
    // backends' recorded latencies: the cheapest within budget, else the
    // fastest.
    let proxy = TestProxy::start(&body("cost-aware.wasm"));
    let trace = proxy.dir.path().join("trace.jsonl");
    let config = proxy.dir.path().join("switchyard.toml");
    // One request carries what makes the trap fixture trap.
    let replies = send_many(&proxy, 2000, |i| {
        let mut h = pick_headers(i);
        if i % 2 == 0 {
            h.push(("x-sla-ms".into(), "0".into()));
        }
        if i == 1234 {
            h.push(("x-trap".into(), "1".into()));
        }
        h
    })
    .await;
    assert!(replies.iter().all(|(s, _)| *s == 200));
    eventually(Duration::from_secs(5), "2,000 records written", || {
        let trace = trace.clone();
        async move { std::fs::read_to_string(&trace).is_ok_and(|t| t.lines().count() == 2001) }
    })
    .await;
    let options = |plugin: &str| ReplayOptions {
        trace: trace.clone(),
        config: config.clone(),
        route: "research".into(),
        plugin: plugin.into(),
        against: None,
    };

    // The live router over its own trace: nothing changes.
    let same = replay(&options("cost-aware.wasm")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(same.decisions, 2000);
    assert_eq!(same.changed_candidates, 0, "{}", same.text());
    assert_eq!(same.failures, 0);
    let b_share = same.traffic_before.get("b").copied().unwrap_or(0);
    assert!(
        b_share > 0,
        "the recorded loads sent some requests to b: {}",
        same.text()
    );
    assert!(same.decisions_per_second > 0.0 && same.decision_ns_median > 0);

    // A candidate that traps on one recorded input: named, with its line.
    let trapping = replay(&options("fixture-trap.wasm")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(trapping.failures, 1, "{}", trapping.text());
    let failed = &trapping.first_failures[0];
    assert_eq!(failed.kind, "trap");
    assert_eq!(failed.attributes.get("header:x-trap"), Some(&"1".into()));
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let line = text
        .lines()
        .nth(failed.line as usize - 1)
        .unwrap_or_default();
    assert!(
        line.contains("\"1\"]"),
        "line {} is not the trapping input: {line}",
        failed.line
    );

    // Another plugin: the replay's traffic shift ...
    let other = replay(&options("fixture-pick.wasm")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(other.failures, 0, "{}", other.text());
    let replayed_b = other.traffic_after.get("b").copied().unwrap_or(0) as f64 / 2000.0;
    assert!((replayed_b - 0.3).abs() < 0.01, "{}", other.text());
    // ... matches what it does when it runs live.
    // Under traffic: the trace changing beside the config must not hold
    // the reload back.
    proxy.write_config(&body("fixture-pick.wasm"));
    eventually(Duration::from_secs(10), "the new router serves", || async {
        get(&proxy.url("/x"), &[("x-pick", "1")]).await.backend() == "b"
            && get(&proxy.url("/x"), &[]).await.backend() == "a"
    })
    .await;
    let live = send_many(&proxy, 1000, pick_headers).await;
    let live_b = live.iter().filter(|(_, who)| who == "b").count() as f64 / 1000.0;
    assert!(
        (live_b - replayed_b).abs() < 0.03,
        "live {live_b}, replayed {replayed_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_routing_to_a_failing_backend_rolls_back_within_its_step() {
    let a = mock("a");
    let bad = mock("bad");
    bad.fail_every(1);
    let config = format!(
        "{}[[routes]]\nname = \"canary-errors\"\npool = \"p\"\nretries = {{ attempts = 1 }}\n\
         router = {{ plugin = \"fixture-pick.wasm\", config = {{ backend = \"1\" }}, \
         canary = {{ previous = \"fixture-pick.wasm\", previous_config = {{ backend = \"0\" }}, \
         share = 0.2, step = \"1h\", max_error_rate = 0.02 }} }}\n",
        pool(&[&a, &bad])
    );
    let proxy = TestProxy::start(&config);
    let replies = send_many(&proxy, 600, |i| {
        vec![("x-thread-id".to_string(), format!("thread-{i}"))]
    })
    .await;
    let failed = replies.iter().filter(|(s, _)| *s != 200).count();
    // The limit allows 2 % of 600 = 12 failures; the rollback comes after
    // min_failures (5), plus what was in flight on the two client lanes.
    assert!((5..12).contains(&failed), "{failed} failed requests");
    let status = proxy.status().await;
    let canary = &status["routes"][0]["canary"];
    assert_eq!(canary["phase"], "rolled_back", "{canary}");
    assert_eq!(canary["share"], 0.0);
    assert!(
        canary["reason"]
            .as_str()
            .is_some_and(|r| r.contains("error rate")),
        "{canary}"
    );
    let after = send_many(&proxy, 100, |i| {
        vec![("x-thread-id".to_string(), format!("thread-{i}"))]
    })
    .await;
    assert!(after.iter().all(|(s, who)| *s == 200 && who == "a"));
    let addr = proxy.proxy().admin_addr.unwrap_or_else(|| unreachable!());
    let metrics = get(&format!("http://{addr}/metrics"), &[]).await.text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("switchyard_canary_rollbacks_total{route=\"canary-errors\"}")
            && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_p99_regresses_rolls_back() {
    let a = mock("a");
    let mut slow = MockOptions::new("slow");
    slow.latency = Duration::from_millis(40);
    let slow = mock_with(slow);
    let config = format!(
        "{}[[routes]]\nname = \"canary-p99\"\npool = \"p\"\n\
         router = {{ plugin = \"fixture-pick.wasm\", config = {{ backend = \"1\" }}, \
         canary = {{ previous = \"fixture-pick.wasm\", previous_config = {{ backend = \"0\" }}, \
         share = 0.5, step = \"1h\", min_latency_samples = 20 }} }}\n",
        pool(&[&a, &slow])
    );
    let proxy = TestProxy::start(&config);
    let replies = send_many(&proxy, 300, |i| {
        vec![("x-thread-id".to_string(), format!("k{i}"))]
    })
    .await;
    assert!(replies.iter().all(|(s, _)| *s == 200), "slow, not failing");
    let status = proxy.status().await;
    let canary = &status["routes"][0]["canary"];
    assert_eq!(canary["phase"], "rolled_back", "{canary}");
    assert!(
        canary["reason"].as_str().is_some_and(|r| r.contains("p99")),
        "{canary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_reaches_every_request_and_is_done() {
    let (a, b) = (mock("a"), mock("b"));
    let config = format!(
        "{}[[routes]]\nname = \"r\"\npool = \"p\"\n\
         router = {{ plugin = \"fixture-pick.wasm\", config = {{ backend = \"1\" }}, \
         canary = {{ previous = \"fixture-pick.wasm\", previous_config = {{ backend = \"0\" }}, \
         share = 0.5, step = \"2s\" }} }}\n",
        pool(&[&a, &b])
    );
    let proxy = TestProxy::start(&config);
    // About half the threads start on the new version.
    let first = send_many(&proxy, 200, |i| {
        vec![("x-thread-id".into(), format!("k{i}"))]
    })
    .await;
    let on_new = first.iter().filter(|(_, who)| who == "b").count();
    assert!(
        (70..=130).contains(&on_new),
        "{on_new} of 200 on the new version"
    );
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        get(&proxy.url("/x"), &[]).await;
        let canary = proxy.status().await["routes"][0]["canary"].clone();
        if canary["phase"] == "done" {
            break;
        }
        assert!(canary["phase"] == "running", "{canary}");
        assert!(
            std::time::Instant::now() < until,
            "not done in 10 s: {canary}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = send_many(&proxy, 100, |i| {
        vec![("x-thread-id".into(), format!("k{i}"))]
    })
    .await;
    assert!(after.iter().all(|(s, who)| *s == 200 && who == "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_a_router_reads_never_reach_a_trace_or_the_shadow_view() {
    let (a, b) = (mock("a"), mock("b"));
    let config = format!(
        "{}[[routes]]\nname = \"r\"\npool = \"p\"\n\
         router = {{ plugin = \"fixture-trap.wasm\", shadow = {{ plugin = \"sticky-session.wasm\", config = {{ header = \"authorization\" }} }} }}\n\
         record = {{ path = \"trace.jsonl\", sample = 1.0, attributes = [\"header:authorization\", \"header:x-api-key\"] }}\n",
        pool(&[&a, &b])
    );
    let proxy = TestProxy::start(&config);
    for _ in 0..20 {
        let r = get(
            &proxy.url("/x"),
            &[
                ("authorization", "Bearer sk-live-7f3a9c1e"),
                ("x-api-key", "sk-live-7f3a9c1e"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let trace = proxy.dir.path().join("trace.jsonl");
    eventually(Duration::from_secs(5), "20 records", || {
        let trace = trace.clone();
        async move { std::fs::read_to_string(&trace).is_ok_and(|t| t.lines().count() == 21) }
    })
    .await;
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    assert!(!text.contains("sk-live-7f3a9c1e"), "{text}");
    assert!(
        text.contains("\"sha256:"),
        "a stable stand-in is recorded: {text}"
    );
    let view = admin_until(&proxy, "/shadow/r", |v| v["sampled"] == 20).await;
    let ring = view["recent_disagreements"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !ring.is_empty(),
        "the shadow's longer candidate list differs: {view}"
    );
    let shown = view.to_string();
    assert!(!shown.contains("sk-live-7f3a9c1e"), "{shown}");
    assert!(shown.contains("sha256:"), "{shown}");
}
