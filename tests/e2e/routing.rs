//! Priority routing per graph with real plugins and backends.

use switchyard_tests::*;

/// Two graphs, each with its own router config: the research graph picks by
/// `x-priority`, the support graph by customer class over other labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_graph_routes_by_its_own_priority_config() {
    let (fast, cheap) = (mock("fast-a"), mock("cheap-a"));
    let (premium, basic) = (mock("premium-agent"), mock("basic-agent"));
    let proxy = TestProxy::start(&format!(
        r#"
[pools.models]
backends = [{}, {}]

[pools.agents]
backends = [{}, {}]

[[routes]]
name = "research"
match = {{ headers = {{ "x-graph" = "research" }} }}
pool = "models"
router = {{ plugin = "priority-router.wasm", config = {{ header = "x-priority", high = ["high", "urgent"] }} }}

[[routes]]
name = "support"
match = {{ path_prefix = "/graphs/support" }}
strip_prefix = true
pool = "agents"
router = {{ plugin = "priority-router.wasm", config = {{ header = "x-customer", high = "gold", tier_label = "class", high_tier = "premium" }} }}
"#,
        backend_entry(&fast, r#"tier = "fast""#),
        backend_entry(&cheap, r#"tier = "cheap""#),
        backend_entry(&premium, r#"class = "premium""#),
        backend_entry(&basic, r#"class = "basic""#),
    ));

    for _ in 0..5 {
        let r = get(
            &proxy.url("/v1/chat"),
            &[("x-graph", "research"), ("x-priority", "high")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), "fast-a");
        assert_eq!(r.json()["backend"], "fast-a");
        let r = get(
            &proxy.url("/v1/chat"),
            &[("x-graph", "research"), ("x-priority", "URGENT")],
        )
        .await;
        assert_eq!(r.backend(), "fast-a");
        let r = get(&proxy.url("/v1/chat"), &[("x-graph", "research")]).await;
        assert_eq!(r.backend(), "cheap-a");
        let r = get(
            &proxy.url("/graphs/support/ticket"),
            &[("x-customer", "gold")],
        )
        .await;
        assert_eq!(r.backend(), "premium-agent");
        assert_eq!(r.json()["path"], "/ticket", "prefix stripped");
        let r = get(
            &proxy.url("/graphs/support/ticket"),
            &[("x-customer", "silver")],
        )
        .await;
        assert_eq!(r.backend(), "basic-agent");
    }
    assert_eq!(fast.requests(), 10);
    assert_eq!(cheap.requests(), 5);
    assert_eq!(premium.requests(), 5);
    assert_eq!(basic.requests(), 5);

    // No route takes a request without the graph header or path.
    let r = get(&proxy.url("/v1/chat"), &[]).await;
    assert_eq!(r.status, 404);
}

/// When the preferred tier cannot be reached, the router's fallback (the
/// other tier) serves the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_tier_falls_back_to_the_other() {
    let cheap = mock("cheap-a");
    let proxy = TestProxy::start(&format!(
        r#"
[pools.models]
backends = [{{ name = "fast-down", address = "{}", labels = {{ tier = "fast" }} }}, {}]

[[routes]]
name = "research"
pool = "models"
router = {{ plugin = "priority-router.wasm" }}
"#,
        dead_address(),
        backend_entry(&cheap, r#"tier = "cheap""#),
    ));
    for _ in 0..4 {
        let r = get(&proxy.url("/v1/chat"), &[("x-priority", "high")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), "cheap-a");
    }
    let status = proxy.status().await;
    let fast = &status["pools"][0]["backends"][0]["state"];
    assert_eq!(
        fast["error_rate"], 1000,
        "connect errors are counted: {status}"
    );
}

/// Round robin spreads requests over the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests() {
    let backends: Vec<_> = (0..3).map(|i| mock(&format!("tool-{i}"))).collect();
    let entries: Vec<_> = backends.iter().map(|b| backend_entry(b, "")).collect();
    let proxy = TestProxy::start(&format!(
        "[pools.tools]\nbackends = [{}]\n\n[[routes]]\nname = \"tools\"\npool = \"tools\"\nrouter = {{ plugin = \"round-robin.wasm\" }}\n",
        entries.join(", ")
    ));
    for _ in 0..60 {
        assert_eq!(get(&proxy.url("/lookup"), &[]).await.status, 200);
    }
    for b in &backends {
        // Each worker rotates on its own, so per backend it is 20 +- 2 per worker.
        assert!(
            (16..=24).contains(&b.requests()),
            "{} got {}",
            b.name,
            b.requests()
        );
    }
}
