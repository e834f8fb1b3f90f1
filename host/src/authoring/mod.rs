//! Tools for plugin authors: a scaffold for a new router, health-check or
//! circuit-breaker crate, and a trial run of a compiled router against
//! synthetic backends.

mod command;
mod replay;
mod standalone;
mod trial;

pub use command::{PluginCommand, plugin};
pub use replay::{ReplayArgs, replay};
pub use standalone::{SdkSource, build, scaffold as scaffold_standalone};
pub use trial::{TrialOptions, trial};

use std::path::{Path, PathBuf};

/// What a scaffolded plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PluginKind {
    /// Picks the backends for each request of a route.
    #[default]
    Router,
    /// Judges a pool's active probes.
    Health,
    /// Opens and closes a pool's backends from request outcomes.
    Breaker,
}

/// Creates `plugins/NAME` in the workspace at `root`: a crate of `kind`
/// that builds to Wasm and passes its own tests, registered as a workspace
/// member.
pub fn scaffold(root: &Path, name: &str, kind: PluginKind) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let manifest = root.join("Cargo.toml");
    let workspace = std::fs::read_to_string(&manifest).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; run this from the Switchyard repository root or pass --root",
            manifest.display()
        )
    })?;
    anyhow::ensure!(
        workspace.contains("switchyard-sdk"),
        "{} does not declare `switchyard-sdk` in [workspace.dependencies]; run this from the Switchyard repository root",
        manifest.display()
    );
    let dir = root.join("plugins").join(name);
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let member = format!("\"plugins/{name}\"");
    let Some(start) = workspace.find("members = [") else {
        anyhow::bail!(
            "{}: no `members = [` list to add the plugin to",
            manifest.display()
        );
    };
    let insert_at = start + "members = [".len();
    let updated = format!(
        "{}\n    {member},{}",
        &workspace[..insert_at],
        &workspace[insert_at..]
    );

    let type_name = type_name(name);
    let (what, lib, readme) = match kind {
        PluginKind::Router => ("router", LIB_RS, README_MD),
        PluginKind::Health => ("health-check", HEALTH_RS, HEALTH_README),
        PluginKind::Breaker => ("circuit-breaker", BREAKER_RS, BREAKER_README),
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        CARGO_TOML.replace("NAME", name).replace("KIND", what),
    )?;
    std::fs::write(dir.join("src/lib.rs"), lib.replace("TypeName", &type_name))?;
    std::fs::write(dir.join("README.md"), readme.replace("NAME", name))?;
    std::fs::write(&manifest, updated)?;
    Ok(dir)
}

/// Whether a Switchyard workspace (one that declares the SDK) is at `root`.
pub fn is_workspace(root: &Path) -> bool {
    std::fs::read_to_string(root.join("Cargo.toml"))
        .is_ok_and(|m| m.contains("[workspace") && m.contains("switchyard-sdk"))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    anyhow::ensure!(
        valid,
        "plugin name {name:?}: use lowercase letters, digits and `-`, starting with a letter"
    );
    Ok(())
}

/// `my-router` as a type name: `MyRouter`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

const CARGO_TOML: &str = r#"[package]
name = "NAME"
description = "A Switchyard KIND plugin."
version = "0.1.0"
edition.workspace = true
license.workspace = true
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
switchyard-sdk.workspace = true

[lints]
workspace = true
"#;

const LIB_RS: &str = r#"//! A router: the least loaded usable backend first, three more as fallbacks.
//! Requests marked `x-pin: first` go to backend 0 when it is usable.
//! Change `route` to your policy; `cargo test` runs the tests below.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

pub struct TypeName;

impl Router for TypeName {
    fn init(_route: &str, _config: &Config) -> Result<Self, String> {
        Ok(TypeName)
    }

    /// Request attributes `route` reads, by index.
    fn interest(&self) -> Vec<Attribute> {
        vec![Attribute::Header("x-pin".into())]
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        if request.attribute(0).as_deref() == Some("first")
            && backends.first().is_some_and(|b| b.is_usable())
        {
            return Decision::forward([0]);
        }
        let usable = backends.iter().filter(|b| b.is_usable());
        Decision::forward_to(Candidates::lowest_by_key(usable, 4, |b| {
            (b.in_flight, b.ewma_latency_us)
        }))
    }
}

export_router!(TypeName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_first() {
        let mut router = TypeName::init("test", &Config::default()).unwrap();
        let mut loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        loads[0].in_flight = 2;
        loads[1].set_health(Health::Unhealthy);
        let decision = router.route(&Request::new(&[None]), &loads);
        assert_eq!(decision.candidates().unwrap(), [2, 0]);
    }

    #[test]
    fn pinned_requests_go_to_the_first_backend() {
        let mut router = TypeName::init("test", &Config::default()).unwrap();
        let mut loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        loads[0].in_flight = 9;
        let decision = router.route(&Request::new(&[Some("first")]), &loads);
        assert_eq!(decision.candidates().unwrap(), [0]);
    }
}
"#;

const README_MD: &str = r#"# NAME

A Switchyard router plugin.

```sh
cargo test -p NAME                      # unit tests, natively
./scripts/build-plugins.sh              # builds target/plugins/NAME.wasm
switchyard plugin test target/plugins/NAME.wasm --backends 4 --header x-pin=first
```

```toml
[[routes]]
name = "my-graph"
pool = "models"
router = { plugin = "NAME.wasm" }
```
"#;

const HEALTH_RS: &str = r#"//! A health check: a probe answered 2xx is healthy, one slower than
//! `slow_ms` (default 500) marks the backend degraded so routers prefer
//! others, anything else takes it out. Change `check` to your policy;
//! `cargo test` runs the tests below.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

