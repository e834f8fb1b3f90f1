//! Test helpers shared by the demo command, the tests and the benches: mock
//! backends on loopback, and the demo config that routes to them.
//!
//! A mock speaks enough of the OpenAI chat API to stand in for a model
//! provider (JSON and SSE streaming completions with `usage`, rate-limit
//! headers), plus a few endpoints tests use: echo, status codes, slow SSE
//! (optionally broken off mid-stream), a raw protocol upgrade that echoes
//! bytes, and `/health` with a settable load report. Failures can be
//! injected at run time: every n-th request a 503, or the next few a 429.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::watch;

/// How a mock backend behaves.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Name reported in every response (`x-mock-backend` and JSON bodies).
    pub name: String,
    /// Delay before the response headers.
    pub latency: Duration,
    /// Gap between streamed chunks.
    pub chunk_interval: Duration,
    /// A token budget per window, reported in the rate-limit headers.
    pub quota: Option<TokenQuota>,
    /// Serve TLS with this config (ALPN h2 and HTTP/1.1); plain otherwise,
    /// where HTTP/1.1 and h2c (prior knowledge) are both understood.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Answer 401 unless the request carries `Authorization: Bearer <key>`,
    /// as a provider does.
    pub require_key: Option<String>,
}

/// A rate-limit window the mock reports like an LLM provider.
#[derive(Debug, Clone, Copy)]
pub struct TokenQuota {
    pub tokens: u64,
    pub window: Duration,
    /// Tokens each request uses.
    pub per_request: u64,
}

impl MockOptions {
    pub fn new(name: &str) -> MockOptions {
        MockOptions {
            name: name.into(),
            latency: Duration::ZERO,
            chunk_interval: Duration::from_millis(100),
            quota: None,
            tls: None,
            require_key: None,
        }
    }
}

/// A running mock backend; stops when dropped.
pub struct MockBackend {
    pub addr: SocketAddr,
    pub name: String,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    faults: Arc<Faults>,
    stop: watch::Sender<bool>,
}

/// Behaviour changed while the mock runs.
#[derive(Default)]
struct Faults {
    /// Every n-th request (not `/health`) answers 503; 0 = never.
    fail_every: AtomicU64,
    /// Requests left to answer 429.
    limited: AtomicU64,
    /// `retry-after` seconds sent with those 429s.
    retry_after: AtomicU64,
    /// Body of `/health`.
    load_report: std::sync::Mutex<String>,
    /// Requests seen, `/health` excluded.
    served: AtomicU64,
}

impl MockBackend {
    /// Starts a mock on an ephemeral loopback port, on a thread of its own.
    pub fn start(options: MockOptions) -> std::io::Result<MockBackend> {
        MockBackend::start_on(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            options,
        )
    }

    /// Starts a mock on `addr`.
    pub fn start_on(addr: SocketAddr, options: MockOptions) -> std::io::Result<MockBackend> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let counter = requests.clone();
        let connections = Arc::new(AtomicU64::new(0));
        let accepted_count = connections.clone();
        let faults = Arc::new(Faults::default());
        let injected = faults.clone();
        let name = options.name.clone();
        let options = Arc::new(options);
        let window = Arc::new(std::sync::Mutex::new((std::time::Instant::now(), 0u64)));
        std::thread::Builder::new()
            .name(format!("mock-{name}"))
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                accepted_count.fetch_add(1, Relaxed);
                                let _ = stream.set_nodelay(true);
                                let (options, counter) = (options.clone(), counter.clone());
                                let (window, faults) = (window.clone(), injected.clone());
                                tokio::spawn(async move {
                                    let tls = options.tls.clone();
                                    let service = service_fn(move |req: Request<Incoming>| {
                                        counter.fetch_add(1, Relaxed);
                                        if let Some(resp) = faults.answer(&req) {
                                            return futures_ready(resp);
                                        }
                                        let quota = options.quota.map(|q| spend(&window, q));
                                        Box::pin(handle(options.clone(), counter.load(Relaxed), quota, req))
                                    });
                                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                                    match tls {
                                        None => {
                                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                                        }
                                        Some(config) => {
                                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else {
                                                return;
                                            };
                                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                                        }
                                    }
                                });
                            }
                            _ = stopped.changed() => break,
                        }
                    }
                });
            })?;
        Ok(MockBackend {
            addr,
            name,
            requests,
            connections,
            faults,
            stop,
        })
    }

    /// Requests this backend has received, health probes included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Connections this backend has accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// Requests this backend has received, health probes excluded.
    pub fn served(&self) -> u64 {
        self.faults.served.load(Relaxed)
    }

    /// From now on every `n`-th request answers 503; 0 stops it.
    pub fn fail_every(&self, n: u64) {
        self.faults.fail_every.store(n, Relaxed);
    }

    /// The next `n` requests answer 429 with `retry-after: seconds`.
    pub fn rate_limit_next(&self, n: u64, seconds: u64) {
        self.faults.retry_after.store(seconds, Relaxed);
        self.faults.limited.store(n, Relaxed);
    }

    /// Sets the body `/health` answers with, such as `{"cpu":0.95}`.
    pub fn set_load_report(&self, json: &str) {
        *self
            .faults
            .load_report
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = json.to_string();
    }
}

