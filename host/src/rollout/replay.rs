//! `switchyard replay`: runs a candidate router over a recorded trace, as
//! fast as it can, and reports what would change: decisions that differ,
//! traffic per backend before and after, requests it would have sent to a
//! backend that was unhealthy or open at that moment, the projected token
//! cost, its failures with the inputs that caused them, and its decision
//! time. The baseline is what the route decided when the trace was
//! written, or another plugin run on the same inputs (`--against`).

use super::Decided;
use super::trace::{self, Header, Line, Record};
use crate::config::Config;
use crate::plugin::{CallFailure, PluginRuntime, RouterInstance, RouterPlugin, RouterSpec, wit};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Failing inputs kept in the report.
const SHOWN_FAILURES: usize = 5;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub trace: PathBuf,
    pub config: PathBuf,
    pub route: String,
    /// The candidate: a file name in the config's plugin directory, or a path.
    pub plugin: String,
    /// A baseline plugin to compare with instead of the recorded decisions.
    pub against: Option<String>,
}

/// What replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub route: String,
    pub candidate: String,
    pub baseline: String,
    pub decisions: u64,
    /// Records skipped (another route's, or unreadable), by reason.
    pub skipped: BTreeMap<String, u64>,
    pub changed_primary: u64,
    pub changed_candidates: u64,
    pub changed_primary_share: f64,
    /// Requests per backend (first candidate), baseline and candidate;
    /// `reject` counts direct answers.
    pub traffic_before: BTreeMap<String, u64>,
    pub traffic_after: BTreeMap<String, u64>,
    /// Requests sent first to a backend that was unhealthy or open at
    /// that moment.
    pub to_unusable_before: u64,
    pub to_unusable_after: u64,
    /// USD from the backends' `input_price` and `output_price` labels
    /// (per million tokens) and the recorded token counts.
    pub cost_before_usd: f64,
    pub cost_after_usd: f64,
    pub failures: u64,
    pub failures_by_kind: BTreeMap<String, u64>,
    pub first_failures: Vec<FailedInput>,
    /// Attributes the candidate reads that the trace does not hold (it
    /// got them as not seen).
    pub missing_attributes: Vec<String>,
    pub decision_ns_median: u64,
    pub decision_ns_p99: u64,
    pub decisions_per_second: f64,
}

