//! Helpers for the end-to-end tests: compiled plugins, a proxy started from
//! config text, mock backends, and a plain hyper client.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use switchyard::Switchyard;
use switchyard::config::Config;
pub use switchyard_testkit::{MockBackend, MockOptions};

pub mod pki;

/// Directory of the compiled plugins (`scripts/build-plugins.sh`), or
/// `SWITCHYARD_PLUGIN_DIR`.
pub fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_PLUGIN_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"),
        PathBuf::from,
    );
    assert!(
        dir.join("priority-router.wasm").exists(),
        "compiled plugins not found in {}; run ./scripts/build-plugins.sh (or ./scripts/test.sh)",
        dir.display()
    );
    dir
}

/// A proxy started from config text, in a temporary directory of its own
/// whose `plugins/` holds copies of the compiled plugins.
pub struct TestProxy {
    pub proxy: Option<Switchyard>,
    /// Holds the config file (and, by default, the plugin directory).
    pub dir: tempfile::TempDir,
    plugins: PathBuf,
    cache: PathBuf,
    /// Extra lines of the `[admin]` table, such as a token.
    admin_extra: String,
    /// Extra lines of the `[server]` table, such as `tls`.
    server_extra: String,
}

impl TestProxy {
    /// Starts a proxy on an ephemeral port with `config` (a TOML body
    /// without `[server]` and `[plugins]`, which are added).
    pub fn start(config: &str) -> TestProxy {
        TestProxy::try_start(config).unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    /// Like [`TestProxy::start`], with `admin` added to the `[admin]` table.
    pub fn start_with_admin(config: &str, admin: &str) -> TestProxy {
        TestProxy::try_start_with(config, admin)
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    /// Like [`TestProxy::start`], returning the start-up error.
    pub fn try_start(config: &str) -> Result<TestProxy, String> {
        TestProxy::try_start_with(config, "")
    }

    fn try_start_with(config: &str, admin: &str) -> Result<TestProxy, String> {
        TestProxy::try_start_full(config, admin, "", None)
    }

    /// Like [`TestProxy::start`], with `server` added to the `[server]`
    /// table and, if given, `resolver` behind pools' `discover` names.
    pub fn start_full(
        config: &str,
        server: &str,
        resolver: Option<Arc<dyn switchyard::discovery::Resolve>>,
    ) -> TestProxy {
        TestProxy::try_start_full(config, "", server, resolver)
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    /// Like [`TestProxy::start_full`] without a resolver, returning the
    /// start-up error.
    pub fn try_start_server(config: &str, server: &str) -> Result<TestProxy, String> {
        TestProxy::try_start_full(config, "", server, None)
    }

    fn try_start_full(
        config: &str,
        admin: &str,
        server: &str,
        resolver: Option<Arc<dyn switchyard::discovery::Resolve>>,
    ) -> Result<TestProxy, String> {
        init_logging();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).map_err(|e| e.to_string())?;
        for entry in std::fs::read_dir(plugin_dir()).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                let target = plugins.join(path.file_name().unwrap_or_default());
                std::fs::copy(&path, target).map_err(|e| e.to_string())?;
            }
        }
        TestProxy::launch(
            dir,
            plugins,
            shared_cache(),
            config,
            admin,
            server,
            resolver,
        )
    }

    /// Starts a proxy whose plugin directory (and compile cache, in its
    /// `.cache`) is `plugins`, which the caller fills.
    pub fn start_in(plugins: &Path, config: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        TestProxy::launch(
            dir,
            plugins.to_path_buf(),
            plugins.join(".cache"),
            config,
            "",
            "",
            None,
        )
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    fn launch(
        dir: tempfile::TempDir,
        plugins: PathBuf,
        cache: PathBuf,
        config: &str,
        admin: &str,
        server: &str,
        resolver: Option<Arc<dyn switchyard::discovery::Resolve>>,
    ) -> Result<TestProxy, String> {
        let mut proxy = TestProxy {
            proxy: None,
            dir,
            plugins,
            cache,
            admin_extra: admin.to_string(),
            server_extra: server.to_string(),
        };
        let path = proxy.config_path();
        std::fs::write(&path, proxy.full_config(config)).map_err(|e| e.to_string())?;
        let config = Config::load(&path).map_err(|e| e.to_string())?;
        let resolver = resolver.unwrap_or_else(|| Arc::new(switchyard::discovery::SystemResolver));
        proxy.proxy = Some(Switchyard::start_with(&config, resolver).map_err(|e| e.to_string())?);
        Ok(proxy)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    fn full_config(&self, body: &str) -> String {
        // Two workers unless the test's `[server]` lines choose.
        let workers = if self.server_extra.contains("workers") {
            ""
        } else {
            "workers = 2\n"
        };
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{workers}drain_timeout = \"2s\"\n{}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n\n\
             [plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\n{body}",
            self.server_extra,
            self.admin_extra,
            self.plugins.display(),
            self.cache.display()
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy().addr()
    }

    pub fn proxy(&self) -> &Switchyard {
        self.proxy
            .as_ref()
            .unwrap_or_else(|| unreachable!("proxy is set until drop"))
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// Path of a file in the proxy's plugin directory.
    pub fn plugin_path(&self, name: &str) -> PathBuf {
        self.plugins.join(name)
    }

    /// Rewrites the config file with a new body (the same header as
    /// [`TestProxy::start`] adds); the watcher reloads it.
    pub fn write_config(&self, config: &str) {
        let text = self.full_config(config);
        std::fs::write(self.config_path(), text).unwrap_or_else(|e| panic!("write config: {e}"));
    }

    /// The admin `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        let admin = self
            .proxy()
            .admin_addr
            .unwrap_or_else(|| unreachable!("tests enable admin"));
        let resp = get(&format!("http://{admin}/status"), &[]).await;
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("status is not JSON: {e}"))
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.shutdown();
        }
    }
}

