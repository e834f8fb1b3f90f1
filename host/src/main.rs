//! The `switchyard` command: run the proxy, check a config, or start the demo.

mod authoring;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use switchyard::Switchyard;
use switchyard::config::Config;
use switchyard_testkit as demo;

/// mimalloc's per-thread free lists suit a proxy whose worker threads each
/// allocate and free their own requests' buffers (BENCHMARKS.md has the A/B).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A programmable reverse proxy for LLM and agent traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and load every plugin it references, then exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the running routes, their plugin versions, every backend's
    /// health and breaker state, and recent reloads, from a running proxy's
    /// admin listener.
    Status {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// The admin bearer token, if the listener has one.
        #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run a mock backend (OpenAI-style chat, SSE, echo, and `/ok`) until Ctrl-C.
    Mock {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "mock")]
        name: String,
        /// Delay before each response, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Gap between the chunks of a streamed answer, in milliseconds.
        #[arg(long, default_value_t = 100)]
        chunk_interval_ms: u64,
        /// Answer every N-th request with 503 (0: never), to try failover.
        #[arg(long, default_value_t = 0)]
        fail_every: u64,
        /// Tokens per minute reported in `x-ratelimit-remaining-tokens`
        /// (each answer uses 18); 0: no token quota.
        #[arg(long, default_value_t = 0)]
        tokens_per_minute: u64,
        /// Serve TLS with this certificate chain (PEM), ALPN h2 and http/1.1.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this CA (PEM): mTLS.
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
    /// Print the SHA-256 of a client key read from standard input, as a
    /// route's keys file lists it.
    KeyDigest,
    /// Create plugins, or try out routers.
    Plugin {
        #[command(subcommand)]
        command: authoring::PluginCommand,
    },
    /// Run a candidate router over a recorded trace and report what would
    /// change; exits 1 when the candidate fails on any recorded input.
    Replay(authoring::ReplayArgs),
    /// Start the proxy on a demo config with mock model backends on loopback.
    Demo {
        /// Directory holding the built plugins.
        #[arg(long, default_value = "target/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let proxy = Switchyard::start(&config)?;
            wait_for_signal(Some(&proxy))?;
            tracing::info!("shutting down; draining in-flight requests");
            proxy.shutdown();
            Ok(())
        }
        Command::Check { config: path } => {
            let config = Config::load(&path)?;
            let runtime = switchyard::plugin::PluginRuntime::new(Some(config.cache_dir()))?;
            let table =
                switchyard::build::route_table(&config, &runtime, &mut Default::default(), None)
                    .map_err(|e| anyhow::anyhow!(e.located(&config)))?;
            if let Some(tls) = &config.server.tls {
                switchyard::tls::certified_key(&tls.cert, &tls.key)
                    .with_context(|| format!("{}: server.tls", path.display()))?;
            }
            let pool_plugins: usize = table
                .pools
                .iter()
                .map(|p| {
                    p.breakers.len()
                        + usize::from(p.health.as_ref().is_some_and(|h| h.plugin.is_some()))
                })
                .sum();
            println!(
                "{}: ok ({} routes, {} pools, {} plugins loaded)",
                path.display(),
                table.routes.len(),
                table.pools.len(),
                table.routes.iter().filter(|r| r.router.is_some()).count() + pool_plugins
            );
            Ok(())
        }
        Command::Status { admin, token } => print_status(&admin, token.as_deref()),
        Command::Replay(options) => authoring::replay(options),
        Command::KeyDigest => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            anyhow::ensure!(!key.trim().is_empty(), "no key on standard input");
            println!("{}", switchyard::route::auth::key_digest(&key));
            Ok(())
        }
        Command::Mock {
            listen,
            name,
            latency_ms,
            chunk_interval_ms,
            fail_every,
            tokens_per_minute,
            tls_cert,
            tls_key,
            tls_client_ca,
        } => {
            let mut options = demo::MockOptions::new(&name);
            options.latency = std::time::Duration::from_millis(latency_ms);
            options.chunk_interval = std::time::Duration::from_millis(chunk_interval_ms);
            options.quota = (tokens_per_minute > 0).then_some(demo::TokenQuota {
                tokens: tokens_per_minute,
                window: std::time::Duration::from_secs(60),
                per_request: 18,
            });
            if let (Some(cert), Some(key)) = (&tls_cert, &tls_key) {
                options.tls = Some(switchyard::tls::fixed_server_config(
                    cert,
                    key,
                    tls_client_ca.as_deref(),
                )?);
            }
            let scheme = if options.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let mock = demo::MockBackend::start_on(listen, options)?;
            mock.fail_every(fail_every);
            println!("mock backend {name} on {scheme}://{}", mock.addr);
            wait_for_signal(None)?;
            Ok(())
        }
        Command::Plugin { command } => authoring::plugin(command),
        Command::Demo {
            plugin_dir,
            listen,
            admin,
        } => {
            let plugin_dir = std::fs::canonicalize(&plugin_dir).with_context(|| {
                format!("plugin directory {} not found; build the plugins with ./scripts/build-plugins.sh", plugin_dir.display())
            })?;
            let backends = demo::demo_backends()?;
            let text = demo::demo_config(&listen, &admin, &plugin_dir.to_string_lossy(), &backends);
            let path =
                std::env::temp_dir().join(format!("switchyard-demo-{}.toml", std::process::id()));
            std::fs::write(&path, &text)?;
            let config = Config::load(&path)?;
            let proxy = Switchyard::start(&config)?;
            let a = proxy.addr();
            println!(
                "\nSwitchyard demo: proxy on http://{a}, admin on http://{admin}, config {}\n",
                path.display()
            );
            println!(
                "  # high priority goes to the fast tier, the rest to the cheap tier (see x-switchyard-backend):"
            );
            println!(
                "  curl -si http://{a}/graphs/research/v1/chat/completions -H 'x-priority: high' -d '{{\"messages\":[]}}'"
            );
            println!(
                "  curl -si http://{a}/graphs/research/v1/chat/completions -d '{{\"messages\":[]}}'"
            );
            println!("  # streaming, token by token:");
            println!(
                "  curl -sN http://{a}/graphs/research/v1/chat/completions -H 'x-priority: high' -d '{{\"stream\": true}}'"
            );
            println!("  # OpenAI-style: the body's model picks the backend (fast = gpt-4o-mini):");
            println!(
                "  curl -si http://{a}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\": \"llama-3.1-8b\", \"messages\": []}}'"
            );
            println!("  # tools graph, round robin:");
            println!(
                "  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%header{{x-switchyard-backend}}\\n' http://{a}/graphs/tools/lookup; done"
            );
            println!("  # why a request went where it went:");
            println!(
                "  curl -s -o /dev/null -D - http://{a}/graphs/research/v1/chat/completions -H 'x-switchyard-debug: 1' -d '{{}}' | grep -i x-switchyard"
            );
            println!("  # live dashboard, state and metrics:");
            println!("  open http://{admin}/dashboard");
            println!("  curl -s http://{admin}/status; curl -s http://{admin}/metrics");
            println!("  cargo run --release -p switchyard -- status --admin {admin}\n");
            println!(
                "Edit {} or replace a plugin in {} and it reloads; Ctrl-C stops it.",
                path.display(),
                plugin_dir.display()
            );
            wait_for_signal(Some(&proxy))?;
            proxy.shutdown();
            drop(backends);
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
    }
}