/// A recorded input the candidate failed on.
#[derive(Debug, Clone, Serialize)]
pub struct FailedInput {
    /// Line of the trace file, from 1.
    pub line: u64,
    pub kind: String,
    pub message: String,
    pub method: String,
    pub client_ip: String,
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// A router bound to one trace header's backends.
struct Bound {
    plugin: Arc<RouterPlugin>,
    instance: Option<RouterInstance>,
    /// Where each of the plugin's attributes is in a record's `attrs`.
    slots: Vec<Option<usize>>,
}

/// Runs the replay and returns its report.
pub fn replay(options: &ReplayOptions) -> anyhow::Result<Report> {
    let config = Config::load(&options.config)?;
    let route = config
        .routes
        .iter()
        .map(|r| r.get_ref())
        .find(|r| r.name == options.route)
        .ok_or_else(|| {
            let names: Vec<_> = config
                .routes
                .iter()
                .map(|r| r.get_ref().name.clone())
                .collect();
            anyhow::anyhow!(
                "{}: no route `{}` (routes: {})",
                options.config.display(),
                options.route,
                names.join(", ")
            )
        })?;
    let runtime = PluginRuntime::new(Some(config.cache_dir()))?;
    let file = std::fs::File::open(&options.trace)
        .with_context(|| format!("cannot open the trace {}", options.trace.display()))?;
    let mut report = Report {
        route: options.route.clone(),
        candidate: options.plugin.clone(),
        baseline: options
            .against
            .clone()
            .unwrap_or_else(|| "recorded decisions".into()),
        ..Report::default()
    };
    let mut candidate: Option<Bound> = None;
    let mut baseline: Option<Bound> = None;
    let mut header: Option<Header> = None;
    let mut times = Vec::new();
    let started = Instant::now();
    // Loading plugins is not replay speed.
    let mut loading = std::time::Duration::ZERO;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = n as u64 + 1;
        let line = line.with_context(|| format!("{}: line {number}", options.trace.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = match trace::parse_line(&line) {
            Ok(Line::Header(h)) => {
                anyhow::ensure!(
                    h.load_words.len() == crate::plugin::LOAD_WORDS,
                    "{}: line {number}: the trace has {} load words per backend; this host has {}",
                    options.trace.display(),
                    h.load_words.len(),
                    crate::plugin::LOAD_WORDS
                );
                if h.route == options.route && header.as_ref() != Some(&h) {
                    let binding = Instant::now();
                    let mut bind =
                        |name: &str| bind(&runtime, &config, route, name, &h, &mut report);
                    candidate = Some(bind(&options.plugin)?);
                    baseline = match options.against.as_deref() {
                        Some(name) => Some(bind(name)?),
                        None => None,
                    };
                    loading += binding.elapsed();
                }
                header = Some(h);
                continue;
            }
            Ok(Line::Record(r)) => r,
            Err(e) if e.contains("trace format") => {
                anyhow::bail!("{}: line {number}: {e}", options.trace.display())
            }
            Err(_) => {
                *report.skipped.entry("unreadable".into()).or_default() += 1;
                continue;
            }
        };
        let (Some(h), Some(cand)) = (&header, candidate.as_mut()) else {
            *report.skipped.entry("no header".into()).or_default() += 1;
            continue;
        };
        if h.route != options.route {
            *report
                .skipped
                .entry(format!("route {}", h.route))
                .or_default() += 1;
            continue;
        }
        if record.loads.len() != h.backends.len() * crate::plugin::LOAD_WORDS {
            *report
                .skipped
                .entry("loads do not match the header".into())
                .or_default() += 1;
            continue;
        }
        let call_started = Instant::now();
        let decided = decide(cand, &record);
        times.push(call_started.elapsed().as_nanos() as u64);
        let before = match baseline.as_mut() {
            Some(b) => decide(b, &record).ok(),
            None => Some(record.decision.clone()),
        };
        report.count(h, &record, before.as_ref(), decided, number);
    }
    let elapsed = started.elapsed().saturating_sub(loading).as_secs_f64();
    times.sort_unstable();
    if !times.is_empty() {
        report.decision_ns_median = times[times.len() / 2];
        report.decision_ns_p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        report.decisions_per_second = times.len() as f64 / elapsed.max(1e-9);
    }
    if report.decisions > 0 {
        report.changed_primary_share = report.changed_primary as f64 / report.decisions as f64;
    }
    Ok(report)
}

/// Loads `name` for `route` against the backends of header `h`, with the
/// init table the config gives that plugin on the route.
fn bind(
    runtime: &Arc<PluginRuntime>,
    config: &Config,
    route: &crate::config::RouteConfig,
    name: &str,
    h: &Header,
    report: &mut Report,
) -> anyhow::Result<Bound> {
    let file = if name.contains('/') || Path::new(name).exists() {
        PathBuf::from(name)
    } else {
        config.plugin_dir().join(name)
    };
    let file_name = file.file_name().map(|f| f.to_string_lossy().to_string());
    let router = route.router.as_ref();
    let table = router.and_then(|r| {
        let named = |f: &str| Some(f) == file_name.as_deref();
        if let Some(s) = r.shadow.as_ref().filter(|s| named(&s.plugin)) {
            return s.config.clone().or(Some(r.config.clone()));
        }
        if let Some(c) = r.canary.as_ref().filter(|c| named(&c.previous)) {
            return c.previous_config.clone().or(Some(r.config.clone()));
        }
        Some(r.config.clone())
    });
    let spec = RouterSpec {
        file: file.clone(),
        route: route.name.clone(),
        config: table
            .map(|t| crate::config::flatten_table(&t))
            .unwrap_or_default(),
        on_failure: router.map(|r| r.on_failure).unwrap_or_default(),
        deadline: router.map_or(std::time::Duration::from_millis(10), |r| r.deadline),
        memory_mb: router.map_or(16, |r| r.memory_mb),
        backends: h
            .backends
            .iter()
            .map(|b| wit::BackendInfo {
                id: b.id,
                name: b.name.clone(),
                address: b.address.clone(),
                weight: b.weight,
                labels: b.labels.clone().into_iter().collect(),
            })
            .collect(),
        body_peek: router.map_or(1 << 20, |r| r.body_peek as usize),
    };
    let plugin = RouterPlugin::load(runtime, spec)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let slots = plugin
        .interest
        .iter()
        .map(|i| {
            let name = i.name();
            let at = h.attributes.iter().position(|a| *a == name);
            if at.is_none() && !report.missing_attributes.contains(&name) {
                report.missing_attributes.push(name);
            }
            at
        })
        .collect();
    Ok(Bound {
        instance: Some(plugin.instantiate()?),
        plugin,
        slots,
    })
}

/// The bound router's decision on `record`'s inputs. After a failure the
/// next call gets a fresh instance, so every input is tried.
fn decide(b: &mut Bound, record: &Record) -> Result<Decided, CallFailure> {
    let facts = wit::Request {
        method: super::method_of(&record.method),
        client_ip: ip(&record.client_ip),
    };
    let attributes = b
        .slots
        .iter()
        .map(|slot| match slot.and_then(|i| record.attrs.get(i)) {
            Some(v) => trace::attr_value(v),
            None => wit::AttributeValue::NotSeen,
        })
        .collect();
    let mut instance = match b.instance.take() {
        Some(i) => i,
        None => b
            .plugin
            .instantiate()
            .map_err(|e| CallFailure::Instantiate(e.to_string()))?,
    };
    let answer = instance.route(facts, &record.loads, attributes)?;
    b.instance = Some(instance);
    let choice = crate::plugin::check(answer, record.loads.len() / crate::plugin::LOAD_WORDS)?;
    Ok(Decided::of(&choice))
}

fn ip(text: &str) -> wit::IpAddress {
    match text.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => wit::IpAddress::V4(u32::from(v4)),
        Ok(std::net::IpAddr::V6(v6)) => {
            let bits = u128::from(v6);
            wit::IpAddress::V6(((bits >> 64) as u64, bits as u64))
        }
        Err(_) => wit::IpAddress::V4(0),
    }
}

// === impl Report ===

impl Report {
    fn count(
        &mut self,
        h: &Header,
        record: &Record,
        before: Option<&Decided>,
        after: Result<Decided, CallFailure>,
        line: u64,
    ) {
        self.decisions += 1;
        let name = |d: Option<&Decided>| match d {
            Some(Decided::Forward(ids)) => ids
                .first()
                .and_then(|&id| h.backends.get(id as usize))
                .map_or("?".to_string(), |b| b.name.clone()),
            Some(Decided::Reject(_)) => "reject".to_string(),
            None => "failed".to_string(),
        };
        *self.traffic_before.entry(name(before)).or_default() += 1;
        let unusable = |d: Option<&Decided>| {
            d.and_then(Decided::primary).is_some_and(|id| {
                let at = id as usize * crate::plugin::LOAD_WORDS;
                let word = |w: wit::LoadWord| record.loads.get(at + w as usize).copied();
                word(wit::LoadWord::Health) == Some(wit::Health::Unhealthy as u32)
                    || word(wit::LoadWord::Breaker) == Some(wit::BreakerState::Open as u32)
            })
        };
        self.to_unusable_before += u64::from(unusable(before));
        let tokens = (
            record.outcome.prompt_tokens as f64,
            record.outcome.completion_tokens as f64,
        );
        let cost = |d: Option<&Decided>| {
            let Some(b) = d
                .and_then(Decided::primary)
                .and_then(|id| h.backends.get(id as usize))
            else {
                return 0.0;
            };
            let price = |k: &str| {
                b.labels
                    .get(k)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (tokens.0 * price("input_price") + tokens.1 * price("output_price")) / 1e6
        };
        self.cost_before_usd += cost(before);
        match after {
            Ok(after) => {
                *self.traffic_after.entry(name(Some(&after))).or_default() += 1;
                self.to_unusable_after += u64::from(unusable(Some(&after)));
                self.cost_after_usd += cost(Some(&after));
                if let Some(before) = before {
                    self.changed_candidates += u64::from(*before != after);
                    self.changed_primary += u64::from(!before.same_primary(&after));
                }
            }
            Err(failure) => {
                self.failures += 1;
                self.changed_primary += 1;
                self.changed_candidates += 1;
                *self.traffic_after.entry("failed".into()).or_default() += 1;
                *self
                    .failures_by_kind
                    .entry(failure.kind().into())
                    .or_default() += 1;
                if self.first_failures.len() < SHOWN_FAILURES {
                    self.first_failures.push(FailedInput {
                        line,
                        kind: failure.kind().into(),
                        message: failure.to_string().chars().take(300).collect(),
                        method: record.method.clone(),
                        client_ip: record.client_ip.clone(),
                        attributes: h
                            .attributes
                            .iter()
                            .cloned()
                            .zip(record.attrs.iter().cloned())
                            .collect(),
                    });
                }
            }
        }
    }
}

mod report;
