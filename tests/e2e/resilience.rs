//! Fault tolerance with real backends that are killed, slowed down, or made
//! to fail on demand: breakers and health plugins on the control thread,
//! retries, fallbacks, admission control, and broken streams.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::{Duration, Instant};
use switchyard_tests::*;

/// The live state of `backend` in `pool`, from `/status`.
async fn backend(proxy: &TestProxy, pool: &str, backend: &str) -> Value {
    let status = proxy.status().await;
    status["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["name"] == backend)
        .unwrap_or_else(|| panic!("no backend {pool}/{backend} in {status}"))
}

async fn breaker(proxy: &TestProxy, pool: &str, name: &str) -> String {
    let b = backend(proxy, pool, name).await;
    b["state"]["breaker"].as_str().unwrap_or("").to_string()
}

async fn health(proxy: &TestProxy, pool: &str, name: &str) -> String {
    let b = backend(proxy, pool, name).await;
    b["state"]["health"].as_str().unwrap_or("").to_string()
}

fn pool(name: &str, backends: &[&MockBackend], extra: &str) -> String {
    let entries: Vec<_> = backends.iter().map(|b| backend_entry(b, "")).collect();
    format!(
        "[pools.{name}]\nbackends = [{}]\n{extra}\n",
        entries.join(", ")
    )
}

/// Restarts a killed mock on its old address, waiting for the port.
fn restart(addr: std::net::SocketAddr, name: &str) -> MockBackend {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match MockBackend::start_on(addr, MockOptions::new(name)) {
            Ok(b) => return b,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot restart {name} on {addr}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_trips_its_breaker_and_comes_back_through_half_open() {
    let (b0, b1, b2) = (mock("b0"), mock("b1"), mock("b2"));
    let config = pool(
        "p",
        &[&b0, &b1, &b2],
        "max_fails = 0\nbreaker = { plugin = \"error-rate-breaker.wasm\", config = { min_requests = 5, cool_down = \"300ms\", max_cool_down = \"600ms\", trial_requests = 2 } }",
    ) + "[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let proxy = TestProxy::start(&config);
    let load = Load::start(proxy.url("/ok"), &[], 4);
    eventually(Duration::from_secs(5), "traffic on b2", || async {
        b2.served() > 20
    })
    .await;

    let addr = b2.addr;
    drop(b2);
    eventually(Duration::from_secs(5), "b2's breaker to open", || async {
        breaker(&proxy, "p", "b2").await != "closed"
    })
    .await;
    let trips = backend(&proxy, "p", "b2").await;
    assert!(
        trips["state"]["error_rate"].as_u64().unwrap_or(0) > 50,
        "{trips}"
    );
    // Traffic moved to the others.
    let (s0, s1) = (b0.served(), b1.served());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b0.served() > s0 + 10 && b1.served() > s1 + 10);

    let b2 = restart(addr, "b2");
    eventually(Duration::from_secs(10), "b2's breaker to close", || async {
        breaker(&proxy, "p", "b2").await == "closed"
    })
    .await;
    eventually(Duration::from_secs(5), "traffic back on b2", || async {
        b2.served() > 20
    })
    .await;
    let stats = load.stop().await;
    assert_eq!(
        stats.failed, 0,
        "retries hid the dead backend: {:?}",
        stats.first_failure
    );
    assert!(stats.ok > 100, "{stats:?}");

    let metrics = get(
        &format!("http://{}/metrics", proxy.proxy().admin_addr.unwrap()),
        &[],
    )
    .await
    .text();
    let opened = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchyard_breaker_transitions_total")
                && l.contains("backend=\"b2\"")
                && l.contains("to=\"open\"")
        })
        .unwrap_or_else(|| panic!("no breaker transition in metrics:\n{metrics}"));
    assert!(!opened.ends_with(" 0"), "{opened}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_breaker_trips_at_ten_percent_not_at_two() {
    let (bad, ok1, mild, ok2) = (mock("bad"), mock("ok1"), mock("mild"), mock("ok2"));
    bad.fail_every(10);
    mild.fail_every(50);
    let breaker_conf = "breaker = { plugin = \"error-rate-breaker.wasm\", config = { threshold = 0.05, min_requests = 20, window = \"30s\", cool_down = \"30s\" } }";
    let config = pool("ten", &[&bad, &ok1], breaker_conf)
        + &pool("two", &[&mild, &ok2], breaker_conf)
        + "[[routes]]\nname = \"ten\"\nmatch = { path_prefix = \"/ten\" }\npool = \"ten\"\n\
           router = { plugin = \"round-robin.wasm\" }\n\
           [[routes]]\nname = \"two\"\nmatch = { path_prefix = \"/two\" }\npool = \"two\"\n\
           router = { plugin = \"round-robin.wasm\" }\n";
    let proxy = TestProxy::start(&config);
    for _ in 0..400 {
        let r = get(&proxy.url("/two/x"), &[]).await;
        assert_eq!(r.status, 200, "a 503 is retried on the other backend");
    }
    assert!(mild.served() >= 100, "mild saw {}", mild.served());
    assert_eq!(breaker(&proxy, "two", "mild").await, "closed");

    for _ in 0..400 {
        let r = get(&proxy.url("/ten/x"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if breaker(&proxy, "ten", "bad").await == "open" {
            break;
        }
    }
    assert_eq!(breaker(&proxy, "ten", "bad").await, "open");
    // Open: no more traffic for it.
    let before = bad.served();
    for _ in 0..30 {
        assert_eq!(get(&proxy.url("/ten/x"), &[]).await.backend(), "ok1");
    }
    assert_eq!(bad.served(), before);
    assert!(backend(&proxy, "ten", "bad").await["breaker_open_ms"].as_u64() > Some(20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_serves_the_fallback_pool_or_the_maintenance_reply() {
    let basic = mock("basic");
    let config = format!(
        "[pools.agents]\nbackends = [{{ name = \"a1\", address = \"{}\" }}, {{ name = \"a2\", address = \"{}\" }}]\n\
         {}\
         [[routes]]\nname = \"maintenance\"\nmatch = {{ path_prefix = \"/m\" }}\npool = \"agents\"\n\
         fallback = {{ status = 503, body = \"down for maintenance\\n\", retry_after = \"30s\" }}\n\
         [[routes]]\nname = \"graceful\"\nmatch = {{ path_prefix = \"/g\" }}\npool = \"agents\"\n\
         fallback = {{ pool = \"basic\", status = 503 }}\n\
         [[routes]]\nname = \"bare\"\npool = \"agents\"\n",
        dead_address(),
        dead_address(),
        pool("basic", &[&basic], ""),
    );
    let proxy = TestProxy::start(&config);
    for round in 0..5 {
        let started = Instant::now();
        let m = get(&proxy.url("/m/x"), &[]).await;
        assert_eq!(m.status, 503, "round {round}");
        assert_eq!(m.text(), "down for maintenance\n");
        assert_eq!(m.headers["retry-after"], "30");
        assert!(started.elapsed() < Duration::from_secs(2));

        let g = get(&proxy.url("/g/x"), &[]).await;
        assert_eq!(
            (g.status.as_u16(), g.backend()),
            (200, "basic"),
            "round {round}"
        );
    }
    // Passive health has both out now; without a fallback the answer is a
    // plain 503 with retry-after, never a hang.
    let bare = get(&proxy.url("/x"), &[]).await;
    assert_eq!(bare.status, 503, "{}", bare.text());
    assert!(bare.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_backend_by_load_report_gets_no_new_requests_until_it_cools() {
    let (busy, calm) = (mock("busy"), mock("calm"));
    busy.set_load_report(r#"{"cpu":0.30,"mem":0.2,"queue":3}"#);
    calm.set_load_report(r#"{"cpu":0.10}"#);
    let config = pool(
        "p",
        &[&busy, &calm],
        "health = { path = \"/health\", interval = \"50ms\", timeout = \"1s\", body_limit = \"4KiB\", plugin = \"resource-health.wasm\" }",
    ) + "[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let proxy = TestProxy::start(&config);
    eventually(Duration::from_secs(5), "a first load score", || async {
        backend(&proxy, "p", "busy").await["state"]["load_score"] == 300
    })
    .await;

    busy.set_load_report(r#"{"cpu":0.95,"mem":0.41,"queue":12}"#);
    eventually(Duration::from_secs(5), "busy to be unhealthy", || async {
        health(&proxy, "p", "busy").await == "unhealthy"
    })
    .await;
    let before = busy.served();
    for _ in 0..40 {
        let r = get(&proxy.url("/x"), &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "calm"));
    }
    assert_eq!(busy.served(), before, "an unhealthy backend got requests");

    busy.set_load_report(r#"{"cpu":0.85}"#);
    eventually(Duration::from_secs(5), "busy to be degraded", || async {
        health(&proxy, "p", "busy").await == "degraded"
    })
    .await;
    busy.set_load_report(r#"{"cpu":0.2}"#);
    eventually(Duration::from_secs(5), "busy to be healthy", || async {
        health(&proxy, "p", "busy").await == "healthy"
    })
    .await;
    let load = Load::start(proxy.url("/x"), &[], 4);
    eventually(Duration::from_secs(5), "traffic back on busy", || async {
        busy.served() > before + 10
    })
    .await;
    assert_eq!(load.stop().await.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_cools_its_backend_for_its_retry_after_only() {
    let (limited, other) = (mock("limited"), mock("other"));
    let config = pool(
        "p",
        &[&limited, &other],
        "breaker = { plugin = \"rate-limit-cooldown.wasm\" }",
    ) + "[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = { plugin = \"round-robin.wasm\" }\n";
    let proxy = TestProxy::start(&config);
    limited.rate_limit_next(1, 2);
    // The 429 is retried on the other backend, so the client sees 200.
    let mut limited_at = None;
    for _ in 0..50 {
        assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
        if breaker(&proxy, "p", "limited").await == "open" {
            limited_at = Some(Instant::now());
            break;
        }
    }
    let limited_at = limited_at.expect("the 429 opened the breaker");
    let served = limited.served();
    while limited_at.elapsed() < Duration::from_millis(1500) {
        assert_eq!(get(&proxy.url("/x"), &[]).await.backend(), "other");
    }
    assert_eq!(limited.served(), served, "cooling backend got traffic");
    eventually(Duration::from_secs(4), "the cool-down to end", || async {
        breaker(&proxy, "p", "limited").await == "closed"
    })
    .await;
    let cooled = limited_at.elapsed();
    assert!(
        cooled >= Duration::from_millis(1500) && cooled < Duration::from_millis(3500),
        "cooled for {cooled:?}, retry-after said 2 s"
    );
    for _ in 0..20 {
        get(&proxy.url("/x"), &[]).await;
    }
    assert!(limited.served() > served, "back in service after cooling");
    assert_eq!(health(&proxy, "p", "limited").await, "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_cap_and_queue_is_refused_fast_and_nothing_hangs() {
    let mut options = MockOptions::new("slow");
    options.latency = Duration::from_millis(300);
    let slow = mock_with(options);
    let config = pool("p", &[&slow], "")
        + "[[routes]]\nname = \"queued\"\nmatch = { path_prefix = \"/q\" }\npool = \"p\"\n\
           limits = { max_in_flight = 2, queue = 2, queue_timeout = \"5s\", retry_after = \"3s\" }\n\
           [[routes]]\nname = \"impatient\"\nmatch = { path_prefix = \"/i\" }\npool = \"p\"\n\
           limits = { max_in_flight = 1, queue = 5, queue_timeout = \"50ms\", status = 429 }\n";
    let proxy = TestProxy::start(&config);
    let started = Instant::now();
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(get_owned(proxy.url("/q/x"))))
        .collect();
    let mut codes = Vec::new();
    for r in burst {
        let r = r.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.headers["retry-after"], "3");
            assert!(r.text().contains("capacity"), "{}", r.text());
        }
        codes.push(r.status.as_u16());
    }
    codes.sort_unstable();
    assert_eq!(codes, [200, 200, 200, 200, 503, 503, 503, 503, 503, 503]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let burst: Vec<_> = (0..3)
        .map(|_| tokio::spawn(get_owned(proxy.url("/i/x"))))
        .collect();
    let mut codes = Vec::new();
    for r in burst {
        codes.push(r.await.unwrap().status.as_u16());
    }
    codes.sort_unstable();
    assert_eq!(codes, [200, 429, 429], "queued past 50 ms: refused");

    let metrics = get(
        &format!("http://{}/metrics", proxy.proxy().admin_addr.unwrap()),
        &[],
    )
    .await
    .text();
    for expected in [
        "switchyard_admission_refused_total{route=\"queued\",reason=\"queue_full\"} 6",
        "switchyard_admission_refused_total{route=\"impatient\",reason=\"queue_timeout\"} 2",
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_at_their_in_flight_cap_are_skipped_then_refused() {
    // Slow enough that all four requests overlap on a loaded machine.
    let (a, b) = (
        mock_with(MockOptions {
            latency: Duration::from_millis(1000),
            ..MockOptions::new("a")
        }),
        mock_with(MockOptions {
            latency: Duration::from_millis(1000),
            ..MockOptions::new("b")
        }),
    );
    let config =
        pool("p", &[&a, &b], "max_in_flight = 1") + "[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let proxy = TestProxy::start(&config);
    let burst: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get_owned(proxy.url("/x"))))
        .collect();
    let mut served = Vec::new();
    let mut refused = 0;
    for r in burst {
        let r = r.await.unwrap();
        match r.status.as_u16() {
            200 => served.push(r.backend().to_string()),
            503 => {
                assert!(r.text().contains("at capacity"), "{}", r.text());
                assert_eq!(r.headers["retry-after"], "1");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    served.sort();
    assert_eq!(
        (served, refused),
        (vec!["a".to_string(), "b".to_string()], 2)
    );
}

async fn get_owned(url: String) -> Reply {
    get(&url, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_stream_ends_with_an_error_event() {
    let mut options = MockOptions::new("streamer");
    options.chunk_interval = Duration::from_millis(20);
    let b = mock_with(options);
    let config = pool("p", &[&b], "") + "[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let proxy = TestProxy::start(&config);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::get(proxy.url("/sse?n=6&die_after=2"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut broken = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    text.push_str(&String::from_utf8_lossy(d));
                }
            }
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    assert!(text.contains("data: {\"event\":1}"), "{text}");
    assert!(!text.contains("data: {\"event\":2}"), "{text}");
    assert!(
        text.ends_with("\n\n") && text.contains("event: error\ndata: {\"error\""),
        "no error event at the end: {text:?}"
    );
    assert!(broken, "the stream must not end cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_method_body_and_status_rules() {
    let (flaky, steady) = (mock("flaky"), mock("steady"));
    flaky.fail_every(1);
    // Candidates in a fixed order: flaky first, then steady.
    let config = format!(
        "{}[[routes]]\nname = \"llm\"\nmatch = {{ path_prefix = \"/llm\" }}\npool = \"p\"\n\
         router = {{ plugin = \"fallback-chain.wasm\", config = {{ order = [\"flaky\", \"steady\"] }} }}\n\
         retries = {{ non_idempotent = true }}\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n\
         router = {{ plugin = \"fallback-chain.wasm\", config = {{ order = [\"flaky\", \"steady\"] }} }}\n",
        pool("p", &[&flaky, &steady], "max_fails = 0"),
    );
    let proxy = TestProxy::start(&config);
    let get_reply = get(&proxy.url("/x"), &[]).await;
    assert_eq!(
        get_reply.status, 200,
        "GET: a 503 is retried on the next candidate"
    );
    assert_eq!(get_reply.backend(), "steady");
    assert!(flaky.served() >= 1);

    let body = Bytes::from_static(b"{\"model\":\"m\",\"messages\":[]}");
    let post = send("POST", &proxy.url("/x"), &[], body.clone()).await;
    assert_eq!(
        post.status, 503,
        "POST is not retried on an answer by default"
    );
    assert_eq!(post.backend(), "flaky");

    let post = send("POST", &proxy.url("/llm/x"), &[], body.clone()).await;
    assert_eq!(post.status, 200, "non_idempotent = true retries POST");
    assert_eq!(post.json()["backend"], "steady");
    assert_eq!(post.json()["method"], "POST");

    // Every candidate failing: the last answer is passed on.
    steady.fail_every(1);
    let both = get(&proxy.url("/x"), &[]).await;
    assert_eq!(both.status, 503, "{}", both.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_pool_plugins_are_refused_naming_file_and_pool() {
    let b = mock("b");
    let good = pool(
        "p",
        &[&b],
        "breaker = { plugin = \"error-rate-breaker.wasm\" }",
    ) + "[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let bad_config = pool(
        "p",
        &[&b],
        "breaker = { plugin = \"error-rate-breaker.wasm\", config = { threshold = 5 } }",
    ) + "[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let err = TestProxy::try_start(&bad_config).err().expect("refused");
    assert!(
        err.contains("error-rate-breaker.wasm")
            && err.contains("pool `p`")
            && err.contains("threshold"),
        "{err}"
    );
    let wrong_world = pool("p", &[&b], "health = { plugin = \"round-robin.wasm\" }")
        + "[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let err = TestProxy::try_start(&wrong_world).err().expect("refused");
    assert!(
        err.contains("round-robin.wasm") && err.contains("switchyard:policy/health-check@0.3.0"),
        "{err}"
    );

    // On reload, the last good config keeps serving.
    let proxy = TestProxy::start(&good);
    proxy.write_config(&bad_config);
    eventually(Duration::from_secs(5), "the refused reload", || async {
        let status = proxy.status().await;
        status["reloads"]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e["ok"] == false))
    })
    .await;
    assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
    let status = proxy.status().await;
    assert_eq!(
        status["pools"][0]["breakers"][0]["file"], "error-rate-breaker.wasm",
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_config_serves_with_its_health_checks_and_breaker() {
    let backends = switchyard_testkit::demo_backends().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.toml");
    let text = switchyard_testkit::demo_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &plugin_dir().to_string_lossy(),
        &backends,
    );
    std::fs::write(&path, text).unwrap();
    let config = switchyard::config::Config::load(&path).unwrap();
    let proxy = switchyard::Switchyard::start(&config).unwrap();
    let url = |p: &str| format!("http://{}{p}", proxy.addr());
    let r = get(&url("/graphs/research/v1/x"), &[("x-priority", "high")]).await;
    assert!(r.backend().starts_with("fast-"), "{}", r.backend());
    let r = get(&url("/graphs/tools/x"), &[]).await;
    assert!(r.backend().starts_with("tool-"), "{}", r.backend());
    let admin = proxy.admin_addr.unwrap();
    eventually(Duration::from_secs(5), "probes of the tools", || async {
        let m = get(&format!("http://{admin}/metrics"), &[]).await.text();
        m.contains("switchyard_health_probes_total{pool=\"tools\",result=\"ok\"}")
    })
    .await;
    proxy.shutdown();
}

/// Two breakers on one pool: a 429 cool-down and a token budget. Each
/// opens its backend for its own reason and period; the pool's state is
/// the most restrictive, and each backend comes back when its own breaker
/// lets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_breakers_combine_the_most_restrictive_wins() {
    let (limited, metered) = (mock("limited"), mock("metered"));
    let config = pool(
        "p",
        &[&limited, &metered],
        r#"breaker = [
  { plugin = "rate-limit-cooldown.wasm" },
  { plugin = "global-token-budget.wasm", config = { tokens = 100, window = "5s", key = "combo" } },
]"#,
    ) + "[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = { plugin = \"round-robin.wasm\" }\n\
         retries = { non_idempotent = true }\n\
         fallback = { status = 429, body = \"spent\\n\", retry_after = \"1s\" }\n";
    let proxy = TestProxy::start(&config);
    let chat = || async {
        let body = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        send(
            "POST",
            &proxy.url("/v1/chat/completions"),
            &[("content-type", "application/json")],
            body,
        )
        .await
    };
    // Run inside one 5 s budget window.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(5000 - now % 5000 + 100)).await;

    limited.rate_limit_next(1, 2);
    let mut limited_at = None;
    for _ in 0..4 {
        assert_eq!(chat().await.status, 200);
        if breaker(&proxy, "p", "limited").await == "open" {
            limited_at = Some(Instant::now());
            break;
        }
    }
    let limited_at = limited_at.expect("the 429 opened `limited`");
    // `metered` takes everything until its 100 tokens (18 per answer) are
    // spent; then both are open and the fallback answers.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(chat().await.status.as_u16());
    }
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");
    assert_eq!(breaker(&proxy, "p", "metered").await, "open");
    assert_eq!(breaker(&proxy, "p", "limited").await, "open");
    assert!(limited_at.elapsed() < Duration::from_millis(1500));

    // `limited` cools down after its retry-after; `metered` stays open until
    // its budget window ends.
    eventually(Duration::from_secs(3), "`limited` to close", || async {
        breaker(&proxy, "p", "limited").await == "closed"
    })
    .await;
    assert_eq!(breaker(&proxy, "p", "metered").await, "open");
    let r = chat().await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "limited"));
}