/// Prints `/status` of the admin listener at `admin` as a short report.
fn print_status(admin: &str, token: Option<&str>) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin)
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET /status HTTP/1.0\r\nhost: switchyard\r\n{auth}\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    if head.starts_with("HTTP/1.1 401") || head.starts_with("HTTP/1.0 401") {
        anyhow::bail!("{admin} wants the admin token: pass --token or set SWITCHYARD_ADMIN_TOKEN");
    }
    let status: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("{admin}/status is not JSON"))?;
    println!(
        "{:<16} {:<12} {:<28} {:<14} STATE",
        "ROUTE", "POOL", "PLUGIN", "VERSION"
    );
    for r in status["routes"].as_array().into_iter().flatten() {
        let router = &r["router"];
        let (plugin, version, state) = if router.is_null() {
            (
                "(built-in)".to_string(),
                "-".to_string(),
                "least-outstanding",
            )
        } else {
            let version = router["version"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(12)
                .collect();
            let state = if router["quarantined"] == true {
                "QUARANTINED"
            } else {
                "serving"
            };
            (
                router["file"].as_str().unwrap_or("").to_string(),
                version,
                state,
            )
        };
        let (name, pool) = (
            r["name"].as_str().unwrap_or(""),
            r["pool"].as_str().unwrap_or(""),
        );
        println!("{name:<16} {pool:<12} {plugin:<28} {version:<14} {state}");
    }
    println!(
        "\n{:<12} {:<16} {:<10} {:<10} {:>9} {:>9} {:>6} {:>6}",
        "POOL", "BACKEND", "HEALTH", "BREAKER", "IN-FLIGHT", "EWMA-MS", "ERR-%", "LOAD"
    );
    for p in status["pools"].as_array().into_iter().flatten() {
        for b in p["backends"].as_array().into_iter().flatten() {
            let s = &b["state"];
            let breaker = match (
                s["breaker"].as_str().unwrap_or(""),
                b["breaker_open_ms"].as_u64(),
            ) {
                ("open", Some(ms)) if ms > 0 => format!("open {:.1}s", ms as f64 / 1000.0),
                ("half-open", _) => format!("half({})", b["trial_permits"].as_u64().unwrap_or(0)),
                (other, _) => other.to_string(),
            };
            println!(
                "{:<12} {:<16} {:<10} {:<10} {:>9} {:>9.1} {:>6.1} {:>6}",
                p["name"].as_str().unwrap_or(""),
                b["name"].as_str().unwrap_or(""),
                s["health"].as_str().unwrap_or(""),
                breaker,
                s["in_flight"].as_u64().unwrap_or(0),
                s["ewma_latency_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
                s["error_rate"].as_u64().unwrap_or(0) as f64 / 10.0,
                s["load_score"].as_u64().unwrap_or(0),
            );
        }
    }
    let reloads = status["reloads"].as_array().cloned().unwrap_or_default();
    if !reloads.is_empty() {
        println!("\nrecent reloads (newest last):");
        for e in reloads.iter().rev().take(5).rev() {
            let ok = if e["ok"] == true { "ok    " } else { "FAILED" };
            let (cause, message) = (
                e["cause"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(""),
            );
            println!("  {ok} [{cause}] {message}");
        }
    }
    Ok(())
}

/// Blocks until Ctrl-C or SIGTERM; reloads `proxy` on SIGHUP.
fn wait_for_signal(proxy: Option<&Switchyard>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r,
                _ = term.recv() => return Ok(()),
                _ = hup.recv() => {
                    let Some(proxy) = proxy else { continue };
                    let reloader = proxy.reloader.clone();
                    // Compiling is blocking work; keep it off this loop.
                    let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
                }
            }
        }
    })?;
    Ok(())
}
