//! The dashboard in a real browser: headless Chromium, driven by
//! playwright-core (`tests/browser/dashboard.mjs`), against a running proxy.
//! `./scripts/test.sh` installs both.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use switchyard_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}; run ./scripts/test.sh (or `npm ci` there and install Debian's chromium)",
        browser_dir.display()
    );
    let backends = [mock("agent-1"), mock("agent-2"), mock("agent-3")];
    for b in &backends {
        b.set_load_report(r#"{"cpu":0.35,"mem":0.5}"#);
    }
    let entries: Vec<_> = backends.iter().map(|b| backend_entry(b, "")).collect();
    let config = format!(
        "[pools.agents]\nbackends = [{}]\nmax_fails = 0\n\
         health = {{ path = \"/health\", interval = \"200ms\", body_limit = \"1KiB\", plugin = \"resource-health.wasm\" }}\n\
         breaker = {{ plugin = \"error-rate-breaker.wasm\", config = {{ min_requests = 5, window = \"2s\", cool_down = \"60s\" }} }}\n\
         [[routes]]\nname = \"long\"\npool = \"agents\"\nmatch = {{ path_prefix = \"/long\" }}\nmode = \"job\"\n\
         [[routes]]\nname = \"chat\"\npool = \"agents\"\nrouter = {{ plugin = \"round-robin.wasm\", shadow = {{ plugin = \"least-outstanding.wasm\" }} }}\n",
        entries.join(", ")
    );
    let proxy = TestProxy::start(&config);
    let admin = proxy.proxy().admin_addr.unwrap();
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://{admin}/dashboard"))
        .arg("agents/agent-1,agents/agent-2,agents/agent-3")
        .arg(&screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = node.stdin.take().unwrap();
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .expect("the browser answers in time")
            .unwrap()
            .expect("the browser script ended early")
    };

    assert_eq!(next().await, "ready", "the page lists every backend");
    let load = Load::start(proxy.url("/x"), &[], 2);
    stdin.write_all(b"traffic\n").await.unwrap();
    assert_eq!(next().await, "traffic-seen", "rates rise with traffic");

    // Half of agent-3's answers fail: its breaker trips (the GETs are
    // retried elsewhere, so clients see no failure).
    backends[2].fail_every(2);
    stdin.write_all(b"breaker\n").await.unwrap();
    assert_eq!(next().await, "breaker-seen", "the open breaker shows");
    let report: serde_json::Value = serde_json::from_str(&next().await).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "console errors");
    assert_eq!(report["open"], "agents/agent-3");
    assert_eq!(report["routes"], 2);
    assert_eq!(
        report["jobs"], "0 / 10000",
        "the job route's running jobs and limit"
    );
    let shadow = report["shadow"].as_str().unwrap_or_default();
    assert!(
        shadow.ends_with(" %") && shadow.trim_end_matches(" %").parse::<f64>().is_ok(),
        "the shadow's agreement: {shadow:?}"
    );
    drop(stdin);
    let exited = tokio::time::timeout(Duration::from_secs(10), node.wait()).await;
    assert!(exited.expect("the browser script exits").unwrap().success());
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "{:?}", stats.first_failure);
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
}
