//! Several `switchyard` processes sharing state through a real Redis
//! (Debian's `redis-server`, started here on a loopback port): one token
//! budget enforced across replicas, and traffic that keeps flowing when
//! Redis dies and picks the store up again when it is back.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_testkit::{MockBackend, MockOptions};

mod common;
use common::{Redis, Replica, eventually, exchange, free_port};

/// Tokens one mock chat completion reports (12 prompt + 6 completion).
const TOKENS_PER_REPLY: u64 = 18;

/// A chat completion through `addr`: its status and the tokens it reported.
fn chat(addr: SocketAddr) -> (u16, u64) {
    let body = r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, text) = exchange(
        addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let tokens = text
        .split("\"total_tokens\":")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (status, tokens)
}

/// Starts a replica with one `models` pool on `backend`, guarded by the
/// global token budget on `store`, and a 429 fallback reply.
fn budget_replica(backend: &MockBackend, store: &str, budget_config: &str) -> Replica {
    Replica::launch(
        store,
        &format!(
            r#"[pools.models]
backends = [{{ name = "gpt", address = "{backend}" }}]
breaker = {{ plugin = "global-token-budget.wasm", config = {{ {budget_config} }} }}

[[routes]]
name = "chat"
pool = "models"
fallback = {{ status = 429, body = "token budget spent\n", retry_after = "1s" }}
"#,
            backend = backend.addr
        ),
    )
}

fn metrics(admin: SocketAddr) -> String {
    exchange(
        admin,
        "GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .1
}

/// Sleeps until `offset` past the start of the next `window` of wall-clock
/// time, so a run falls inside one budget window.
fn align_to_window(window: Duration, offset: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let w = window.as_millis();
    let into = now.as_millis() % w;
    std::thread::sleep(Duration::from_millis((w - into) as u64) + offset);
}

#[test]
fn two_replicas_share_one_token_budget() {
    // Model-like latency: the budget is enforced as answers come back, so
    // what overshoots is what was in flight when it ran out.
    let mut options = MockOptions::new("gpt");
    options.latency = Duration::from_millis(50);
    let backend = MockBackend::start(options).expect("mock");
    let redis = Redis::start(free_port());
    let budget = 1000;
    let config = format!("tokens = {budget}, window = \"6s\"");
    let replicas = [
        budget_replica(&backend, &redis.url(), &config),
        budget_replica(&backend, &redis.url(), &config),
    ];
    // Both replicas run well inside one 6 s window.
    align_to_window(Duration::from_secs(6), Duration::from_millis(200));
    let started = Instant::now();
    let results: Vec<Vec<(u16, u64)>> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let addr = replicas[i % 2].addr;
                s.spawn(move || {
                    let mut seen = Vec::new();
                    while started.elapsed() < Duration::from_millis(2500) {
                        seen.push(chat(addr));
                    }
                    seen
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    });
    let served: u64 = results.iter().flatten().map(|(_, t)| t).sum();
    eprintln!("{served} tokens served for a budget of {budget} across two replicas");
    let ok_per_replica = |r: usize| {
        results
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == r)
            .flat_map(|(_, seen)| seen)
            .filter(|(s, _)| *s == 200)
            .count()
    };
    let statuses: Vec<u16> = results.iter().flatten().map(|(s, _)| *s).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "only answers and budget refusals: {statuses:?}"
    );
    // Spent, and not by much more than the budget: the four clients'
    // requests in flight when it ran out, and on a loaded machine one more
    // each while the last answers are being counted.
    assert!(
        served >= budget - TOKENS_PER_REPLY,
        "budget not spent: {served} tokens served"
    );
    assert!(
        served <= budget + 8 * TOKENS_PER_REPLY,
        "{served} tokens served for a budget of {budget}: replicas did not share it\n{}",
        replicas[0].log()
    );
    assert!(
        ok_per_replica(0) > 0 && ok_per_replica(1) > 0,
        "both replicas served"
    );
    // Every client ended refused: the budget holds on both replicas.
    for seen in &results {
        assert_eq!(seen.last().map(|r| r.0), Some(429), "{seen:?}");
    }
    assert_eq!(
        redis.sum("switchyard:token-budget:models:gpt:*") as u64,
        served,
        "the shared counter holds every replica's tokens"
    );
}

