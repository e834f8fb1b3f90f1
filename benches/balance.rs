//! Balancing quality under agent traffic: a reproducible mix of short
//! requests (tens of ms) and long ones (seconds: agent runs, scaled down)
//! against backends that serve a bounded number at once and queue the rest.
//! A router that piles long requests onto one backend makes the short ones
//! behind them wait; one that watches in-flight counts does not.
//!
//! The same arrival sequence (fixed seed, open loop) runs through
//! Switchyard with `round-robin`, `least-outstanding` and `p2c-ewma` (Wasm
//! plugins), and through nginx `least_conn` when nginx is installed, twice:
//! against four alike backends, and against a pool where two backends do
//! every request 2.5x slower. Prints the tables, writes them to
//! `benches/results/balance.md`, and draws the latency distributions to
//! `benches/results/balance.svg` and `balance-uneven.svg`.
//!
//!   cargo bench -p switchyard-benches --bench balance
//!   RATE=40 SECONDS=20 cargo bench -p switchyard-benches --bench balance

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[path = "chart.rs"]
mod chart;
#[path = "nginx.rs"]
mod nginx;
use nginx::Nginx;

/// Backends in the pool.
const BACKENDS: usize = 4;
/// Requests one backend serves at once; the rest wait in its queue.
const SLOTS: usize = 4;
/// Share of long requests, and their and the short ones' service times.
const LONG_SHARE: f64 = 0.1;
const LONG_MS: (u64, u64) = (1000, 3000);
const SHORT_MS: (u64, u64) = (20, 60);
/// A request slower than this counts as timed out.
const TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    let rate: f64 = env_or("RATE", 40.0);
    let seconds: f64 = env_or("SECONDS", 20.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rate, seconds));
}

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One request of the workload: when it is sent, and how long it works.
#[derive(Clone, Copy)]
struct Job {
    at: Duration,
    work_ms: u64,
}

impl Job {
    fn is_long(&self) -> bool {
        self.work_ms >= LONG_MS.0
    }
}

/// Poisson arrivals at `rate` per second for `seconds`, from a fixed seed.
fn workload(rate: f64, seconds: f64) -> Vec<Job> {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut jobs = Vec::new();
    let mut t = 0.0;
    loop {
        t += -(1.0 - next()).ln() / rate;
        if t >= seconds {
            return jobs;
        }
        let (lo, hi) = if next() < LONG_SHARE {
            LONG_MS
        } else {
            SHORT_MS
        };
        let work_ms = lo + ((hi - lo) as f64 * next()) as u64;
        jobs.push(Job {
            at: Duration::from_secs_f64(t),
            work_ms,
        });
    }
}

/// A backend with `SLOTS` workers: `/work?ms=N` holds a slot for N ms.
struct Backend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
}

async fn start_backend(slowdown: f64) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let slots = Arc::new(Semaphore::new(SLOTS));
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (slots, counter) = (slots.clone(), counter.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (slots, counter) = (slots.clone(), counter.clone());
                    async move {
                        let ms = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("ms="))
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(10);
                        let _slot = slots.acquire().await;
                        tokio::time::sleep(Duration::from_secs_f64(ms as f64 * slowdown / 1000.0))
                            .await;
                        counter.fetch_add(1, Relaxed);
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"done\n")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { addr, served }
}

/// What one policy did with the workload.
struct Outcome {
    name: String,
    /// Latencies of answered requests, ms, short and long apart.
    short: Vec<f64>,
    long: Vec<f64>,
    /// Time each answered request spent waiting (latency minus its own
    /// work), ms: what balancing controls, comparable across lengths.
    wait: Vec<f64>,
    failed: usize,
    per_backend: Vec<u64>,
}

