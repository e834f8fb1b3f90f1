//! Hedged requests through the real proxy: a router (fixture-pick with
//! `hedge_after`) asks the host to hedge; a stalled first backend is
//! overtaken by the next, a failing hedge leaves the first to answer, and
//! what may not be hedged (a streamed body, an empty budget) is not.

use bytes::Bytes;
use std::time::{Duration, Instant};
use switchyard_tests::*;

fn slow(name: &str, latency: Duration) -> MockBackend {
    mock_with(MockOptions {
        latency,
        ..MockOptions::new(name)
    })
}

/// A pool of `backends` in id order behind fixture-pick, which sends every
/// request to backend 0 first (or `x-pick`), the others after it, hedged
/// after `after`; `extra` goes into the route.
/// The router's call deadline is generous: these tests are about hedging,
/// and a call cut short on a busy test machine makes the built-in router
/// decide, which hedges nothing.
fn config(route: &str, backends: &[&MockBackend], after: &str, extra: &str) -> String {
    let entries: Vec<String> = backends.iter().map(|b| backend_entry(b, "")).collect();
    format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"{route}\"\npool = \"p\"\n{extra}\n\
         router = {{ plugin = \"fixture-pick.wasm\", deadline = \"250ms\", config = {{ fallbacks = true, hedge_after = \"{after}\" }} }}\n",
        entries.join(", ")
    )
}

fn chat(filler: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi {}"}}]}}"#,
        "x".repeat(filler)
    ))
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_first_backend_is_overtaken_by_its_hedge() {
    let (stalled, fast) = (slow("stalled", Duration::from_secs(3)), mock("fast"));
    let proxy = TestProxy::start(&config("hedged", &[&stalled, &fast], "80ms", ""));
    let admin = proxy.proxy().admin_addr.expect("admin");
    for i in 0..8 {
        let started = Instant::now();
        let run = format!("hedged-run-{i}");
        let r = send(
            "POST",
            &proxy.url("/v1/chat/completions"),
            &[JSON, ("x-run-id", &run)],
            chat(10),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "fast"),
            "{}",
            r.text()
        );
        assert!(
            took >= Duration::from_millis(80) && took < Duration::from_secs(2),
            "answered after {took:?}"
        );
    }
    // Both backends got every request; the stalled one's were cancelled,
    // so it holds nothing in flight.
    assert_eq!((stalled.requests(), fast.requests()), (8, 8));
    eventually(
        Duration::from_secs(2),
        "the cancelled exchanges to end",
        || async {
            let status = proxy.status().await;
            status["pools"][0]["backends"][0]["state"]["in_flight"] == 0
        },
    )
    .await;
    let text = scrape(&proxy).await;
    let hedges = |result: &str| {
        metric(
            &text,
            "switchyard_hedges_total",
            &[("route", "hedged"), ("result", result)],
        )
    };
    assert_eq!(hedges("won"), 8.0, "{text}");
    assert_eq!(hedges("lost"), 0.0);
    assert_eq!(
        metric(
            &text,
            "switchyard_retries_total",
            &[("route", "hedged"), ("reason", "hedge")]
        ),
        8.0
    );
    // Only the winner's answer is metered: one answer's tokens per run.
    eventually(Duration::from_secs(3), "the run counted", || async {
        get(&format!("http://{admin}/runs/hedged-run-7"), &[])
            .await
            .json()["requests"]
            == 1
    })
    .await;
    let run = get(&format!("http://{admin}/runs/hedged-run-7"), &[])
        .await
        .json();
    assert_eq!(run["prompt_tokens"], 12, "{run}");

    // A first backend that answers in time is never hedged.
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &[JSON, ("x-pick", "1")],
        chat(10),
    )
    .await;
    assert_eq!(r.backend(), "fast");
    assert_eq!((stalled.requests(), fast.requests()), (8, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hedge_leaves_the_first_backend_to_answer() {
    let (first, failing) = (slow("first", Duration::from_millis(400)), mock("failing"));
    failing.fail_every(1);
    let proxy = TestProxy::start(&config("hedge-fails", &[&first, &failing], "50ms", ""));
    for _ in 0..4 {
        let started = Instant::now();
        let r = send(
            "POST",
            &proxy.url("/v1/chat/completions"),
            &[JSON],
            chat(10),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "first"),
            "{}",
            r.text()
        );
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
    assert_eq!(failing.requests(), 4, "each request was hedged");
    let text = scrape(&proxy).await;
    let hedges = |result: &str| {
        metric(
            &text,
            "switchyard_hedges_total",
            &[("route", "hedge-fails"), ("result", result)],
        )
    };
    assert_eq!((hedges("lost"), hedges("won")), (4.0, 0.0), "{text}");
    // The hedge's 503s count against its backend, as any answer does.
    assert_eq!(
        metric(
            &text,
            "switchyard_requests_total",
            &[
                ("route", "hedge-fails"),
                ("backend", "failing"),
                ("class", "5xx")
            ]
        ),
        4.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_and_an_empty_budget_are_not_hedged() {
    let latency = Duration::from_millis(300);
    let (first, spare) = (slow("first", latency), mock("spare"));
    // A body over `buffer_body` is streamed once: it cannot be sent twice.
    let proxy = TestProxy::start(&config(
        "streamed",
        &[&first, &spare],
        "30ms",
        "retries = { buffer_body = \"1KiB\" }",
    ));
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &[JSON],
        chat(4096),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.backend()),
        (200, "first"),
        "{}",
        r.text()
    );
    assert_eq!(spare.requests(), 0);
    // A held body is hedged...
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &[JSON],
        chat(10),
    )
    .await;
    assert_eq!(r.backend(), "spare");
    drop(proxy);

    // ...unless the retry budget is spent: no floor, no share.
    let (first, spare) = (slow("first", latency), mock("spare"));
    let proxy = TestProxy::start(&config(
        "no-budget",
        &[&first, &spare],
        "30ms",
        "retries = { budget_ratio = 0.0, budget_min_per_second = 0 }",
    ));
    for _ in 0..3 {
        let r = send(
            "POST",
            &proxy.url("/v1/chat/completions"),
            &[JSON],
            chat(10),
        )
        .await;
        assert_eq!(r.backend(), "first");
    }
    assert_eq!(spare.requests(), 0);
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "switchyard_hedges_total",
            &[("route", "no-budget"), ("result", "budget")]
        ),
        3.0,
        "{text}"
    );
}
