//! Responses stream through unbuffered: SSE events arrive as they are sent.

use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use switchyard_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one() {
    let mut options = MockOptions::new("streamer");
    options.chunk_interval = Duration::from_millis(100);
    let backend = mock_with(options);
    let proxy = TestProxy::start(&format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {{ plugin = \"round-robin.wasm\" }}\n",
        backend_entry(&backend, "")
    ));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri = proxy
        .url("/sse?n=6")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let resp = client.get(uri).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("stream broke: {e}"));
        if let Some(data) = frame.data_ref() {
            arrivals.push(started.elapsed());
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert_eq!(text.matches("data: ").count(), 6, "{text}");
    assert_eq!(
        arrivals.len(),
        6,
        "each event is its own chunk: {arrivals:?}"
    );
    // The first event arrives long before the last was sent (500 ms later).
    assert!(arrivals[0] < Duration::from_millis(300), "{arrivals:?}");
    assert!(arrivals[5] >= Duration::from_millis(450), "{arrivals:?}");
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(50),
            "events were batched: {arrivals:?}"
        );
    }
}

/// An OpenAI-style streamed completion ends with the usage chunk and
/// `[DONE]`, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_completion_arrives_intact() {
    let mut options = MockOptions::new("model");
    options.chunk_interval = Duration::from_millis(10);
    let backend = mock_with(options);
    let proxy = TestProxy::start(&format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backend_entry(&backend, "")
    ));
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        bytes::Bytes::from_static(br#"{"model":"m","stream":true,"messages":[]}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("\"usage\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(r.backend(), "model");
}

/// A stream that stalls past the idle timeout ends with an error at the
/// client, never with a clean-looking end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_ends_with_an_error() {
    let mut options = MockOptions::new("stalls");
    options.chunk_interval = Duration::from_millis(600);
    let backend = mock_with(options);
    let proxy = TestProxy::start(&format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\ntimeouts = {{ idle = \"150ms\" }}\n",
        backend_entry(&backend, "")
    ));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri = proxy
        .url("/sse?n=3")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = client.get(uri).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.map(|f| f.map(|f| f.is_data()));
    assert!(
        matches!(first, Some(Ok(true))),
        "first event arrives: {first:?}"
    );
    let mut ended_with_error = false;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            ended_with_error = true;
            break;
        }
    }
    assert!(ended_with_error, "the stalled stream ended cleanly");
    let status = proxy.status().await;
    assert_eq!(
        status["pools"][0]["backends"][0]["state"]["error_rate"], 1000,
        "{status}"
    );
}