type Answer =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<MockBody>, Infallible>> + Send>>;

fn futures_ready(resp: Response<MockBody>) -> Answer {
    Box::pin(std::future::ready(Ok(resp)))
}

impl Faults {
    /// The injected answer to `req`, if one applies.
    fn answer(&self, req: &Request<Incoming>) -> Option<Response<MockBody>> {
        if req.uri().path() == "/health" {
            let report = self
                .load_report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let report = if report.is_empty() {
                "{}".to_string()
            } else {
                report
            };
            let mut r = Response::new(full(report));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Some(r);
        }
        let n = self.served.fetch_add(1, Relaxed) + 1;
        if self
            .limited
            .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(1))
            .is_ok()
        {
            let mut r = Response::new(full("rate limited\n"));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after.load(Relaxed)),
            );
            return Some(r);
        }
        let every = self.fail_every.load(Relaxed);
        if every != 0 && n.is_multiple_of(every) {
            let mut r = Response::new(full("injected failure\n"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Some(r);
        }
        None
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

type MockBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(text: impl Into<Bytes>) -> MockBody {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

/// Breaks the connection after `frames` body frames, as a crashing
/// backend would.
fn cut_short(resp: Response<MockBody>, frames: usize) -> Response<MockBody> {
    struct CutShort {
        inner: MockBody,
        left: usize,
        flushed: bool,
    }
    impl http_body::Body for CutShort {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                if !self.flushed {
                    // Let the connection write what it has, then break it.
                    self.flushed = true;
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                return std::task::Poll::Ready(Some(Err("backend crashed mid-stream".into())));
            }
            let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
            if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
                self.left -= 1;
            }
            polled
        }
    }
    resp.map(|inner| {
        BodyExt::boxed(CutShort {
            inner,
            left: frames,
            flushed: false,
        })
    })
}

/// Spends one request's tokens; returns what remains and the milliseconds
/// until the window resets.
fn spend(window: &std::sync::Mutex<(std::time::Instant, u64)>, q: TokenQuota) -> (u64, u64) {
    let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
    if w.0.elapsed() >= q.window {
        *w = (std::time::Instant::now(), 0);
    }
    w.1 += q.per_request;
    let left = q.window.saturating_sub(w.0.elapsed()).as_millis() as u64;
    (q.tokens.saturating_sub(w.1), left.max(1))
}

async fn handle(
    options: Arc<MockOptions>,
    count: u64,
    quota: Option<(u64, u64)>,
    mut req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    if !options.latency.is_zero() {
        tokio::time::sleep(options.latency).await;
    }
    // A delay of the request's choosing, on top.
    if let Some(ms) = req
        .headers()
        .get("x-mock-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(key) = &options.require_key {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if presented.and_then(|v| v.strip_prefix("Bearer ")) != Some(key.as_str()) {
            let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}});
            let mut r = Response::new(full(format!("{body}\n")));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
    }
    if req.uri().path() == "/ok" {
        // The cheapest answer, for load benchmarks.
        return Ok(Response::new(full(Bytes::from_static(b"ok\n"))));
    }
    let path = req.uri().path().to_string();
    let mut resp = if path == "/trailers" {
        // A gRPC-style answer: the status comes in trailers.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("served by mock"));
        let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        for f in frames {
            let _ = tx.try_send(f);
        }
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_stream(rx))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        r
    } else if path == "/upgrade" {
        upgrade_echo(&mut req)
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = Response::new(full(format!("{} says {}\n", options.name, status.as_u16())));
        *r.status_mut() = status;
        r
    } else if path == "/sse" {
        let n = query_number(&req, "n").unwrap_or(5);
        let mut r = sse(
            &options,
            (0..n)
                .map(|i| format!("data: {{\"event\":{i}}}\n\n"))
                .collect(),
        );
        if let Some(cut) = query_number(&req, "die_after") {
            r = cut_short(r, cut);
        }
        r
    } else if path.ends_with("/chat/completions") {
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, 1 << 20)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        chat(&options, &parts.headers, &request)
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        let (method, query) = (
            req.method().to_string(),
            req.uri().query().map(String::from),
        );
        let version = format!("{:?}", req.version());
        let authority = req.uri().authority().map(|a| a.to_string());
        let received = Limited::new(req.into_body(), 64 << 20)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = json!({
            "backend": options.name, "method": method, "path": path, "version": version,
            "authority": authority,
            "query": query, "headers": headers, "body_len": received.len(),
            "body_sha256": hex_sha256(&received),
        });
        let mut r = Response::new(full(format!("{body}\n")));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&options.name) {
        h.insert("x-mock-backend", v);
    }
    h.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(10_000u64.saturating_sub(count)),
    );
    h.insert("x-ratelimit-reset-requests", HeaderValue::from_static("1s"));
    match quota {
        Some((remaining, reset_ms)) => {
            h.insert("x-ratelimit-remaining-tokens", HeaderValue::from(remaining));
            if let Ok(v) = HeaderValue::from_str(&format!("{reset_ms}ms")) {
                h.insert("x-ratelimit-reset-tokens", v);
            }
        }
        None => {
            let remaining = 1_000_000u64.saturating_sub(count * 30);
            h.insert("x-ratelimit-remaining-tokens", HeaderValue::from(remaining));
        }
    }
    Ok(resp)
}