pub struct TypeName {
    slow_us: u32,
}

impl HealthCheck for TypeName {
    fn init(_pool: &str, config: &Config) -> Result<Self, String> {
        let slow_ms: u32 = config.parse("slow_ms")?.unwrap_or(500);
        Ok(TypeName {
            slow_us: slow_ms.saturating_mul(1000),
        })
    }

    fn check(&mut self, probe: &ProbeResult) -> Verdict {
        if !(200..300).contains(&probe.status) {
            return Verdict::new(Health::Unhealthy, 1000);
        }
        if probe.latency_us > self.slow_us {
            return Verdict::new(Health::Degraded, 500);
        }
        Verdict::new(Health::Healthy, 0)
    }
}

export_health_check!(TypeName);

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(status: u16, latency_us: u32) -> ProbeResult {
        ProbeResult {
            backend: 0,
            status,
            latency_us,
            body: None,
        }
    }

    #[test]
    fn slow_is_degraded_and_errors_take_it_out() {
        let mut check = TypeName::init("test", &Config::from_pairs(&[("slow_ms", "100")])).unwrap();
        assert_eq!(check.check(&probe(200, 5_000)).health, Health::Healthy);
        assert_eq!(check.check(&probe(200, 200_000)).health, Health::Degraded);
        assert_eq!(check.check(&probe(503, 5_000)).health, Health::Unhealthy);
        assert_eq!(check.check(&probe(0, 0)).health, Health::Unhealthy);
    }
}
"#;

const BREAKER_RS: &str = r#"//! A circuit breaker: `failures` (default 5) failed requests in a row open
//! a backend for `cool_down` (default 10s); then one trial request decides,
//! closing it or opening it again. Change `record` to your policy;
//! `cargo test` runs the tests below.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::policy::is_failure;
use switchyard_sdk::prelude::*;

pub struct TypeName {
    limit: u32,
    cool_down_ms: u32,
    /// Per backend: failures in a row, and whether a trial is out.
    backends: Vec<(u32, bool)>,
}

impl CircuitBreaker for TypeName {
    fn init(_pool: &str, config: &Config) -> Result<Self, String> {
        let limit = config.parse("failures")?.unwrap_or(5);
        let cool_down_ms = config.millis("cool_down")?.unwrap_or(10_000);
        if limit == 0 || cool_down_ms == 0 {
            return Err("failures and cool_down must be above zero".into());
        }
        Ok(TypeName {
            limit,
            cool_down_ms: cool_down_ms.min(u64::from(u32::MAX)) as u32,
            backends: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.backends = vec![(0, false); backends.len()];
    }

    fn record(&mut self, outcome: &Outcome) -> Option<BreakerUpdate> {
        let (in_a_row, trial) = self.backends.get_mut(outcome.backend as usize)?;
        let failed = is_failure(outcome);
        if core::mem::take(trial) {
            *in_a_row = u32::from(failed);
            return Some(if failed {
                BreakerUpdate::Open(self.cool_down_ms)
            } else {
                BreakerUpdate::Closed
            });
        }
        if !failed {
            *in_a_row = 0;
            return None;
        }
        *in_a_row += 1;
        (*in_a_row == self.limit).then_some(BreakerUpdate::Open(self.cool_down_ms))
    }

    fn cool_down_ended(&mut self, backend: u32) -> BreakerUpdate {
        if let Some((_, trial)) = self.backends.get_mut(backend as usize) {
            *trial = true;
        }
        BreakerUpdate::HalfOpen(1)
    }
}

export_breaker!(TypeName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_a_trial_decides() {
        let config = Config::from_pairs(&[("failures", "3"), ("cool_down", "2s")]);
        let mut breaker = TypeName::init("test", &config).unwrap();
        breaker.set_backends(&[BackendInfo::new(0, "a", &[])]);
        let (ok, failed) = (Outcome::with_status(0, 200), Outcome::with_status(0, 503));
        assert_eq!(breaker.record(&failed), None);
        assert_eq!(breaker.record(&ok), None, "a success resets the count");
        assert_eq!(breaker.record(&failed), None);
        assert_eq!(breaker.record(&failed), None);
        assert_eq!(breaker.record(&failed), Some(BreakerUpdate::Open(2000)));
        assert_eq!(breaker.cool_down_ended(0), BreakerUpdate::HalfOpen(1));
        assert_eq!(breaker.record(&failed), Some(BreakerUpdate::Open(2000)));
        assert_eq!(breaker.cool_down_ended(0), BreakerUpdate::HalfOpen(1));
        assert_eq!(breaker.record(&ok), Some(BreakerUpdate::Closed));
    }
}
"#;

const HEALTH_README: &str = r#"# NAME

A Switchyard health-check plugin, bound to a pool.

```sh
cargo test -p NAME                      # unit tests, natively
./scripts/build-plugins.sh              # builds target/plugins/NAME.wasm
```

```toml
[pools.models]
backends = [ ... ]
health = { path = "/health", interval = "2s", plugin = "NAME.wasm", config = { slow_ms = 500 } }
```
"#;

const BREAKER_README: &str = r#"# NAME

A Switchyard circuit-breaker plugin, bound to a pool. A pool may list
several breakers; the most restrictive wins.

```sh
cargo test -p NAME                      # unit tests, natively
./scripts/build-plugins.sh              # builds target/plugins/NAME.wasm
```

```toml
[pools.models]
backends = [ ... ]
breaker = { plugin = "NAME.wasm", config = { failures = 5, cool_down = "10s" } }
```
"#;
