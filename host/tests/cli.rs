//! The `switchyard` binary: `check` on good and bad configs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn plugin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        dir.join("priority-router.wasm").exists(),
        "compiled plugins not found in {}; run ./scripts/build-plugins.sh",
        dir.display()
    );
    dir
}

/// Writes `body` as a config in a fresh directory and runs `switchyard check`.
fn check(body: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\n{body}",
        plugin_dir().display(),
        dir.path().join("cache").display()
    );
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run switchyard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const POOL: &str = "[pools.models]\nbackends = [\n  { name = \"fast\", address = \"127.0.0.1:9001\", labels = { tier = \"fast\" } },\n]\n";

#[test]
fn good_config_passes_and_loads_its_plugins() {
    let (ok, out) = check(&format!(
        "{POOL}\n[[routes]]\nname = \"research\"\npool = \"models\"\nrouter = {{ plugin = \"priority-router.wasm\" }}\n"
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("ok (1 routes, 1 pools, 1 plugins loaded)"),
        "{out}"
    );
}

#[test]
fn unknown_pool_fails_naming_file_and_line() {
    let (ok, out) = check(&format!(
        "{POOL}\n[[routes]]\nname = \"research\"\npool = \"modles\"\n"
    ));
    assert!(!ok, "{out}");
    // Lines: 3 of [plugins], a blank, 4 of the pool, a blank, then the route.
    assert!(
        out.contains(
            "switchyard.toml:12: route `research` names pool `modles`, which is not defined"
        ),
        "{out}"
    );
}

#[test]
fn syntax_error_fails_naming_the_line() {
    let (ok, out) = check("[server\nlisten = 1\n");
    assert!(!ok, "{out}");
    assert!(out.contains("switchyard.toml:5:"), "{out}");
}

#[test]
fn missing_or_mismatched_plugin_fails_naming_it() {
    let (ok, out) = check(&format!(
        "{POOL}\n[[routes]]\nname = \"r\"\npool = \"models\"\nrouter = {{ plugin = \"no-such.wasm\" }}\n"
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("route `r`") && out.contains("no-such.wasm: cannot read"),
        "{out}"
    );
    let (ok, out) = check(&format!(
        "{POOL}\n[[routes]]\nname = \"r\"\npool = \"models\"\nrouter = {{ plugin = \"fixture-future-version.wasm\" }}\n"
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("switchyard:policy@9.0.0") && out.contains("switchyard:policy@0.1.0"),
        "{out}"
    );
}

#[test]
fn shipped_example_config_checks() {
    plugin_dir();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/switchyard.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .expect("run switchyard");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (3 routes, 2 pools, 2 plugins loaded)"),
        "{stdout}"
    );
}

#[test]
fn status_shows_routes_and_plugin_versions_of_a_running_proxy() {
    let backend = switchyard::demo::MockBackend::start(switchyard::demo::MockOptions::new("b"))
        .expect("mock backend");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\nwatch = false\n\n\
         [pools.p]\nbackends = [{{ name = \"b\", address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"graph-a\"\npool = \"p\"\nrouter = {{ plugin = \"round-robin.wasm\" }}\n",
        plugin_dir().display(),
        dir.path().join("cache").display(),
        backend.addr
    );
    std::fs::write(&path, text).expect("write config");
    let config = switchyard::config::Config::load(&path).expect("config");
    let proxy = switchyard::Switchyard::start(&config).expect("proxy starts");
    let admin = proxy.admin_addr.expect("admin listener").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["status", "--admin", &admin])
        .output()
        .expect("run switchyard");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("graph-a"))
        .unwrap_or_else(|| panic!("no route line: {stdout}"));
    assert!(
        line.contains("round-robin.wasm") && line.contains("serving"),
        "{line}"
    );
    proxy.shutdown();
}
