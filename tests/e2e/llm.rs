//! LLM traffic: routing on the JSON body's `model`, bodies forwarded
//! unchanged, and the official `openai` Python client against the proxy.

use bytes::Bytes;
use std::time::Duration;
use switchyard_tests::*;

/// A pool serving two models and a route that picks by the body's `model`.
fn model_config(
    fast_a: &MockBackend,
    fast_b: &MockBackend,
    cheap: &MockBackend,
    peek: &str,
) -> String {
    format!(
        r#"
[pools.models]
backends = [{}, {}, {}]

[[routes]]
name = "chat"
pool = "models"
router = {{ plugin = "model-router.wasm", body_peek = "{peek}", config = {{ aliases = {{ fast = "gpt-4o-mini" }} }} }}
retries = {{ non_idempotent = true }}
"#,
        backend_entry(fast_a, r#"models = "gpt-4o-mini,gpt-4o""#),
        backend_entry(fast_b, r#"models = "gpt-4o-mini""#),
        backend_entry(cheap, r#"models = "llama-3.1-8b""#),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A chat request body with `model` first and `filler` bytes of message.
fn chat_body(model: &str, filler: usize) -> Bytes {
    let content = "x".repeat(filler);
    Bytes::from(format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"{content}"}}],"stream":false}}"#
    ))
}

async fn post_json(url: &str, body: Bytes) -> Reply {
    send("POST", url, &[("content-type", "application/json")], body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_on_the_body_model_and_forwards_the_body_unchanged() {
    let (fast_a, fast_b, cheap) = (mock("fast-a"), mock("fast-b"), mock("cheap"));
    let proxy = TestProxy::start(&model_config(&fast_a, &fast_b, &cheap, "8KiB"));

    for (model, wanted) in [
        ("llama-3.1-8b", "cheap"),
        ("gpt-4o-mini", "fast-"),
        ("fast", "fast-"),
    ] {
        let r = post_json(&proxy.url("/v1/chat/completions"), chat_body(model, 10)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.backend().starts_with(wanted),
            "{model} went to {}",
            r.backend()
        );
        assert_eq!(r.json()["model"], model, "the backend saw the body's model");
    }

    // Bodies inside the peek are read whole, routed, and reach the backend
    // byte for byte.
    for filler in [100, 7 * 1024] {
        let body = chat_body("llama-3.1-8b", filler);
        let r = post_json(&proxy.url("/echo"), body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), "cheap");
        let echo = r.json();
        assert_eq!(echo["body_len"], body.len(), "filler {filler}");
        assert_eq!(echo["body_sha256"], sha256_hex(&body), "filler {filler}");
    }

    // Past the peek the object is not read whole, so even a `model` at the
    // front is not trusted (a later duplicate would win at the backend):
    // the router is told the field was not seen, and says so, OpenAI style.
    for body in [
        chat_body("llama-3.1-8b", 300 * 1024),
        Bytes::from(format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"llama-3.1-8b"}}"#,
            "y".repeat(9 * 1024)
        )),
    ] {
        let r = post_json(&proxy.url("/v1/chat/completions"), body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("model_not_seen"), "{}", r.text());
        assert!(r.text().contains("body_peek"), "{}", r.text());
    }
    // A body read whole that lacks the field is a different error.
    let r = post_json(
        &proxy.url("/v1/chat/completions"),
        Bytes::from_static(br#"{"messages":[]}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("model_missing"), "{}", r.text());
    // Duplicate keys: the last one decides, as at the backend.
    let twice =
        Bytes::from_static(br#"{"model":"gpt-4o-mini","messages":[],"model":"llama-3.1-8b"}"#);
    let r = post_json(&proxy.url("/v1/chat/completions"), twice).await;
    assert_eq!(r.backend(), "cheap", "{}", r.text());
    let r = post_json(&proxy.url("/v1/chat/completions"), chat_body("gpt-9", 10)).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("gpt-9"), "{}", r.text());

    // Not JSON: the body is not read, so the router sees no model.
    let r = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &[("content-type", "text/plain")],
        chat_body("llama-3.1-8b", 10),
    )
    .await;
    assert_eq!(r.status, 400);
}

