//! Shipping a router from a team's own repository: `plugin new` outside
//! the Switchyard checkout, `plugin build`, `check`, and `replay` as a CI
//! gate that fails on a candidate that traps on a recorded input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn switchyard(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args)
        .current_dir(dir)
        // Reuse compiled dependencies across runs; a user's crate has its own.
        .env("CARGO_TARGET_DIR", repo().join("target/scaffold-test"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

fn config(dir: &Path, plugins: &Path, route: &str) -> PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(
        &path,
        format!(
            "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\n\
             [pools.p]\nbackends = [{{ name = \"a\", address = \"127.0.0.1:9\" }}, {{ name = \"b\", address = \"127.0.0.1:10\" }}]\n\
             [[routes]]\nname = \"r\"\npool = \"p\"\n{route}\n",
            plugins.display(),
            dir.join("cache").display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn a_router_scaffolded_outside_the_checkout_builds_tests_and_loads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (ok, said) = run(&mut switchyard(root, &["plugin", "new", "team-router"]));
    assert!(ok, "{said}");
    assert!(said.contains("standalone crate"), "{said}");
    let crate_dir = root.join("team-router");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("manifest");
    assert!(manifest.contains("[workspace]"), "its own workspace root");
    assert!(
        manifest.contains("switchyard-sdk = { path = "),
        "{manifest}"
    );
    // Offline with the checkout's lock: the same dependency versions.
    std::fs::copy(repo().join("Cargo.lock"), crate_dir.join("Cargo.lock")).expect("lock");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (ok, tested) = run(Command::new(cargo)
        .args(["test", "--offline"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", repo().join("target/scaffold-test"))
        .env_remove("RUSTFLAGS"));
    assert!(
        ok && tested.contains("test result: ok. 2 passed"),
        "{tested}"
    );

    let plugins = root.join("plugins");
    let (ok, built) = run(&mut switchyard(
        root,
        &["plugin", "build", "team-router", "--out", "plugins"],
    ));
    assert!(ok, "{built}");
    assert!(
        built.contains("team_router.wasm (router plugin, interface switchyard:policy@0.3.0)"),
        "{built}"
    );
    assert!(plugins.join("team_router.wasm").exists());
    let path = config(root, &plugins, "router = { plugin = \"team_router.wasm\" }");
    let (ok, checked) = run(switchyard(root, &["check", "--config"]).arg(&path));
    assert!(ok && checked.contains("1 plugins loaded"), "{checked}");

    // A second scaffold does not overwrite; a directory that is no plugin
    // crate is refused with what is missing.
    let (again, text) = run(&mut switchyard(root, &["plugin", "new", "team-router"]));
    assert!(!again && text.contains("already exists"), "{text}");
    let (ok, text) = run(&mut switchyard(root, &["plugin", "build", "plugins"]));
    assert!(!ok && text.contains("Cargo.toml not found"), "{text}");
}

/// A trace written by hand in the documented format, version 1.
fn trace(lines: &[&str]) -> String {
    let words: Vec<String> = [
        "id",
        "in-flight",
        "ewma-latency-us",
        "ewma-ttfb-us",
        "error-rate",
        "health",
        "breaker",
        "load-score",
        "remaining-requests-low",
        "remaining-requests-high",
        "remaining-tokens-low",
        "remaining-tokens-high",
        "quota-reset-ms",
    ]
    .iter()
    .map(|w| format!("\"{w}\""))
    .collect();
    let mut text = format!(
        "{{\"switchyard_trace\":1,\"route\":\"r\",\"router\":\"fixture-pick.wasm\",\"router_version\":null,\
         \"attributes\":[\"header:x-trap\"],\"load_words\":[{}],\
         \"backends\":[{{\"id\":0,\"name\":\"a\",\"address\":\"127.0.0.1:9\",\"weight\":1,\"labels\":{{}}}},\
         {{\"id\":1,\"name\":\"b\",\"address\":\"127.0.0.1:10\",\"weight\":1,\"labels\":{{}}}}]}}\n",
        words.join(",")
    );
    for attr in lines {
        let loads = "0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0";
        text += &format!(
            "{{\"t\":1,\"method\":\"post\",\"client_ip\":\"10.0.0.7\",\"attrs\":[{attr}],\"loads\":[{loads}],\
             \"decision\":{{\"forward\":[0]}},\"outcome\":{{\"backend\":\"a\",\"status\":200,\"latency_us\":900,\
             \"ttfb_us\":500,\"prompt_tokens\":10,\"completion_tokens\":5,\"error\":null}}}}\n"
        );
    }
    text
}

#[test]
fn replay_fails_a_candidate_that_traps_on_a_recorded_input_and_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let plugins = repo().join("target/plugins");
    let path = config(
        root,
        &plugins,
        "router = { plugin = \"fixture-pick.wasm\" }",
    );
    let file = root.join("trace.jsonl");
    std::fs::write(&file, trace(&["null", "null", "\"1\"", "null"])).expect("write trace");
    let replay = |plugin: &str| {
        run(&mut switchyard(
            root,
            &[
                "replay",
                "--trace",
                &file.to_string_lossy(),
                "--config",
                &path.to_string_lossy(),
                "--route",
                "r",
                "--plugin",
                plugin,
            ],
        ))
    };
    let (ok, text) = replay("fixture-pick.wasm");
    assert!(ok, "{text}");
    assert!(text.contains("4 decisions replayed"), "{text}");
    assert!(text.contains("first backend changed: 0 (0.00 %)"), "{text}");
    let (ok, text) = replay("fixture-trap.wasm");
    assert!(!ok, "a trapping candidate must fail the gate: {text}");
    assert!(text.contains("line 4: trap"), "{text}");
    assert!(text.contains("{\"header:x-trap\":\"1\"}"), "{text}");
    assert!(text.contains("failed on 1 of 4 recorded inputs"), "{text}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("trace.jsonl.replay.json")).expect("json report"),
    )
    .expect("the report is JSON");
    assert_eq!(report["failures"], 1);
    assert_eq!(report["first_failures"][0]["line"], 4);
    let svg = std::fs::read_to_string(root.join("trace.jsonl.replay.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("1 candidate failures"));

    // A trace of a newer format is refused, naming the line.
    std::fs::write(
        &file,
        trace(&[]).replace("\"switchyard_trace\":1", "\"switchyard_trace\":9"),
    )
    .expect("write trace");
    let (ok, text) = replay("fixture-pick.wasm");
    assert!(!ok && text.contains("line 1: trace format 9"), "{text}");
}