#[test]
fn redis_dying_keeps_traffic_flowing_and_comes_back() {
    let backend = MockBackend::start(MockOptions::new("gpt")).expect("mock");
    let port = free_port();
    let mut redis = Redis::start(port);
    let replica = budget_replica(
        &backend,
        &redis.url(),
        "tokens = 100000000, window = \"60s\", key = \"outage\"",
    );
    let status = exchange(
        replica.admin,
        "GET /status HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .1;
    assert!(
        status.contains(&format!("\"shared_store\":\"{}\"", redis.url())),
        "{status}"
    );
    for _ in 0..20 {
        assert_eq!(chat(replica.addr).0, 200);
    }
    // Outcomes reach the budget off the request path, a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.sum("switchyard:outage:*") < 20 * TOKENS_PER_REPLY as i64 {
        assert!(
            Instant::now() < deadline,
            "tokens never counted in redis: {}\n{}\n{}",
            redis.sum("switchyard:outage:*"),
            replica.log(),
            metrics(replica.admin)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    redis.kill();
    for _ in 0..50 {
        assert_eq!(chat(replica.addr).0, 200, "traffic flows without redis");
    }
    let text = metrics(replica.admin);
    let failures: f64 = text
        .lines()
        .filter(|l| l.starts_with("switchyard_shared_errors_total") && l.contains("unavailable"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failures > 0.0, "outage counted:\n{text}");
    assert!(
        replica.log().contains("shared store unreachable"),
        "outage logged:\n{}",
        replica.log()
    );

    // Back on the same port (empty, as a restarted cache is): the replica
    // reconnects by itself and counts again.
    let redis = Redis::start(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(chat(replica.addr).0, 200);
        if redis.sum("switchyard:outage:*") > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reconnected:\n{}",
            replica.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(replica.log().contains("shared store reachable again"));
}

#[test]
fn without_redis_the_budget_falls_back_to_local_counts() {
    let backend = MockBackend::start(MockOptions::new("gpt")).expect("mock");
    let mut redis = Redis::start(free_port());
    let replica = budget_replica(
        &backend,
        &redis.url(),
        "tokens = 180, window = \"10s\", key = \"local\"",
    );
    redis.kill();
    align_to_window(Duration::from_secs(10), Duration::from_millis(200));
    // Paced as model answers are: the budget is a breaker fed by outcomes
    // on the control thread, which on a saturated machine may lag a burst
    // of instant answers by several; this test is about what it counts.
    let statuses: Vec<u16> = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            chat(replica.addr).0
        })
        .collect();
    // 180 tokens are 10 answers, counted by this replica alone
    // (`on_unavailable = "local"`); one more may pass while the tenth is
    // being counted. Then the route's fallback answers.
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..=11).contains(&served), "{statuses:?}");
    assert!(statuses.ends_with(&[429; 5]), "{statuses:?}");
}