fn query_number(req: &Request<Incoming>, key: &str) -> Option<usize> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)?
        .1
        .parse()
        .ok()
}

/// Hex SHA-256 of `bytes`, so the echo can prove a body arrived unchanged.
fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OpenAI-style chat completion of the requested `model`, whole or
/// streamed with `usage` in the final chunk.
fn chat(
    options: &MockOptions,
    headers: &http::HeaderMap,
    request: &serde_json::Value,
) -> Response<MockBody> {
    let model = match request["model"].as_str() {
        Some(m) => m.to_string(),
        None => format!("mock-{}", options.name),
    };
    let stream = request["stream"].as_bool().unwrap_or(false);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("chatcmpl-{}-{created}", options.name);
    let priority = headers
        .get("x-priority")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("normal");
    let words = [
        "Routed",
        " by",
        " Switchyard",
        " to ",
        &options.name,
        &format!(" (priority {priority})"),
    ];
    if stream {
        let mut events: Vec<String> = words
            .iter()
            .map(|w| {
                let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
                format!("data: {chunk}\n\n")
            })
            .collect();
        let last = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": words.len(), "total_tokens": 12 + words.len()}});
        events.push(format!("data: {last}\n\n"));
        events.push("data: [DONE]\n\n".into());
        return sse(options, events);
    }
    let body = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": words.len(), "total_tokens": 12 + words.len()},
    });
    let mut r = Response::new(full(format!("{body}\n")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A server-sent-event stream, one event per `chunk_interval`.
fn sse(options: &MockOptions, events: Vec<String>) -> Response<MockBody> {
    let interval = options.chunk_interval;
    type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_stream(rx);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Adapts a channel receiver into the stream `StreamBody` wants.
fn futures_stream<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    struct Rx<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Rx<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    Rx(rx)
}

/// Answers an upgrade request with 101 and echoes every byte back.
fn upgrade_echo(req: &mut Request<Incoming>) -> Response<MockBody> {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("echo"));
    r
}

/// Backends of the demo: two fast and two cheap model endpoints, two tools.
pub fn demo_backends() -> std::io::Result<Vec<MockBackend>> {
    [
        ("fast-1", 20),
        ("fast-2", 20),
        ("cheap-1", 60),
        ("cheap-2", 60),
        ("tool-1", 5),
        ("tool-2", 5),
    ]
    .into_iter()
    .map(|(name, ms)| {
        let mut o = MockOptions::new(name);
        o.latency = Duration::from_millis(ms);
        o.chunk_interval = Duration::from_millis(150);
        MockBackend::start(o)
    })
    .collect()
}

/// The demo config: per-graph routes over the mock backends.
pub fn demo_config(
    listen: &str,
    admin: &str,
    plugin_dir: &str,
    backends: &[MockBackend],
) -> String {
    let addr = |name: &str| {
        backends
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.addr.to_string())
            .unwrap_or_default()
    };
    format!(
        r#"# Generated by `switchyard demo`.
[server]
listen = "{listen}"
debug_header = true    # answer x-switchyard-debug: fine for a demo on loopback

[admin]
listen = "{admin}"

[plugins]
dir = "{plugin_dir}"

[pools.models]
backends = [
  {{ name = "fast-1",  address = "{f1}", labels = {{ tier = "fast", cost = 10, models = "gpt-4o-mini", input_price = "0.15", output_price = "0.60" }} }},
  {{ name = "fast-2",  address = "{f2}", labels = {{ tier = "fast", cost = 10, models = "gpt-4o-mini", input_price = "0.15", output_price = "0.60" }} }},
  {{ name = "cheap-1", address = "{c1}", labels = {{ tier = "cheap", cost = 1, models = "llama-3.1-8b", input_price = "0.05", output_price = "0.08" }} }},
  {{ name = "cheap-2", address = "{c2}", labels = {{ tier = "cheap", cost = 1, models = "llama-3.1-8b", input_price = "0.05", output_price = "0.08" }} }},
]
breaker = [
  # Trip a model backend above 5 % failures; a 429 cools it for its retry-after.
  {{ plugin = "error-rate-breaker.wasm", config = {{ threshold = 0.05, cool_down = "5s" }} }},
  # Each model backend may use 20000 tokens a minute (in this process; a
  # [shared] redis:// store makes it one budget for all replicas).
  {{ plugin = "global-token-budget.wasm", config = {{ tokens = 20000, window = "60s" }} }},
]

[pools.tools]
backends = [
  {{ name = "tool-1", address = "{t1}" }},
  {{ name = "tool-2", address = "{t2}" }},
]
# Tools report their load on /health; busy ones are degraded or taken out.
health = {{ path = "/health", interval = "1s", body_limit = "4KiB", plugin = "resource-health.wasm" }}

# The research graph: priority decides the tier.
[[routes]]
name = "research"
match = {{ path_prefix = "/graphs/research" }}
strip_prefix = true
pool = "models"
router = {{ plugin = "priority-router.wasm", config = {{ header = "x-priority", high = ["high", "urgent"] }} }}

# The tools graph: plain round robin.
[[routes]]
name = "tools"
match = {{ path_prefix = "/graphs/tools" }}
strip_prefix = true
pool = "tools"
router = {{ plugin = "round-robin.wasm" }}
limits = {{ max_in_flight = 64, queue = 128, queue_timeout = "5s" }}
fallback = {{ status = 503, body = "tools are down for maintenance\n", retry_after = "30s" }}

# OpenAI-style clients: the body's `model` picks the backends.
[[routes]]
name = "chat"
match = {{ path_prefix = "/v1/" }}
pool = "models"
router = {{ plugin = "model-router.wasm", config = {{ aliases = {{ fast = "gpt-4o-mini", cheap = "llama-3.1-8b" }} }} }}
retries = {{ non_idempotent = true }}
fallback = {{ status = 429, body = '{{"error":{{"message":"token budget spent for this minute","type":"rate_limit_error"}}}}', content_type = "application/json", retry_after = "10s" }}

# Everything else: also by priority, the x-graph header selecting nothing special.
[[routes]]
name = "default"
pool = "models"
router = {{ plugin = "priority-router.wasm" }}
"#,
        f1 = addr("fast-1"),
        f2 = addr("fast-2"),
        c1 = addr("cheap-1"),
        c2 = addr("cheap-2"),
        t1 = addr("tool-1"),
        t2 = addr("tool-2"),
    )
}
