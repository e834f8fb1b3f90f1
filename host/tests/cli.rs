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

/// Runs `cmd`; returns whether it succeeded and its stdout then stderr.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `switchyard ARGS`.
fn switchyard(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args);
    cmd
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
    run(switchyard(&["check", "--config"]).arg(&path))
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
        out.contains("switchyard.toml:13: route `r`") && out.contains("no-such.wasm: cannot read"),
        "a missing plugin is reported at its line: {out}"
    );
    let (ok, out) = check(&format!(
        "{POOL}\n[[routes]]\nname = \"r\"\npool = \"models\"\nrouter = {{ plugin = \"fixture-future-version.wasm\" }}\n"
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("switchyard:policy@9.0.0") && out.contains("switchyard:policy 0.1.0–0.3.0"),
        "{out}"
    );
}

#[test]
fn shipped_example_config_checks() {
    plugin_dir();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/switchyard.toml");
    let (ok, stdout) = run(switchyard(&["check", "--config"]).arg(&example));
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("ok (3 routes, 3 pools, 4 plugins loaded)"),
        "{stdout}"
    );
}

#[test]
fn the_providers_example_checks_with_keys_in_the_environment_and_names_a_missing_one() {
    plugin_dir();
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/providers/switchyard.toml");
    let keys = [
        ("OPENAI_API_KEY", "sk-example-openai"),
        ("AZURE_OPENAI_API_KEY", "example-azure"),
        ("ANTHROPIC_API_KEY", "sk-ant-example"),
    ];
    let (ok, stdout) = run(switchyard(&["check", "--config"]).arg(&example).envs(keys));
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("ok (4 routes, 4 pools, 3 plugins loaded)"),
        "{stdout}"
    );
    for (_, key) in keys {
        assert!(!stdout.contains(key), "a key was printed: {stdout}");
    }
    let (ok, stdout) = run(switchyard(&["check", "--config"])
        .arg(&example)
        .envs(keys[..2].iter().copied())
        .env_remove("ANTHROPIC_API_KEY"));
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("pool `anthropic`: backend `anthropic`: header \"x-api-key\": environment variable ANTHROPIC_API_KEY is not set"),
        "{stdout}"
    );
    let digest = run(switchyard(&["key-digest"]).stdin(std::process::Stdio::piped()));
    assert!(
        !digest.0,
        "no key on standard input is an error: {}",
        digest.1
    );
}

#[test]
fn check_loads_the_listener_certificate_and_names_a_bad_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").expect("write");
    std::fs::write(dir.path().join("key.pem"), "not a key\n").expect("write");
    let (ok, out) = check(&format!(
        "[server]\ntls = {{ cert = \"{0}/cert.pem\", key = \"{0}/key.pem\" }}\n\n{POOL}\n[[routes]]\nname = \"r\"\npool = \"models\"\n",
        dir.path().display()
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("server.tls")
            && out.contains("cert.pem")
            && out.contains("holds no certificate"),
        "{out}"
    );
}

