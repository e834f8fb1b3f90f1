//! What operators see: Prometheus metrics after known traffic, the admin
//! API, its token, trace propagation and the debug header.

use bytes::Bytes;
use std::time::Duration;
use switchyard_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_tokens_and_cost_add_up_across_its_requests() {
    let b = mock("priced");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(&b, "input_price = 2.5, output_price = 10"),
    );
    let proxy = TestProxy::start(&config);
    let admin = proxy.proxy().admin_addr.expect("admin");
    let chat = |stream: bool| {
        Bytes::from(format!(
            "{{\"model\":\"m\",\"stream\":{stream},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}"
        ))
    };
    for (run, stream) in [
        ("thread-1", false),
        ("thread-1", true),
        ("thread-1", false),
        ("thread-2", false),
    ] {
        let r = send(
            "POST",
            &proxy.url("/v1/chat/completions"),
            &[("content-type", "application/json"), ("x-run-id", run)],
            chat(stream),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // A request without usage, and one naming no valid run, count nothing.
    get(&proxy.url("/x"), &[("x-run-id", "bad id/..")]).await;
    let run = |id: &'static str| async move {
        let r = get(&format!("http://{admin}/runs/{id}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    // Counted when each body ends, just after the client read it.
    eventually(
        Duration::from_secs(5),
        "three requests of thread-1",
        || async { run("thread-1").await["requests"] == 3 },
    )
    .await;
    let one = run("thread-1").await;
    // The mock reports 12 prompt and 6 completion tokens per answer.
    assert_eq!(one["prompt_tokens"], 36, "{one}");
    assert_eq!(one["completion_tokens"], 18, "{one}");
    let usd = one["cost_usd"].as_f64().expect("cost");
    assert!(
        (usd - 3.0 * (12.0 * 2.5 + 6.0 * 10.0) / 1e6).abs() < 1e-9,
        "{one}"
    );
    assert_eq!(run("thread-2").await["prompt_tokens"], 12);
    assert_eq!(run("nobody").await["requests"], 0);
    let bad = get(&format!("http://{admin}/runs/a%20b"), &[]).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_tokens_and_cost() {
    let (a, b) = (mock("m-a"), mock("m-b"));
    let config = format!(
        "[pools.p]\nbackends = [{}, {}]\n\
         [[routes]]\nname = \"metered\"\npool = \"p\"\nrouter = {{ plugin = \"round-robin.wasm\" }}\n",
        backend_entry(&a, "input_price = 2.5, output_price = 10"),
        backend_entry(&b, "input_price = 2.5, output_price = 10"),
    );
    let proxy = TestProxy::start(&config);
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
    }
    let chat = |stream: bool| {
        Bytes::from(format!(
            "{{\"model\":\"m\",\"stream\":{stream},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}"
        ))
    };
    for stream in [false, false, false, true, true] {
        let r = send(
            "POST",
            &proxy.url("/v1/chat/completions"),
            &[("content-type", "application/json")],
            chat(stream),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // Outcomes are recorded when bodies end, just after the client read
    // them: wait until the last one is in.
    let mut m = scrape(&proxy).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // The recorder is the process's: other tests' pools named `p` show
    // there too, so this test's backends are named.
    let in_flight = |m: &str| {
        metric(
            m,
            "switchyard_backend_in_flight",
            &[("pool", "p"), ("backend", "m-a")],
        ) + metric(
            m,
            "switchyard_backend_in_flight",
            &[("pool", "p"), ("backend", "m-b")],
        )
    };
    while (in_flight(&m) != 0.0
        || metric(
            &m,
            "switchyard_tokens_total",
            &[("route", "metered"), ("kind", "completion")],
        ) < 30.0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = scrape(&proxy).await;
    }
    let route = [("route", "metered")];
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_total",
            &[("route", "metered"), ("class", "2xx")]
        ),
        15.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "switchyard_request_duration_seconds_count", &route),
        15.0
    );
    assert_eq!(metric(&m, "switchyard_ttfb_seconds_count", &route), 15.0);
    assert!(
        m.contains(
            "switchyard_ttfb_seconds_bucket{route=\"metered\",backend=\"m-a\",le=\"0.005\"}"
        ),
        "{m}"
    );
    // The mock reports 12 prompt and 6 completion tokens per chat, whole or
    // streamed (in the final chunk).
    assert_eq!(
        metric(
            &m,
            "switchyard_tokens_total",
            &[("route", "metered"), ("kind", "prompt")]
        ),
        60.0
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_tokens_total",
            &[("route", "metered"), ("kind", "completion")]
        ),
        30.0
    );
    // 60 x $2.5/M + 30 x $10/M = $0.00045.
    assert_eq!(
        metric(&m, "switchyard_cost_microdollars_total", &route),
        450.0
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_plugin_calls_total",
            &[("plugin", "round-robin.wasm"), ("route", "metered")]
        ),
        15.0
    );
    assert!(
        metric(
            &m,
            "switchyard_plugin_call_seconds_count",
            &[("route", "metered")]
        ) >= 1.0
    );
    assert_eq!(in_flight(&m), 0.0);
    assert!(
        m.contains("switchyard_backend_quota_remaining_tokens{pool=\"p\",backend=\"m-b\"}"),
        "{m}"
    );
    for backend in ["m-a", "m-b"] {
        assert_eq!(
            metric(
                &m,
                "switchyard_breaker_state",
                &[("pool", "p"), ("backend", backend)]
            ),
            0.0
        );
    }
    for line in m.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split_whitespace().nth(2).unwrap_or("");
        assert!(name.starts_with("switchyard_"), "{line}");
        if line.ends_with(" counter") {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_routes_pools_and_plugins() {
    let (a, b) = (mock("s-a"), mock("s-b"));
    let config = format!(
        "[pools.p]\nbackends = [{}, {}]\nbreaker = {{ plugin = \"error-rate-breaker.wasm\" }}\n\
         [[routes]]\nname = \"seen\"\npool = \"p\"\nrouter = {{ plugin = \"least-outstanding.wasm\" }}\n\
         limits = {{ max_in_flight = 8 }}\n",
        backend_entry(&a, "tier = \"fast\""),
        backend_entry(&b, ""),
    );
    let proxy = TestProxy::start(&config);
    for _ in 0..6 {
        get(&proxy.url("/x"), &[]).await;
    }
    let status = proxy.status().await;
    assert_eq!(status["routes"][0]["name"], "seen");
    assert_eq!(
        status["routes"][0]["router"]["file"],
        "least-outstanding.wasm"
    );
    assert_eq!(status["routes"][0]["limits"]["in_flight"], 0);
    let backends = status["pools"][0]["backends"].as_array().unwrap();
    assert_eq!(backends[0]["name"], "s-a");
    assert_eq!(backends[0]["labels"]["tier"], "fast");
    assert_eq!(backends[1]["address"], b.addr.to_string());
    assert!(backends[0]["state"]["ewma_latency_us"].as_u64() > Some(0));

    let admin = proxy.proxy().admin_addr.unwrap();
    let plugins = get(&format!("http://{admin}/plugins"), &[]).await.json();
    let plugins = plugins.as_array().unwrap();
    let router = plugins.iter().find(|p| p["kind"] == "router").unwrap();
    assert_eq!(router["owner"], "route:seen");
    assert_eq!(router["calls"], 6);
    assert_eq!(router["version"].as_str().map(str::len), Some(64));
    let breaker = plugins
        .iter()
        .find(|p| p["kind"] == "circuit-breaker")
        .unwrap();
    assert_eq!(breaker["owner"], "pool:p");
    eventually(Duration::from_secs(2), "breaker calls", || async {
        let p = get(&format!("http://{admin}/plugins"), &[]).await.json();
        p.as_array()
            .into_iter()
            .flatten()
            .any(|x| x["kind"] == "circuit-breaker" && x["calls"] == 6)
    })
    .await;
    let page = get(&format!("http://{admin}/dashboard"), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>Switchyard</title>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_required_and_public_binds_need_one() {
    let text = "[admin]\nlisten = \"0.0.0.0:9901\"\n";
    let err = switchyard::config::Config::parse(text, "pub.toml".as_ref(), ".".into())
        .expect_err("a public admin bind without a token is refused");
    assert!(
        err.to_string().starts_with("pub.toml:2:") && err.to_string().contains("admin.token"),
        "{err}"
    );
    let with_token = "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"s3cret\"\n";
    assert!(switchyard::config::Config::parse(with_token, "pub.toml".as_ref(), ".".into()).is_ok());

    let b = mock("t");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(&b, "")
    );
    let proxy = TestProxy::start_with_admin(&config, "token = \"s3cret\"");
    let admin = proxy.proxy().admin_addr.unwrap();
    assert_eq!(
        get(&format!("http://{admin}/status"), &[]).await.status,
        401
    );
    assert_eq!(
        get(
            &format!("http://{admin}/metrics"),
            &[("authorization", "Bearer wrong")]
        )
        .await
        .status,
        401
    );
    let ok = get(
        &format!("http://{admin}/status"),
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(ok.status, 200);
    // The query string is no place for a token: it ends up in logs.
    assert_eq!(
        get(&format!("http://{admin}/status?token=s3cret"), &[])
            .await
            .status,
        401
    );
    // The dashboard page itself is static; its API calls carry the token.
    let page = get(&format!("http://{admin}/dashboard"), &[]).await;
    assert_eq!(page.status, 200);
    assert!(!page.text().contains("s3cret"));
    assert_eq!(
        get(&format!("http://{admin}/healthz"), &[]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_passes_through_and_debug_header_explains_the_decision() {
    let (a, b) = (mock("d-a"), mock("d-b"));
    let config = format!(
        "[pools.p]\nbackends = [{}, {}]\n[[routes]]\nname = \"explained\"\npool = \"p\"\n\
         router = {{ plugin = \"fallback-chain.wasm\", config = {{ order = [\"d-b\", \"d-a\"] }} }}\n",
        backend_entry(&a, ""),
        backend_entry(&b, "")
    );
    // Off by default: internals are not for any client that asks.
    let closed = TestProxy::start(&config);
    let r = get(&closed.url("/x"), &[("x-switchyard-debug", "1")]).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.contains_key("x-switchyard-plugin"),
        "{:?}",
        r.headers
    );
    let proxy = TestProxy::start_full(&config, "debug_header = true", None);
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        &proxy.url("/x"),
        &[
            ("traceparent", trace),
            ("tracestate", "vendor=1"),
            ("x-switchyard-debug", "1"),
        ],
    )
    .await;
    let echoed = r.json();
    assert_eq!(echoed["headers"]["traceparent"], trace);
    assert_eq!(echoed["headers"]["tracestate"], "vendor=1");
    assert_eq!(r.headers["x-switchyard-route"], "explained");
    let plugin = r.headers["x-switchyard-plugin"].to_str().unwrap();
    assert!(plugin.starts_with("fallback-chain.wasm@"), "{plugin}");
    assert_eq!(r.headers["x-switchyard-candidates"], "d-b,d-a");
    assert_eq!(r.backend(), "d-b");
    let plain = get(&proxy.url("/x"), &[]).await;
    assert!(!plain.headers.contains_key("x-switchyard-route"));
}

/// Metric names mentioned in `text`: `switchyard_` and word characters,
/// without the `_bucket`/`_count`/`_sum` series suffixes of histograms.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("switchyard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn grafana_and_the_metrics_table_name_only_metrics_the_proxy_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let grafana = metric_names(&read("examples/grafana-dashboard.json"));
    let doc = read("docs/observability.md");
    let table: String = doc
        .lines()
        .filter(|l| l.starts_with("| `switchyard_"))
        .collect();
    let documented = metric_names(&table);
    let mut source = String::new();
    let mut dirs = vec![root.join("host/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let compact: String = source.split_whitespace().collect();
    let exported: std::collections::BTreeSet<String> = metric_names(&source)
        .into_iter()
        // Named in a `counter!`, `gauge!` or `histogram!` call or made as a
        // per-thread `Histogram::new`; other strings (the trace format's
        // `switchyard_trace` field) are not metrics.
        .filter(|n| {
            compact.contains(&format!("!(\"{n}\""))
                || compact.contains(&format!("Histogram::new(\"{n}\""))
        })
        .collect();
    assert!(grafana.len() >= 15, "{grafana:?}");
    for name in &grafana {
        assert!(
            documented.contains(name),
            "{name} is on the Grafana dashboard but not in docs/observability.md"
        );
    }
    for name in &documented {
        assert!(
            exported.contains(name),
            "{name} is documented but the proxy does not export it"
        );
    }
    for name in &exported {
        assert!(
            documented.contains(name),
            "{name} is exported but not documented in docs/observability.md"
        );
    }
}
