//! Tools for plugin authors: a scaffold for a new router crate, and a trial
//! run of a compiled router against synthetic backends.

mod trial;

pub use trial::{TrialOptions, trial};

use std::path::{Path, PathBuf};

/// Creates `plugins/NAME` in the workspace at `root`: a router crate that
/// builds to Wasm and passes its own test, registered as a workspace member.
pub fn scaffold(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    anyhow::ensure!(
        valid,
        "plugin name {name:?}: use lowercase letters, digits and `-`, starting with a letter"
    );
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

    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), CARGO_TOML.replace("NAME", name))?;
    std::fs::write(
        dir.join("src/lib.rs"),
        LIB_RS.replace("TypeName", &type_name),
    )?;
    std::fs::write(dir.join("README.md"), README_MD.replace("NAME", name))?;
    std::fs::write(&manifest, updated)?;
    Ok(dir)
}

const CARGO_TOML: &str = r#"[package]
name = "NAME"
description = "A Switchyard router plugin."
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
        Decision::Forward {
            candidates: Candidates::lowest_by_key(usable, 4, |b| (b.in_flight, b.ewma_latency_us)),
            add_headers: Vec::new(),
        }
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
