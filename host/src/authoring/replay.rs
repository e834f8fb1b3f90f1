//! `switchyard replay`: its arguments, and the report printed and written
//! beside the trace.

use anyhow::Context;
use std::path::PathBuf;
use switchyard::rollout::replay::{ReplayOptions, replay as run};

/// The arguments of `switchyard replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The trace a route's `record` wrote.
    #[arg(long)]
    pub trace: PathBuf,
    /// The config that names the route (and the plugin directory).
    #[arg(long, short)]
    pub config: PathBuf,
    #[arg(long)]
    pub route: String,
    /// The candidate: a file in the plugin directory, or a path.
    #[arg(long)]
    pub plugin: String,
    /// Compare with this plugin run on the same inputs, instead of the
    /// recorded decisions.
    #[arg(long)]
    pub against: Option<String>,
    /// Where the JSON report goes; default: TRACE.replay.json.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where the SVG chart goes; default: TRACE.replay.svg.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Replays, prints the report, writes it as JSON and SVG, and fails when
/// the candidate failed on any recorded input.
pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let beside = |ext: &str| {
        let mut p = args.trace.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let json = args.json.clone().unwrap_or_else(|| beside(".replay.json"));
    let svg = args.svg.clone().unwrap_or_else(|| beside(".replay.svg"));
    let report = run(&ReplayOptions {
        trace: args.trace,
        config: args.config,
        route: args.route,
        plugin: args.plugin,
        against: args.against,
    })?;
    print!("{}", report.text());
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    std::fs::write(&svg, report.svg())
        .with_context(|| format!("cannot write {}", svg.display()))?;
    println!("  wrote {} and {}", json.display(), svg.display());
    anyhow::ensure!(
        report.failures == 0,
        "the candidate failed on {} of {} recorded inputs",
        report.failures,
        report.decisions
    );
    Ok(())
}