/// Sends the proxy's log to the test output (shown for failing tests),
/// filtered by `RUST_LOG`, default `warn`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Bytes of a compiled plugin from the build directory.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Steady load: `workers` loops sending requests until stopped, counting
/// answers by backend and every failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadStats>>,
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: u64,
    /// Requests that failed or answered other than 200, with a sample.
    pub failed: u64,
    pub first_failure: Option<String>,
}

impl Load {
    /// Starts `workers` request loops against `url` with `headers`.
    pub fn start(url: String, headers: &[(&str, &str)], workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, url, headers) = (stop.clone(), url.clone(), headers.clone());
                tokio::spawn(async move {
                    let client = client();
                    let mut stats = LoadStats::default();
                    while !stop.load(Ordering::Relaxed) {
                        let mut req = Request::get(url.as_str());
                        for (k, v) in &headers {
                            req = req.header(k.as_str(), v.as_str());
                        }
                        let Ok(req) = req.body(Full::new(Bytes::new())) else {
                            break;
                        };
                        let result = match client.request(req).await {
                            Ok(resp) if resp.status() == StatusCode::OK => resp
                                .into_body()
                                .collect()
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string()),
                            Ok(resp) => Err(format!("status {}", resp.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match result {
                            Ok(()) => stats.ok += 1,
                            Err(e) => {
                                stats.failed += 1;
                                stats.first_failure.get_or_insert(e);
                            }
                        }
                    }
                    stats
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the loops and sums what they saw.
    pub async fn stop(mut self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadStats::default();
        for task in std::mem::take(&mut self.tasks) {
            let s = task.await.unwrap_or_else(|e| panic!("load task: {e}"));
            total.ok += s.ok;
            total.failed += s.failed;
            if total.first_failure.is_none() {
                total.first_failure = s.first_failure;
            }
        }
        total
    }
}

impl Drop for Load {
    /// A test that fails midway still stops its load, so the proxy can drain.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Compiled plugins are cached across tests of one run.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache")
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The backend that served it, from `x-switchyard-backend`.
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-switchyard-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON (the mock echo endpoint).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url` with `headers`.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, Bytes::new()).await
}

/// Sends a request and reads the whole response.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body))
        .unwrap_or_else(|e| panic!("bad request: {e}"));
    let resp = client()
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: body failed: {e}"))
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Starts a mock backend named `name` with no added latency.
pub fn mock(name: &str) -> MockBackend {
    mock_with(MockOptions::new(name))
}

/// Starts a mock backend with `options`.
pub fn mock_with(options: MockOptions) -> MockBackend {
    MockBackend::start(options).unwrap_or_else(|e| panic!("mock backend did not start: {e}"))
}

/// A TOML inline table entry for a backend: `{ name, address, labels }`.
pub fn backend_entry(b: &MockBackend, labels: &str) -> String {
    format!(
        "{{ name = \"{}\", address = \"{}\", labels = {{ {labels} }} }}",
        b.name, b.addr
    )
}

/// An address nothing listens on.
pub fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
}

/// Sum of the samples of `name` whose labels include every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// The proxy's Prometheus page, from its admin listener.
pub async fn scrape(proxy: &TestProxy) -> String {
    let admin = proxy.proxy().admin_addr.expect("tests enable admin");
    get(&format!("http://{admin}/metrics"), &[]).await.text()
}

/// Sends raw `bytes` on one connection and returns everything the proxy
/// answered until it closed the connection or went quiet for 1.5 s.
pub async fn raw_exchange(proxy: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_millis(1500), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}
