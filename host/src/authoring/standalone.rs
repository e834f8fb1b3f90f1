//! Plugins kept in a team's own repository: `plugin new` outside the
//! Switchyard workspace writes a standalone crate that depends on the SDK
//! by path or git, and `plugin build` compiles any plugin crate for
//! `wasm32-wasip2` and checks the component against the interface
//! versions this host speaks.

use super::PluginKind;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a standalone crate gets the SDK from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    Path(PathBuf),
    Git(String),
}

impl SdkSource {
    /// `--sdk` as given (a git URL or a path), else the SDK of the checkout
    /// this binary was built from, when it is still there.
    pub fn resolve(given: Option<&str>) -> anyhow::Result<SdkSource> {
        match given {
            Some(url)
                if url.starts_with("https://")
                    || url.starts_with("ssh://")
                    || url.starts_with("git@")
                    || url.starts_with("git+") =>
            {
                Ok(SdkSource::Git(url.trim_start_matches("git+").to_string()))
            }
            Some(path) => Ok(SdkSource::Path(
                std::fs::canonicalize(path).map_err(|e| anyhow::anyhow!("--sdk {path}: {e}"))?,
            )),
            None => {
                let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
                match std::fs::canonicalize(&built) {
                    Ok(p) if p.join("Cargo.toml").exists() => Ok(SdkSource::Path(p)),
                    _ => anyhow::bail!(
                        "cannot find the Switchyard SDK; pass --sdk with its path (plugins/sdk of a Switchyard checkout) or a git URL"
                    ),
                }
            }
        }
    }

    fn dependency(&self) -> String {
        match self {
            SdkSource::Path(p) => format!("{{ path = {:?} }}", p.display().to_string()),
            SdkSource::Git(url) => format!("{{ git = {url:?} }}"),
        }
    }
}

/// Writes a standalone plugin crate `dir` (named after its last part): its
/// manifest (its own workspace root, the SDK as `sdk`), the template of
/// `kind` with its tests, a README and a `.gitignore`.
pub fn scaffold(dir: &Path, kind: PluginKind, sdk: &SdkSource) -> anyhow::Result<PathBuf> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    super::check_name(&name)?;
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let (what, lib) = match kind {
        PluginKind::Router => ("router", super::LIB_RS),
        PluginKind::Health => ("health-check", super::HEALTH_RS),
        PluginKind::Breaker => ("circuit-breaker", super::BREAKER_RS),
    };
    std::fs::create_dir_all(dir.join("src"))?;
    let manifest = MANIFEST
        .replace("NAME", &name)
        .replace("KIND", what)
        .replace("SDK", &sdk.dependency());
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(
        dir.join("src/lib.rs"),
        lib.replace("TypeName", &super::type_name(&name)),
    )?;
    std::fs::write(
        dir.join("README.md"),
        README.replace("NAME", &name).replace("KIND", what),
    )?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    Ok(dir.to_path_buf())
}

/// What `plugin build` made.
pub struct Built {
    pub file: PathBuf,
    pub interface: &'static str,
    pub version: String,
}

/// Builds the plugin crate at `dir` for `wasm32-wasip2` (release), checks
/// the component exports a policy interface at a version this host loads,
/// and copies it to `out` when given.
pub fn build(dir: &Path, out: Option<&Path>) -> anyhow::Result<Built> {
    let manifest = dir.join("Cargo.toml");
    anyhow::ensure!(
        manifest.exists(),
        "{} not found: pass the directory of a plugin crate",
        manifest.display()
    );
    ensure_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run cargo: {e}"))?;
    anyhow::ensure!(
        output.status.success(),
        "cargo build failed for {}",
        manifest.display()
    );
    let wasm = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"));
    let Some(wasm) = wasm else {
        anyhow::bail!(
            "{}: no .wasm was built; a plugin crate has `crate-type = [\"cdylib\", ...]` under [lib]",
            manifest.display()
        );
    };
    let runtime = switchyard::plugin::PluginRuntime::new(None)?;
    let mut problems = Vec::new();
    for interface in ["router", "health-check", "circuit-breaker"] {
        match runtime.load(&wasm, interface) {
            Ok((_, version)) => {
                let file = match out {
                    Some(out) => {
                        std::fs::create_dir_all(out)?;
                        let to = out.join(wasm.file_name().unwrap_or_default());
                        std::fs::copy(&wasm, &to)?;
                        to
                    }
                    None => wasm,
                };
                return Ok(Built {
                    file,
                    interface,
                    version: version.to_string(),
                });
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    anyhow::bail!(
        "{} is not a plugin this host loads: {}",
        wasm.display(),
        problems.join("; ")
    )
}

/// Adds the `wasm32-wasip2` target through rustup when it is missing.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "wasm32-wasip2")
        });
    if let Ok(false) = installed {
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status();
    }
}

const MANIFEST: &str = r#"[package]
name = "NAME"
description = "A Switchyard KIND plugin."
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
switchyard-sdk = SDK

[profile.release]
panic = "abort"

# Its own workspace root; remove this table to add the crate to yours.
[workspace]
"#;

const README: &str = r#"# NAME

A Switchyard KIND plugin.

```sh
cargo test                          # the policy's unit tests, natively
switchyard plugin build .           # builds the .wasm and checks its interface
switchyard plugin build . --out /etc/switchyard/plugins   # and installs it
```

A running proxy hot-reloads the plugin when the file in its plugin
directory changes. Before a router goes live, replay it on a recorded
trace (`switchyard replay`), run it as a shadow, then as a canary: see
"Shipping a router" in the Switchyard router guide.
"#;
