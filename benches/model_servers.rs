//! Balancing over model servers that behave like one: each serves a
//! bounded batch at once and queues the rest, and keeps a KV cache of
//! recent prompt blocks, so a request whose prompt begins like a recent one
//! prefills (and answers its first byte) much sooner. The workload is
//! agent conversations that share a few system prompts and grow turn by
//! turn, as multi-agent graphs send them.
//!
//! The same workload runs through Switchyard with `round-robin`,
//! `least-outstanding`, `prefix-affinity`, and least-outstanding over a pool
//! health-checked by `model-server-health` (reading each server's vLLM-style
//! `/metrics`), and through nginx `hash $http_x_session consistent` when
//! nginx is installed. Prints time to first byte per policy and writes the
//! table to `benches/results/model-servers.md`.
//!
//! A second scenario makes one server stall at random (a quarter of its
//! requests wait `STALL` before prefill, as a preempted or paused server
//! does) and compares prefix-affinity with and without hedged first
//! tokens: p99 time to first byte, and the extra requests the servers got.
//!
//!   cargo bench -p switchyard-benches --bench model_servers

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[path = "chart.rs"]
mod chart;
#[path = "nginx.rs"]
mod nginx;

/// Model servers in the pool.
const SERVERS: usize = 4;
/// Requests a server runs at once (its batch); the rest wait.
const BATCH: usize = 4;
/// Prompt bytes per KV-cache block.
const BLOCK: usize = 64;
/// What the clients send and how much a server's KV cache holds.
#[derive(Clone, Copy)]
struct Workload {
    /// Each conversation's first turn carries a document of its own.
    documents: bool,
    /// Blocks a server's KV cache holds: enough for the pool's caches
    /// together to hold the whole working set, not for one server's.
    cache_blocks: usize,
}

/// Conversations that share system prompts and grow turn by turn.
const SHARED: Workload = Workload {
    documents: false,
    cache_blocks: 600,
};
/// The same, each opening with a private document (a tool result or a
/// retrieved page of about 3 KB): most of each prompt is its own.
const DOCUMENTS: Workload = Workload {
    documents: true,
    cache_blocks: 1200,
};
/// Prefill time of an uncached and of a cached block.
const PREFILL_MS: (f64, f64) = (4.0, 0.1);
/// Decode time after the first byte.
const DECODE: Duration = Duration::from_millis(20);
/// Conversations, how many share each system prompt, and their turns.
const CONVERSATIONS: usize = 48;
const SYSTEM_PROMPTS: usize = 4;
const TURNS: usize = 6;
/// Clients sending at once, each working through its conversations.
const CLIENTS: usize = 12;
/// How long the stalling server holds a stalled request, and how often.
const STALL: Duration = Duration::from_millis(1500);
const STALL_SHARE: f64 = 0.25;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// One mock model server.
struct Server {
    addr: SocketAddr,
    /// Requests received, including ones the proxy cancelled.
    arrived: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
    cached_blocks: Arc<AtomicU64>,
    prompt_blocks: Arc<AtomicU64>,
}

/// What a server's KV cache holds: cumulative block hashes, least
/// recently used first (vLLM evicts the least recently used free blocks).
struct Cache {
    capacity: usize,
    /// Block hash and the tick it was last used at, in use order; entries
    /// whose tick is older than `held`'s were used again later.
    order: VecDeque<(u64, u64)>,
    held: std::collections::HashMap<u64, u64>,
    tick: u64,
}

impl Cache {
    /// How many of `blocks` (a prompt's, in order) are cached from the start.
    fn hits(&self, blocks: &[u64]) -> usize {
        blocks
            .iter()
            .take_while(|b| self.held.contains_key(b))
            .count()
    }

    /// Marks `blocks` used now, adding those not held and evicting the
    /// least recently used beyond the capacity.
    fn insert(&mut self, blocks: &[u64]) {
        for &b in blocks {
            self.tick += 1;
            self.held.insert(b, self.tick);
            self.order.push_back((b, self.tick));
        }
        while self.held.len() > self.capacity {
            let Some((old, tick)) = self.order.pop_front() else {
                break;
            };
            if self.held.get(&old) == Some(&tick) {
                self.held.remove(&old);
            }
        }
        // Stale entries (blocks used again later) are dropped as they
        // reach the front; keep the queue from growing without bound.
        if self.order.len() > 8 * self.capacity {
            let held = &self.held;
            self.order.retain(|(b, t)| held.get(b) == Some(t));
        }
    }