async fn drive(name: &str, url: &str, jobs: &[Job], backends: &[Backend]) -> Outcome {
    let before: Vec<u64> = backends.iter().map(|b| b.served.load(Relaxed)).collect();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let started = Instant::now();
    let tasks: Vec<_> = jobs
        .iter()
        .map(|job| {
            let (client, job) = (client.clone(), *job);
            let uri: http::Uri = format!("{url}/work?ms={}", job.work_ms)
                .parse()
                .expect("uri");
            tokio::spawn(async move {
                tokio::time::sleep_until((started + job.at).into()).await;
                let sent = Instant::now();
                let answer = tokio::time::timeout(TIMEOUT, async {
                    let resp = client.get(uri).await.ok()?;
                    let ok = resp.status().is_success();
                    resp.into_body().collect().await.ok()?;
                    ok.then_some(())
                })
                .await;
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                let work = job.work_ms as f64;
                (
                    job.is_long(),
                    matches!(answer, Ok(Some(()))).then_some((ms, ms - work)),
                )
            })
        })
        .collect();
    let mut outcome = Outcome {
        name: name.to_string(),
        short: Vec::new(),
        long: Vec::new(),
        wait: Vec::new(),
        failed: 0,
        per_backend: Vec::new(),
    };
    for t in tasks {
        match t.await.expect("request task") {
            (_, None) => outcome.failed += 1,
            (long, Some((ms, wait))) => {
                outcome.wait.push(wait.max(0.0));
                if long {
                    outcome.long.push(ms);
                } else {
                    outcome.short.push(ms);
                }
            }
        }
    }
    outcome.per_backend = backends
        .iter()
        .zip(before)
        .map(|(b, n)| b.served.load(Relaxed) - n)
        .collect();
    outcome.short.sort_by(f64::total_cmp);
    outcome.long.sort_by(f64::total_cmp);
    outcome.wait.sort_by(f64::total_cmp);
    outcome
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The pool's backends: all alike, or half of them slower at every request.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Work multiplier of backends 0 and 1.
    slowdown: f64,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "alike",
        slowdown: 1.0,
    },
    Scenario {
        name: "uneven",
        slowdown: 2.5,
    },
];

async fn run(rate: f64, seconds: f64) {
    let jobs = workload(rate, seconds);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut all = Vec::new();
    for scenario in SCENARIOS {
        all.push((scenario, run_scenario(scenario, &jobs, &root).await));
    }
    report(&root, &all, &jobs, rate, seconds);
}