/// With the default peek (1 MiB) an agent-sized prompt is routed on, and a
/// body past any peek still streams through whole where the router lets
/// unknown models through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_prompts_are_routed_and_bodies_past_the_peek_stream_unchanged() {
    let (fast, cheap) = (mock("fast"), mock("cheap"));
    let config = format!(
        "[pools.models]\nbackends = [{}, {}]\n\n\
         [[routes]]\nname = \"peek\"\nmatch = {{ path_prefix = \"/small\" }}\npool = \"models\"\n\
         router = {{ plugin = \"model-router.wasm\", body_peek = \"8KiB\", config = {{ unknown = \"any\" }} }}\n\n\
         [[routes]]\nname = \"default\"\npool = \"models\"\nrouter = {{ plugin = \"model-router.wasm\" }}\n",
        backend_entry(&fast, r#"models = "gpt-4o-mini""#),
        backend_entry(&cheap, r#"models = "llama-3.1-8b""#),
    );
    let proxy = TestProxy::start(&config);
    let body = chat_body("llama-3.1-8b", 600 * 1024);
    let r = post_json(&proxy.url("/echo"), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "cheap");
    assert_eq!(r.json()["body_sha256"], sha256_hex(&body));
    let body = chat_body("llama-3.1-8b", 300 * 1024);
    let r = post_json(&proxy.url("/small/echo"), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&body));
}

/// A body read to route on, then retried: the held copy goes to the next
/// backend whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_for_routing_is_replayed_on_retry() {
    let (fast_a, fast_b, cheap) = (mock("fast-a"), mock("fast-b"), mock("cheap"));
    fast_a.fail_every(1);
    fast_b.fail_every(1);
    let proxy = TestProxy::start(&model_config(&fast_a, &fast_b, &cheap, "64KiB"));
    let body = chat_body("gpt-4o-mini", 20 * 1024);
    let r = post_json(&proxy.url("/echo"), body.clone()).await;
    // Both fast backends failed; the second one's 503 is passed on after
    // both got the whole body.
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(fast_a.requests() + fast_b.requests(), 2);

    fast_b.fail_every(0);
    for _ in 0..4 {
        let r = post_json(&proxy.url("/echo"), body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), "fast-b");
        assert_eq!(r.json()["body_sha256"], sha256_hex(&body));
    }
}