#[test]
fn status_shows_routes_and_plugin_versions_of_a_running_proxy() {
    let backend = switchyard_testkit::MockBackend::start(switchyard_testkit::MockOptions::new("b"))
        .expect("mock backend");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n\n\
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
    let (ok, refused) = run(&mut switchyard(&["status", "--admin", &admin]));
    assert!(
        !ok && refused.contains("SWITCHYARD_ADMIN_TOKEN"),
        "{refused}"
    );
    let (ok, stdout) = run(&mut switchyard(&[
        "status", "--admin", &admin, "--token", "t0ken",
    ]));
    assert!(ok, "{stdout}");
    let backend_line = stdout
        .lines()
        .find(|l| l.starts_with("p ") && l.contains(" b "))
        .unwrap_or_else(|| panic!("no backend line: {stdout}"));
    assert!(
        backend_line.contains("healthy") && backend_line.contains("closed"),
        "{backend_line}"
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

#[test]
fn plugin_test_prints_decisions_of_a_compiled_router() {
    let file = plugin_dir().join("priority-router.wasm");
    let (ok, stdout) = run(switchyard(&["plugin", "test"]).arg(&file).args([
        "--backends",
        "4",
        "--label",
        "tier=fast,cheap",
        "--header",
        "x-priority=high",
        "--requests",
        "2",
        "--idle",
    ]));
    assert!(ok, "{stdout}");
    assert!(stdout.contains("interest: [header x-priority]"), "{stdout}");
    // Idle backends: both fast ones first, then the cheap ones.
    let first = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1:"))
        .unwrap_or_default();
    let order: Vec<&str> = first
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split("->")
        .map(str::trim)
        .collect();
    assert_eq!(order.len(), 4, "{stdout}");
    assert!(
        order[..2].iter().all(|b| *b == "b0" || *b == "b2"),
        "{stdout}"
    );
}

/// `plugin new` in a copy of the workspace: the new crates (a router, a
/// health check, a breaker) pass their own tests and build to Wasm, the
/// router routes as its template says, and the others load as what they are.
#[test]
fn plugin_new_scaffolds_plugins_that_build_and_pass_their_tests() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml")).expect("workspace manifest");
    let start = manifest.find("members = [").expect("members");
    let end = start + manifest[start..].find(']').expect("end of members");
    let minimal = format!(
        "{}members = [\n    \"plugins/sdk\",\n{}",
        &manifest[..start],
        &manifest[end..]
    );
    std::fs::write(root.join("Cargo.toml"), minimal).expect("write manifest");
    std::fs::copy(repo.join("Cargo.lock"), root.join("Cargo.lock")).expect("copy lock");
    std::fs::copy(repo.join("clippy.toml"), root.join("clippy.toml")).expect("copy clippy.toml");
    copy_dir(&repo.join("plugins/sdk"), &root.join("plugins/sdk"));
    copy_dir(&repo.join("wit"), &root.join("wit"));

    let succeed = |args: &[&str]| {
        let (ok, text) = run(&mut switchyard(args));
        assert!(ok, "switchyard {args:?}: {text}");
        text
    };
    let root_arg = root.to_string_lossy().into_owned();
    let said = succeed(&["plugin", "new", "demo-router", "--root", &root_arg]);
    assert!(said.contains("cargo test -p demo-router"), "{said}");
    let (again, _) = run(&mut switchyard(&[
        "plugin",
        "new",
        "demo-router",
        "--root",
        &root_arg,
    ]));
    assert!(!again, "a second scaffold must not overwrite the first");
    succeed(&[
        "plugin",
        "new",
        "demo-health",
        "--kind",
        "health",
        "--root",
        &root_arg,
    ]);
    succeed(&[
        "plugin",
        "new",
        "demo-breaker",
        "--kind",
        "breaker",
        "--root",
        &root_arg,
    ]);

    // A target directory of its own, reused across runs.
    let target = repo.join("target/scaffold-test");
    let cargo = |args: &[&str]| {
        let (ok, text) = run(Command::new(env!("CARGO"))
            .args(args)
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"));
        assert!(ok, "cargo {args:?}: {text}");
        text
    };
    let tested = cargo(&["test", "--offline", "-p", "demo-router"]);
    assert!(tested.contains("test result: ok. 2 passed"), "{tested}");
    for kind in ["demo-health", "demo-breaker"] {
        let tested = cargo(&["test", "--offline", "-p", kind]);
        assert!(tested.contains("test result: ok. 1 passed"), "{tested}");
    }
    cargo(&[
        "build",
        "--offline",
        "--release",
        "--target",
        "wasm32-wasip2",
        "-p",
        "demo-router",
        "-p",
        "demo-health",
        "-p",
        "demo-breaker",
    ]);
    // The health check and the breaker load as what they are.
    let pool = |kind: &str, file: &str| {
        let wasm = target.join("wasm32-wasip2/release").join(file);
        let plugins = root.join("plugins-out");
        std::fs::create_dir_all(&plugins).expect("plugin dir");
        std::fs::copy(&wasm, plugins.join(file)).expect("copy plugin");
        let config = root.join(format!("{kind}.toml"));
        std::fs::write(
            &config,
            format!(
                "[plugins]\ndir = \"{}\"\n\n[pools.p]\nbackends = [{{ name = \"a\", address = \"127.0.0.1:9\" }}]\n{kind}\n",
                plugins.display()
            ),
        )
        .expect("write config");
        succeed(&["check", "--config", &config.to_string_lossy()])
    };
    let checked = pool(
        "health = { plugin = \"demo_health.wasm\" }",
        "demo_health.wasm",
    );
    assert!(checked.contains("1 plugins loaded"), "{checked}");
    let checked = pool(
        "breaker = { plugin = \"demo_breaker.wasm\" }",
        "demo_breaker.wasm",
    );
    assert!(checked.contains("1 plugins loaded"), "{checked}");
    let wasm = target.join("wasm32-wasip2/release/demo_router.wasm");
    let decisions = succeed(&[
        "plugin",
        "test",
        &wasm.to_string_lossy(),
        "--backends",
        "3",
        "--header",
        "x-pin=first",
        "--requests",
        "1",
    ]);
    assert!(decisions.contains("1: b0"), "{decisions}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy file");
        }
    }
}

/// The config in `deploy/k8s/switchyard.yaml` passes `check`, with the
/// bundled plugins where the image puts them.
#[test]
fn the_kubernetes_config_passes_check() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/switchyard.yaml"),
    )
    .expect("read the manifest");
    let start = manifest
        .find("  switchyard.toml: |\n")
        .expect("the ConfigMap holds switchyard.toml")
        + "  switchyard.toml: |\n".len();
    let end = start
        + manifest[start..]
            .find("\n---")
            .expect("end of the ConfigMap");
    let config: String = manifest[start..end]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config
        .replace(
            "/var/lib/switchyard/plugins",
            &plugin_dir().display().to_string(),
        )
        .replace(
            "/var/cache/switchyard",
            &dir.path().join("cache").display().to_string(),
        );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).expect("write config");
    let (ok, out) = run(switchyard(&["check", "--config"])
        .arg(&path)
        .env("SWITCHYARD_ADMIN_TOKEN", "test-token"));
    assert!(ok, "{out}");
    assert!(out.contains("1 routes, 1 pools, 3 plugins loaded"), "{out}");
}