    fn len(&self) -> usize {
        self.held.len()
    }
}

/// Cumulative hashes of a prompt's whole blocks (the server's own view of
/// its prefix cache; it knows nothing of the proxy's).
fn blocks(prompt: &[u8]) -> Vec<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    prompt
        .chunks(BLOCK)
        .filter(|c| c.len() == BLOCK)
        .map(|c| {
            for &b in c {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            h
        })
        .collect()
}

/// Starts a mock model server; a `stalling` one holds a share of its
/// requests for [`STALL`] before prefill, chosen by a seeded generator.
async fn start_server(stalling: bool, cache_blocks: usize) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let batch = Arc::new(Semaphore::new(BATCH));
    let cache = Arc::new(Mutex::new(Cache {
        capacity: cache_blocks,
        order: VecDeque::new(),
        held: std::collections::HashMap::new(),
        tick: 0,
    }));
    let waiting = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(AtomicU64::new(0));
    let dice = Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15));
    let (cached_blocks, prompt_blocks) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let server = Server {
        addr,
        arrived: arrived.clone(),
        served: served.clone(),
        cached_blocks: cached_blocks.clone(),
        prompt_blocks: prompt_blocks.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (batch, cache, waiting, served) = (
                batch.clone(),
                cache.clone(),
                waiting.clone(),
                served.clone(),
            );
            let (cached_blocks, prompt_blocks) = (cached_blocks.clone(), prompt_blocks.clone());
            let (arrived, dice) = (arrived.clone(), dice.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (batch, cache, waiting, served) = (
                        batch.clone(),
                        cache.clone(),
                        waiting.clone(),
                        served.clone(),
                    );
                    let (cached_blocks, prompt_blocks) =
                        (cached_blocks.clone(), prompt_blocks.clone());
                    let (arrived, dice) = (arrived.clone(), dice.clone());
                    async move {
                        if req.uri().path() == "/metrics" {
                            let running = BATCH - batch.available_permits();
                            let fill = cache.lock().map_or(0, |c| c.len());
                            let page = format!(
                                "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} {running}\n\
                                 # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"m\"}} {}\n\
                                 # TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{{model_name=\"m\"}} {}\n",
                                waiting.load(Relaxed),
                                fill as f64 / cache_blocks as f64 * 0.5
                            );
                            return Ok::<_, std::convert::Infallible>(http::Response::new(
                                Full::new(Bytes::from(page)),
                            ));
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let prompt = blocks(&body);
                        arrived.fetch_add(1, Relaxed);
                        if stalling && roll(&dice) < STALL_SHARE {
                            tokio::time::sleep(STALL).await;
                        }
                        waiting.fetch_add(1, Relaxed);
                        let slot = batch.clone().acquire_owned().await;
                        waiting.fetch_sub(1, Relaxed);
                        let hits = cache.lock().map_or(0, |c| c.hits(&prompt));
                        let prefill = (prompt.len() - hits) as f64 * PREFILL_MS.0
                            + hits as f64 * PREFILL_MS.1;
                        tokio::time::sleep(Duration::from_secs_f64(prefill / 1000.0)).await;
                        if let Ok(mut c) = cache.lock() {
                            c.insert(&prompt);
                        }
                        cached_blocks.fetch_add(hits as u64, Relaxed);
                        prompt_blocks.fetch_add(prompt.len() as u64, Relaxed);
                        served.fetch_add(1, Relaxed);
                        // The first byte is out; decoding holds the slot.
                        tokio::spawn(async move {
                            tokio::time::sleep(DECODE).await;
                            drop(slot);
                        });
                        Ok(http::Response::new(Full::new(Bytes::from_static(
                            b"{\"choices\":[]}",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    server
}

/// A uniform number in [0, 1) from a shared xorshift generator.
fn roll(state: &AtomicU64) -> f64 {
    let mut x = state.load(Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.store(x, Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The body of turn `turn` of conversation `c`: its system prompt (one of
/// a few, shared), its document if the workload has them, then its turns
/// so far.
fn request_body(c: usize, turn: usize, workload: Workload) -> String {
    let system = format!(
        "You are agent kind {} of the research graph. {}",
        c % SYSTEM_PROMPTS,
        "Follow the plan, cite sources, keep state. ".repeat(70)
    );
    let mut messages = vec![serde_json(&[("role", "system"), ("content", &system)])];
    if workload.documents {
        let document = format!(
            "document of conversation {c}: {}",
            format!("section {c} of the source, quoted in full. ").repeat(70)
        );
        messages.push(serde_json(&[("role", "tool"), ("content", &document)]));
    }
    for t in 0..=turn {
        let user = format!(
            "conversation {c} turn {t}: {}",
            "the findings so far ".repeat(20)
        );
        messages.push(serde_json(&[("role", "user"), ("content", &user)]));
    }
    format!("{{\"model\":\"m\",\"messages\":[{}]}}", messages.join(","))
}

fn serde_json(pairs: &[(&str, &str)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    format!("{{{}}}", fields.join(","))
}

struct Outcome {
    name: String,
    ttfb: Vec<f64>,
    per_server: Vec<u64>,
    cache_hit_share: f64,
    /// Requests the servers received per client request, less one.
    extra: f64,
}

async fn drive(name: &str, url: &str, servers: &[Server], workload: Workload) -> Outcome {
    let arrived_before: u64 = servers.iter().map(|s| s.arrived.load(Relaxed)).sum();
    let before: Vec<(u64, u64, u64)> = servers
        .iter()
        .map(|s| {
            (
                s.served.load(Relaxed),
                s.cached_blocks.load(Relaxed),
                s.prompt_blocks.load(Relaxed),
            )
        })
        .collect();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ttfb = Vec::new();
            // Each client works its conversations turn by turn, interleaved.
            let mine: Vec<usize> = (k..CONVERSATIONS).step_by(CLIENTS).collect();
            for turn in 0..TURNS {
                for &c in &mine {
                    let req = http::Request::post(format!("{url}/v1/chat/completions"))
                        .header("content-type", "application/json")
                        .header("x-session", format!("conversation-{c}"))
                        .body(Full::new(Bytes::from(request_body(c, turn, workload))))
                        .expect("request");
                    let sent = Instant::now();
                    let Ok(resp) = client.request(req).await else {
                        continue;
                    };
                    ttfb.push(sent.elapsed().as_secs_f64() * 1000.0);
                    let _ = resp.into_body().collect().await;
                }
            }
            ttfb
        }));
    }
    let mut ttfb = Vec::new();
    for t in tasks {
        ttfb.extend(t.await.expect("client task"));
    }
    ttfb.sort_by(f64::total_cmp);
    let (mut hit, mut total) = (0, 0);
    let per_server = servers
        .iter()
        .zip(before)
        .map(|(s, (n, h, p))| {
            hit += s.cached_blocks.load(Relaxed) - h;
            total += s.prompt_blocks.load(Relaxed) - p;
            s.served.load(Relaxed) - n
        })
        .collect();
    let arrived: u64 =
        servers.iter().map(|s| s.arrived.load(Relaxed)).sum::<u64>() - arrived_before;
    Outcome {
        name: name.into(),
        extra: arrived as f64 / ttfb.len().max(1) as f64 - 1.0,
        ttfb,
        per_server,
        cache_hit_share: hit as f64 / total.max(1) as f64,
    }
}

/// The TTFB and cache table of `outcomes`, and prefix-affinity's ratios to
/// least-outstanding.
fn cache_table(t: &mut String, outcomes: &[Outcome]) {
    let _ = writeln!(
        t,
        "| policy | TTFB mean | p50 | p99 | prompt blocks cached | requests per server |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---|");
    for o in outcomes {
        let spread: Vec<String> = o.per_server.iter().map(u64::to_string).collect();
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} % | {} |",
            o.name,
            mean(&o.ttfb),
            quantile(&o.ttfb, 0.5),
            quantile(&o.ttfb, 0.99),
            o.cache_hit_share * 100.0,
            spread.join(" / ")
        );
    }
    let find = |name: &str| outcomes.iter().find(|o| o.name == name);
    if let (Some(a), Some(b)) = (find("prefix-affinity"), find("least-outstanding")) {
        let _ = writeln!(
            t,
            "\nprefix-affinity / least-outstanding: mean TTFB {:.2} (target at most 0.5), p99 {:.2} (target at most 1).",
            mean(&a.ttfb) / mean(&b.ttfb),
            quantile(&a.ttfb, 0.99) / quantile(&b.ttfb, 0.99)
        );
    }
}

fn mean(samples: &[f64]) -> f64 {
    samples.iter().sum::<f64>() / samples.len().max(1) as f64
}

/// A chart panel of the outcomes' times to first byte.
fn ttfb_panel<'a>(title: &str, outcomes: &'a [Outcome]) -> chart::Panel<'a> {
    chart::Panel {
        title: title.to_string(),
        lines: outcomes
            .iter()
            .map(|o| (o.name.as_str(), o.ttfb.as_slice()))
            .collect(),
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = root.join("target/plugins");
    assert!(
        plugins.join("prefix-affinity.wasm").exists(),
        "build the plugins first: ./scripts/build-plugins.sh"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let policies: [(&str, &str, &str); 4] = [
        (
            "round-robin",
            "p",
            "router = { plugin = \"round-robin.wasm\" }",
        ),
        (
            "least-outstanding",
            "p",
            "router = { plugin = \"least-outstanding.wasm\" }",
        ),
        (
            "prefix-affinity",
            "p",
            "router = { plugin = \"prefix-affinity.wasm\", body_peek = \"64KiB\", config = { block = 64, prefix_bytes = 16384 } }",
        ),
        (
            "model-server-health + least-outstanding",
            "health",
            "router = { plugin = \"least-outstanding.wasm\" }",
        ),
    ];
    let outcomes = compare(&policies, SHARED, &plugins, dir.path()).await;
    let documents = compare(&policies[1..3], DOCUMENTS, &plugins, dir.path()).await;
    // One server stalls at random: prefix-affinity, unhedged and hedged.
    // (It keeps each server's share of the traffic steady, where
    // least-outstanding's share for the stalling server swings from run to
    // run with how its stalls fall, and with it the tail.)
    let pa = "plugin = \"prefix-affinity.wasm\", body_peek = \"64KiB\"";
    let stalled: [(&str, String); 3] = [
        (
            "prefix-affinity",
            format!("router = {{ {pa}, config = {{ block = 64 }} }}"),
        ),
        (
            "prefix-affinity, hedge_ttfb_factor = 3",
            format!("router = {{ {pa}, config = {{ block = 64, hedge_ttfb_factor = 3.0 }} }}"),
        ),
        (
            "prefix-affinity, hedge_after = 250ms",
            format!("router = {{ {pa}, config = {{ block = 64, hedge_after = \"250ms\" }} }}"),
        ),
    ];
    let mut stalls = Vec::new();
    for (name, router) in &stalled {
        let servers = start_servers(true, SHARED).await;
        stalls.push(
            through_switchyard(name, "p", router, &servers, &plugins, dir.path(), SHARED).await,
        );
    }
    report(&root, &outcomes, &documents, &stalls);
}

/// Runs `workload` through each of `policies` (name, pool, router line)
/// and through nginx's session hash, each on fresh servers (cold caches).
async fn compare(
    policies: &[(&str, &str, &str)],
    workload: Workload,
    plugins: &Path,
    dir: &Path,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &(name, pool, router) in policies {
        let servers = start_servers(false, workload).await;
        outcomes
            .push(through_switchyard(name, pool, router, &servers, plugins, dir, workload).await);
    }
    let servers = start_servers(false, workload).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    match nginx::Nginx::start(&addrs, dir, "hash $http_x_session consistent;") {
        Some(n) => {
            eprintln!("running nginx hash consistent");
            let url = format!("http://{}", n.addr);
            outcomes.push(
                drive(
                    "nginx hash $http_x_session consistent",
                    &url,
                    &servers,
                    workload,
                )
                .await,
            );
        }
        None => eprintln!("nginx not installed; skipping it"),
    }
    outcomes
}

/// [`SERVERS`] fresh servers, the first one stalling if `stalling`.
async fn start_servers(stalling: bool, workload: Workload) -> Vec<Server> {
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        servers.push(start_server(stalling && i == 0, workload.cache_blocks).await);
    }
    servers
}

/// Runs the workload through a Switchyard whose route uses `router` over
/// `pool` (`p`, or `health`: the same servers health-checked by
/// `model-server-health`).
async fn through_switchyard(
    name: &str,
    pool: &str,
    router: &str,
    servers: &[Server],
    plugins: &Path,
    dir: &Path,
    workload: Workload,
) -> Outcome {
    let entries: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{{ name = \"gpu-{i}\", address = \"{}\" }}", s.addr))
        .collect();
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\nwatch = false\n\
         [pools.p]\nbackends = [{b}]\n[pools.health]\nbackends = [{b}]\n\
         health = {{ path = \"/metrics\", interval = \"100ms\", body_limit = \"64KiB\", plugin = \"model-server-health.wasm\", config = {{ max_waiting = 4, fall = 1 }} }}\n",
        plugins.display(),
        dir.join("cache").display(),
        b = entries.join(", ")
    );
    let _ = write!(
        config,
        "[[routes]]\nname = \"r\"\npool = \"{pool}\"\n{router}\ntimeouts = {{ first_byte = \"60s\" }}\n"
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config).expect("write config");
    let proxy =
        switchyard::Switchyard::start(&switchyard::config::Config::load(&path).expect("config"))
            .expect("proxy starts");
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("running {name}");
    let outcome = drive(name, &format!("http://{}", proxy.addr()), servers, workload).await;
    proxy.shutdown();
    outcome
}

fn report(root: &Path, outcomes: &[Outcome], documents: &[Outcome], stalls: &[Outcome]) {
    let mut t = String::new();
    let _ = writeln!(t, "# Balancing over model servers\n");
    let _ = writeln!(
        t,
        "`cargo bench -p switchyard-benches --bench model_servers`: {SERVERS} mock model servers (batch {BATCH}, KV cache of \
         {} blocks of {BLOCK} bytes, prefill {} ms per uncached block and {} ms per cached one, {} ms decode); \
         {CONVERSATIONS} conversations on {SYSTEM_PROMPTS} shared system prompts, {TURNS} turns each, {CLIENTS} clients at once. \
         Time to first byte in ms; cold caches for each policy.\n",
        SHARED.cache_blocks,
        PREFILL_MS.0,
        PREFILL_MS.1,
        DECODE.as_millis()
    );
    cache_table(&mut t, outcomes);
    let _ = writeln!(
        t,
        "\n## Conversations with a private document\n\nThe same, each conversation's first turn carrying a document of its own \
         (about 3 KB); KV caches of {} blocks.\n",
        DOCUMENTS.cache_blocks
    );
    cache_table(&mut t, documents);
    let _ = writeln!(
        t,
        "\n## One server stalling\n\ngpu-0 holds {:.0} % of its requests for {} ms before prefill; the same workload. \
         Extra requests: what the servers received beyond one per client request (hedges, retries).\n",
        STALL_SHARE * 100.0,
        STALL.as_millis()
    );
    let _ = writeln!(
        t,
        "| policy | TTFB mean | p50 | p99 | extra requests | requests per server |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---|");
    for o in stalls {
        let mean = o.ttfb.iter().sum::<f64>() / o.ttfb.len().max(1) as f64;
        let spread: Vec<String> = o.per_server.iter().map(u64::to_string).collect();
        let _ = writeln!(
            t,
            "| {} | {mean:.1} | {:.1} | {:.1} | {:.1} % | {} |",
            o.name,
            quantile(&o.ttfb, 0.5),
            quantile(&o.ttfb, 0.99),
            o.extra * 100.0,
            spread.join(" / ")
        );
    }
    if let [plain, hedged @ ..] = stalls {
        for h in hedged {
            let _ = writeln!(
                t,
                "\n{} / unhedged: p99 TTFB {:.2} (target at most 0.7), extra requests {:.1} % (target at most 10 %).",
                h.name,
                quantile(&h.ttfb, 0.99) / quantile(&plain.ttfb, 0.99),
                h.extra * 100.0
            );
        }
    }
    let _ = writeln!(t, "\n![Time to first byte per policy](model-servers.svg)");
    print!("{t}");
    let results = root.join("benches/results");
    let _ = std::fs::create_dir_all(&results);
    let _ = std::fs::write(results.join("model-servers.md"), &t);
    let svg = chart::cdf_svg(
        &[
            ttfb_panel("time to first byte", outcomes),
            ttfb_panel("TTFB, private documents", documents),
            ttfb_panel("TTFB, one server stalling", stalls),
        ],
        (10.0, 10_000.0),
    );
    let _ = std::fs::write(results.join("model-servers.svg"), svg);
    eprintln!("wrote benches/results/model-servers.md and model-servers.svg");
}