async fn run_scenario(scenario: Scenario, jobs: &[Job], root: &Path) -> Vec<Outcome> {
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        // The slow ones first: a router breaking ties by lowest id gets no
        // help from the order.
        let slowdown = if i < 2 { scenario.slowdown } else { 1.0 };
        backends.push(start_backend(slowdown).await);
    }
    let plugins = root.join("target/plugins");
    assert!(
        plugins.join("p2c-ewma.wasm").exists(),
        "build the plugins first: ./scripts/build-plugins.sh"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let entries: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ name = \"b{i}\", address = \"{}\" }}", b.addr))
        .collect();
    let policies = ["round-robin", "least-outstanding", "p2c-ewma"];
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\nwatch = false\n\
         [pools.p]\nbackends = [{}]\n",
        plugins.display(),
        dir.path().join("cache").display(),
        entries.join(", ")
    );
    for p in policies {
        let _ = write!(
            config,
            "[[routes]]\nname = \"{p}\"\nmatch = {{ path_prefix = \"/{p}\" }}\nstrip_prefix = true\npool = \"p\"\n\
             router = {{ plugin = \"{p}.wasm\" }}\ntimeouts = {{ first_byte = \"30s\" }}\n"
        );
    }
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).expect("write config");
    let proxy =
        switchyard::Switchyard::start(&switchyard::config::Config::load(&path).expect("config"))
            .expect("proxy starts");
    let long = jobs.iter().filter(|j| j.is_long()).count();
    eprintln!(
        "{}: {} requests ({long} long), {BACKENDS} backends x {SLOTS} slots, b0 and b1 {}x slower",
        scenario.name,
        jobs.len(),
        scenario.slowdown
    );
    let mut outcomes = Vec::new();
    for p in policies {
        eprintln!("running {p}");
        let url = format!("http://{}/{p}", proxy.addr());
        outcomes.push(drive(p, &url, jobs, &backends).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    if let Some(nginx) = Nginx::start(&addrs, dir.path(), "least_conn;") {
        eprintln!("running nginx least_conn");
        let url = format!("http://{}", nginx.addr);
        outcomes.push(drive("nginx least_conn", &url, jobs, &backends).await);
    } else {
        eprintln!("nginx not installed; skipping it");
    }
    proxy.shutdown();
    outcomes
}

fn report(root: &Path, all: &[(Scenario, Vec<Outcome>)], jobs: &[Job], rate: f64, seconds: f64) {
    let mut table = String::new();
    let _ = writeln!(table, "# Balancing quality under agent traffic\n");
    let _ = writeln!(
        table,
        "`RATE={rate} SECONDS={seconds} cargo bench -p switchyard-benches --bench balance` on {} cores, one proxy worker.",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let _ = writeln!(
        table,
        "{} requests, Poisson arrivals at {rate}/s from a fixed seed; {:.0} % long ({}–{} ms of work), the rest short ({}–{} ms).",
        jobs.len(),
        LONG_SHARE * 100.0,
        LONG_MS.0,
        LONG_MS.1,
        SHORT_MS.0,
        SHORT_MS.1
    );
    let _ = writeln!(
        table,
        "{BACKENDS} backends serving {SLOTS} requests at once each, queueing the rest. Latency in ms, as the client saw it; \
         wait is latency minus the request's nominal work."
    );
    for (scenario, outcomes) in all {
        let _ = writeln!(
            table,
            "\n## {}: {}\n",
            scenario.name,
            if scenario.slowdown == 1.0 {
                "four alike backends".to_string()
            } else {
                format!(
                    "b0 and b1 do every request's work {}x slower",
                    scenario.slowdown
                )
            }
        );
        let _ = writeln!(
            table,
            "| policy | short p50 | short p99 | long p50 | long p99 | wait p50 | wait p99 | failed | requests per backend |"
        );
        let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for o in outcomes {
            let spread: Vec<String> = o.per_backend.iter().map(u64::to_string).collect();
            let _ = writeln!(
                table,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                o.name,
                quantile(&o.short, 0.5),
                quantile(&o.short, 0.99),
                quantile(&o.long, 0.5),
                quantile(&o.long, 0.99),
                quantile(&o.wait, 0.5),
                quantile(&o.wait, 0.99),
                o.failed,
                spread.join(" / ")
            );
        }
        let p99 = |name: &str, pick: fn(&Outcome) -> &Vec<f64>| {
            outcomes
                .iter()
                .find(|o| o.name == name)
                .map(|o| quantile(pick(o), 0.99))
        };
        let ratio = |a: &str, b: &str, pick: fn(&Outcome) -> &Vec<f64>| match (
            p99(a, pick),
            p99(b, pick),
        ) {
            (Some(a), Some(b)) => a / b,
            _ => f64::NAN,
        };
        let _ = writeln!(
            table,
            "\nShort requests' p99: least-outstanding / round-robin {:.2}; p2c-ewma / least-outstanding {:.2}.",
            ratio("least-outstanding", "round-robin", |o| &o.short),
            ratio("p2c-ewma", "least-outstanding", |o| &o.short),
        );
    }
    let _ = writeln!(
        table,
        "\n![Latency distributions, four alike backends](balance.svg)"
    );
    print!("{table}");
    let results = root.join("benches/results");
    let _ = std::fs::create_dir_all(&results);
    let _ = std::fs::write(results.join("balance.md"), &table);
    if let Some((_, first)) = all.first() {
        let _ = std::fs::write(results.join("balance.svg"), svg(first));
    }
    if let Some((_, uneven)) = all.get(1) {
        let _ = std::fs::write(results.join("balance-uneven.svg"), svg(uneven));
    }
    eprintln!("wrote benches/results/balance.md, balance.svg and balance-uneven.svg");
}

/// CDFs on a log scale, one line per policy: short requests' latency on
/// the left, every request's waiting time on the right.
fn svg(outcomes: &[Outcome]) -> String {
    let panel = |title: &str, pick: fn(&Outcome) -> &Vec<f64>| chart::Panel {
        title: title.to_string(),
        lines: outcomes
            .iter()
            .map(|o| (o.name.as_str(), pick(o).as_slice()))
            .collect(),
    };
    chart::cdf_svg(
        &[
            panel("latency of short requests", |o| &o.short),
            panel("waiting time of all requests", |o| &o.wait),
        ],
        (1.0, 10_000.0),
    )
}