/// The breaker state of `backend` on `replica`, from `/status`.
fn breaker_state(replica: &Replica, backend: &str) -> String {
    let text = exchange(
        replica.admin,
        "GET /status HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .1;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    status["pools"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["name"] == backend)
        .map(|b| b["state"]["breaker"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn a_trip_on_one_replica_opens_the_backend_on_the_other() {
    let (flaky, good) = (
        MockBackend::start(MockOptions::new("flaky")).expect("mock"),
        MockBackend::start(MockOptions::new("good")).expect("mock"),
    );
    flaky.fail_every(1);
    let redis = Redis::start(free_port());
    let body = format!(
        r#"[pools.models]
backends = [{{ name = "flaky", address = "{}" }}, {{ name = "good", address = "{}" }}]
breaker = {{ plugin = "error-rate-breaker.wasm", config = {{ min_requests = 20, cool_down = "30s", share_trips = true }} }}

[[routes]]
name = "chat"
pool = "models"
router = {{ plugin = "round-robin.wasm" }}
retries = {{ attempts = 1 }}
"#,
        flaky.addr, good.addr
    );
    let (a, b) = (
        Replica::launch(&redis.url(), &body),
        Replica::launch(&redis.url(), &body),
    );
    // Replica `a` sees `flaky` fail every request until it trips.
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker_state(&a, "flaky") != "open" {
        assert!(Instant::now() < deadline, "a never tripped:\n{}", a.log());
        chat(a.addr);
    }
    // Replica `b` has seen nothing of it; one answer from `flaky` (its
    // own would need 20) and it opens `flaky` too.
    assert_eq!(breaker_state(&b, "flaky"), "closed");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sent = 0;
    while breaker_state(&b, "flaky") != "open" {
        assert!(
            Instant::now() < deadline,
            "b never opened flaky:\n{}",
            b.log()
        );
        if sent < 4 {
            chat(b.addr);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sent <= 4, "b needed {sent} requests");
    for _ in 0..10 {
        assert_eq!(chat(b.addr).0, 200, "b sends nothing to flaky");
    }
}

#[test]
fn a_routers_view_of_redis_catches_up_without_waiting() {
    use switchyard::shared::{Access, SharedStore};
    let redis = Redis::start(free_port());
    let config = switchyard::config::SharedConfig {
        store: redis.url(),
        ..Default::default()
    };
    let store = SharedStore::in_process();
    store.configure(&config).expect("configure");
    // Written by a pool plugin (or another replica): the router's first
    // read says it is being read, later reads see it.
    store.set(Access::Wait, "flag", "on", 0).expect("set");
    assert!(store.get(Access::NoWait, "flag").is_err());
    eventually("the router never saw `flag`", || {
        store.get(Access::NoWait, "flag") == Ok(Some("on".into()))
    });
    // A router's additions reach Redis in the background, and the router's
    // own view includes them at once.
    for i in 1..=50 {
        assert_eq!(store.counter_add(Access::NoWait, "hits", 1, 60_000), Ok(i));
    }
    eventually("the additions never reached redis", || {
        store.counter_get(Access::Wait, "hits") == Ok(50)
    });
    // Another writer's additions show in the router's view once it refreshes.
    store
        .counter_add(Access::Wait, "hits", 100, 0)
        .expect("add");
    eventually("the router never saw the other writer", || {
        store.counter_get(Access::NoWait, "hits") == Ok(150)
    });
    assert_eq!(redis.sum("*hits"), 150);
}

#[test]
fn a_runs_cost_adds_up_over_replicas() {
    let redis = Redis::start(free_port());
    let backend = MockBackend::start(MockOptions::new("gpt")).expect("mock");
    let body = format!(
        "[pools.models]\nbackends = [{{ name = \"gpt\", address = \"{}\", labels = {{ input_price = 1, output_price = 2 }} }}]\n\n[[routes]]\nname = \"chat\"\npool = \"models\"\n",
        backend.addr
    );
    let (a, b) = (
        Replica::launch(&redis.url(), &body),
        Replica::launch(&redis.url(), &body),
    );
    let ask = |addr: SocketAddr| {
        let body = r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        exchange(
            addr,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nx-run-id: graph-run-9\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .0
    };
    for _ in 0..3 {
        assert_eq!(ask(a.addr), 200);
        assert_eq!(ask(b.addr), 200);
    }
    let totals = |admin: SocketAddr| {
        let (_, text) = exchange(
            admin,
            "GET /runs/graph-run-9 HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
        );
        let json = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        serde_json::from_str::<serde_json::Value>(&json).unwrap_or_default()
    };
    // Each replica adds in the background; either one reads the sum.
    eventually("six requests of the run in Redis", || {
        totals(a.admin)["requests"] == 6
    });
    let t = totals(b.admin);
    assert_eq!(t["prompt_tokens"], 72, "{t}");
    assert_eq!(t["completion_tokens"], 36, "{t}");
    assert!(
        (t["cost_usd"].as_f64().unwrap_or(0.0) - (72.0 + 72.0) / 1e6).abs() < 1e-9,
        "{t}"
    );
}