/// The Python interpreter with `openai` installed: `SWITCHYARD_PYTHON`
/// (set by `scripts/test.sh`), else `python3`.
fn python() -> String {
    std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_works_through_the_proxy() {
    let slow_stream = |name: &str| {
        let mut o = MockOptions::new(name);
        o.chunk_interval = Duration::from_millis(200);
        mock_with(o)
    };
    let (fast_a, fast_b, cheap) = (slow_stream("fast-a"), slow_stream("fast-b"), mock("cheap"));
    let proxy = TestProxy::start(&model_config(&fast_a, &fast_b, &cheap, "64KiB"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/openai_client.py");
    let out = tokio::process::Command::new(python())
        .arg(&script)
        .arg(proxy.url("/v1"))
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run ./scripts/test.sh, which installs the openai client",
                python()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("no report ({e}): {stdout}"));
    assert!(
        report["whole"]["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("fast-"))
    );
    assert_eq!(report["cheap_backend"], "cheap");
    assert_eq!(report["unknown_model"], 404);
    let stream = &report["stream"];
    assert_eq!(stream["chunks"], 6);
    let (first, total) = (
        stream["first_token_s"].as_f64().unwrap_or(f64::MAX),
        stream["total_s"].as_f64().unwrap_or(0.0),
    );
    // Eight events 200 ms apart: the first token comes with the first one,
    // not after the whole stream was buffered.
    assert!(total >= 1.0, "stream took {total} s");
    assert!(
        first < total / 3.0,
        "first token after {first} s of {total} s"
    );
}

/// `examples/langgraph`: the app's graph runs against the example's own
/// routing config (its mock addresses swapped for this test's mocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_langgraph_example_routes_each_node_by_priority() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/langgraph");
    let text =
        std::fs::read_to_string(example.join("switchyard.toml")).unwrap_or_else(|e| panic!("{e}"));
    let routing = &text[text
        .find("[pools.models]")
        .unwrap_or_else(|| panic!("no pool in the example"))..];
    let mocks = [mock("fast-a"), mock("fast-b"), mock("cheap")];
    let mut routing = routing.to_string();
    for (port, m) in (7101..).zip(&mocks) {
        routing = routing.replace(&format!("127.0.0.1:{port}"), &m.addr.to_string());
    }
    let proxy = TestProxy::start(&routing);
    let out = tokio::process::Command::new(python())
        .arg(example.join("app.py"))
        .args(["--json", "--base-url", &proxy.url("/v1")])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("no report ({e}): {stdout}"));
    let calls = report["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"));
    // Four workers fanned out, then the merge.
    assert_eq!(calls.len(), 5, "{report}");
    for c in calls {
        let backend = c["backend"].as_str().unwrap_or("");
        match c["priority"].as_str() {
            Some("high") => assert!(backend.starts_with("fast-"), "{c}"),
            _ => assert_eq!(backend, "cheap", "{c}"),
        }
        assert_eq!(c["tokens"], 18, "{c}");
    }
    assert_eq!(
        calls.last().map(|c| &c["node"]),
        Some(&serde_json::json!("merge"))
    );
    assert!(
        calls
            .iter()
            .any(|c| c["stream"] == true && c["first_token_ms"].is_number())
    );
    // Every call was counted against its backend's token budget, off the
    // request path and so a moment later.
    let admin = proxy
        .proxy()
        .admin_addr
        .unwrap_or_else(|| panic!("tests enable admin"));
    let mut counted = 0.0;
    for _ in 0..50 {
        let metrics = get(&format!("http://{admin}/metrics"), &[]).await.text();
        counted = metrics
            .lines()
            .filter(|l| {
                l.starts_with("switchyard_plugin_counter_total") && l.contains("tokens_counted")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted >= 90.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, 5.0 * 18.0);
}

/// The official client over TLS to the proxy, the proxy over TLS to a
/// backend that takes only the pool's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_speaks_tls_with_a_client_key_and_the_backend_sees_only_the_pools() {
    use switchyard_tests::pki::Pki;
    let pki = Pki::new("openai test CA");
    let mut options = MockOptions::new("provider");
    options.tls = Some(pki.backend_tls("provider", false));
    options.require_key = Some("sk-provider-secret".into());
    options.chunk_interval = Duration::from_millis(20);
    let provider = mock_with(options);
    let (cert, key) = pki.issue("listener", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("provider.key"), "sk-provider-secret").unwrap();
    std::fs::write(
        dir.path().join("keys.toml"),
        format!(
            "[[keys]]\nname = \"graph-a\"\nsha256 = \"{}\"\n",
            switchyard::route::auth::key_digest("sk-client-a")
        ),
    )
    .unwrap();
    let config = format!(
        "[pools.openai]\ntls = {{ ca_file = \"{ca}\" }}\n\
         set_headers = {{ authorization = {{ file = \"{dir}/provider.key\", prefix = \"Bearer \" }} }}\n\
         backends = [{{ name = \"provider\", address = \"https://localhost:{port}\" }}]\n\n\
         [[routes]]\nname = \"openai\"\nmatch = {{ path_prefix = \"/v1/\" }}\npool = \"openai\"\nauth = {{ keys_file = \"{dir}/keys.toml\" }}\n",
        ca = pki.ca().display(),
        dir = dir.path().display(),
        port = provider.addr.port(),
    );
    let server = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let proxy = TestProxy::start_full(&config, &server, None);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/openai_tls.py");
    let out = tokio::process::Command::new(python())
        .arg(&script)
        .arg(format!("https://localhost:{}/v1", proxy.addr().port()))
        .arg(pki.ca())
        .arg("sk-client-a")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run ./scripts/test.sh", python()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client over TLS failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("no report ({e}): {stdout}"));
    assert_eq!(report["whole"]["backend"], "provider");
    assert!(
        report["stream_chunks"].as_u64().unwrap_or(0) >= 6,
        "{report}"
    );
    assert_eq!(report["wrong_key"], 401);
    assert_eq!(
        provider.served(),
        2,
        "the wrong key never reached the provider"
    );
}
