//! A dry run of a compiled router: synthetic backends with varied load, a
//! few requests, and the decisions the plugin makes, without any traffic.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use switchyard::balance::{Breaker, Health, LoadSnapshot};
use switchyard::config::FailurePolicy;
use switchyard::plugin::{Answer, Interest, PluginRuntime, RouterPlugin, RouterSpec, wit};
use switchyard::pool::push_load_words;

/// What to try a router with; also the arguments of `switchyard plugin test`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrialOptions {
    /// The compiled router.
    pub file: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub backends: u32,
    /// Backend labels, KEY=V1,V2: backend i gets the i-th value, cycling.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Plugin config entries, KEY=VALUE.
    #[arg(long = "config")]
    pub config: Vec<String>,
    /// Request headers, NAME=VALUE.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long, default_value_t = 5)]
    pub requests: u32,
    /// All backends idle, instead of varied load.
    #[arg(long)]
    pub idle: bool,
}

fn pair(text: &str) -> anyhow::Result<(String, String)> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not KEY=VALUE"))
}

/// Loads the router, runs its decisions and returns a printable report.
pub fn trial(options: &TrialOptions) -> anyhow::Result<String> {
    anyhow::ensure!(options.backends > 0, "--backends must be at least 1");
    let labels: Vec<(String, Vec<String>)> = options
        .labels
        .iter()
        .map(|l| pair(l).map(|(k, v)| (k, v.split(',').map(String::from).collect())))
        .collect::<Result<_, _>>()?;
    let infos: Vec<wit::BackendInfo> = (0..options.backends)
        .map(|i| wit::BackendInfo {
            id: i,
            name: format!("b{i}"),
            address: format!("127.0.0.1:{}", 9000 + i),
            weight: 1,
            labels: labels
                .iter()
                .map(|(k, vals)| (k.clone(), vals[i as usize % vals.len()].clone()))
                .collect(),
        })
        .collect();
    let runtime = PluginRuntime::new(None)?;
    let spec = RouterSpec {
        file: options.file.clone(),
        route: "trial".into(),
        config: options
            .config
            .iter()
            .map(|c| pair(c))
            .collect::<Result<_, _>>()?,
        on_failure: FailurePolicy::FailClosed,
        deadline: Duration::from_millis(50),
        memory_mb: 64,
        body_peek: 64 * 1024,
        backends: infos.clone(),
    };
    let plugin = RouterPlugin::load(&runtime, spec)?;
    let mut instance = plugin.instantiate()?;

    let mut request = http::Request::builder().uri(&options.path);
    for h in &options.headers {
        let (k, v) = pair(h)?;
        request = request.header(k, v);
    }
    let request = request.body(())?;
    let attributes: Vec<switchyard::plugin::wit::AttributeValue> = plugin
        .interest
        .iter()
        .map(|i| switchyard::proxy::request_attribute(i, &request, None))
        .collect();

    let mut out = String::new();
    let interest: Vec<String> = plugin.interest.iter().map(describe).collect();
    writeln!(
        out,
        "{} (version {}, {}), interest: [{}]",
        plugin.name(),
        &plugin.component.hash[..12],
        plugin.version,
        interest.join(", ")
    )?;
    writeln!(
        out,
        "\n  id  name  {:<24} in-flight  latency  errors",
        "labels"
    )?;
    let mut snapshots = Vec::new();
    for info in &infos {
        let i = info.id;
        let s = LoadSnapshot {
            in_flight: if options.idle { 0 } else { (i * 7 + 3) % 5 },
            ewma_latency_us: if options.idle {
                0
            } else {
                20_000 + (i * 37 % 11) * 15_000
            },
            ewma_ttfb_us: 0,
            error_rate: if options.idle || i % 4 != 3 { 0 } else { 60 },
            health: Health::Healthy,
            breaker: Breaker::Closed,
            load_score: 0,
            remaining_requests: None,
            remaining_tokens: None,
            quota_reset_ms: 0,
        };
        let labels: Vec<String> = info
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(
            out,
            "  {:<3} {:<5} {:<24} {:>9}  {:>5} ms  {:>4} ‰",
            i,
            info.name,
            labels.join(","),
            s.in_flight,
            s.ewma_latency_us / 1000,
            s.error_rate
        )?;
        snapshots.push(s);
    }
    let mut words = Vec::new();
    for (i, s) in snapshots.iter().enumerate() {
        push_load_words(&mut words, i as u32, s);
    }
    writeln!(
        out,
        "\n  decisions for {} {}:",
        options.path,
        options.headers.join(" ")
    )?;
    for n in 1..=options.requests.max(1) {
        let facts = wit::Request {
            method: wit::Method::Get,
            client_ip: wit::IpAddress::V4(0x7f00_0001),
        };
        let line = match instance.route(facts, &words, attributes.clone()) {
            Ok(Answer::Few(ids, len, None)) => names(&ids[..usize::from(len)], &infos),
            Ok(Answer::Few(ids, len, Some(us))) => format!(
                "{} (hedged after {us} µs)",
                names(&ids[..usize::from(len)], &infos)
            ),
            Ok(Answer::Full(wit::Decision::Forward(f))) => {
                let headers: Vec<String> = f
                    .add_headers
                    .iter()
                    .map(|h| format!("+{}: {}", h.name, h.value))
                    .collect();
                let hedge = f
                    .hedge_after_us
                    .map(|us| format!(" (hedged after {us} µs)"))
                    .unwrap_or_default();
                format!(
                    "{} {}{hedge}",
                    names(&f.candidates, &infos),
                    headers.join(" ")
                )
            }
            Ok(Answer::Full(wit::Decision::Reject(r))) => {
                format!("reply {} {:?}", r.status, r.body.trim_end())
            }
            Err(failure) => {
                instance = plugin.instantiate()?;
                format!("FAILED: {failure:?}")
            }
        };
        writeln!(out, "  {n:>3}: {line}")?;
    }
    Ok(out)
}

fn names(ids: &[u32], infos: &[wit::BackendInfo]) -> String {
    if ids.is_empty() {
        return "(no candidates: 503)".into();
    }
    ids.iter()
        .map(|&id| {
            infos
                .get(id as usize)
                .map_or(format!("#{id}?"), |b| b.name.clone())
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn describe(interest: &Interest) -> String {
    match interest {
        Interest::Header(h) => format!("header {h}"),
        Interest::Path => "path".into(),
        Interest::Query => "query".into(),
        Interest::Cookie(c) => format!("cookie {c}"),
        Interest::Host => "host".into(),
        Interest::JsonBody(f) => format!("json-body {f}"),
        Interest::BodySize => "body-size".into(),
        Interest::PromptPrefix { block, max_bytes } => {
            format!("prompt-prefix (blocks of {block} bytes, up to {max_bytes})")
        }
    }
}
