//! Plugins that must be refused at load, with messages naming the problem;
//! and the on-disk compile cache.

use switchyard_tests::*;

fn route_with(plugin: &str, backend: &MockBackend) -> String {
    format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\nrouter = {{ plugin = \"{plugin}\" }}\n",
        backend_entry(backend, "")
    )
}

#[test]
fn future_interface_version_is_refused_naming_both_versions() {
    let b = mock("b");
    let err = TestProxy::try_start(&route_with("fixture-future-version.wasm", &b))
        .err()
        .unwrap_or_else(|| panic!("a 9.0.0 plugin was accepted"));
    assert!(err.contains("fixture-future-version.wasm"), "{err}");
    assert!(err.contains("switchyard:policy@9.0.0"), "{err}");
    assert!(
        err.contains("this host speaks switchyard:policy 0.1.0–0.3.0"),
        "{err}"
    );
}

#[test]
fn garbage_and_core_modules_are_refused() {
    let b = mock("b");
    let proxy_dir = plugin_dir();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "garbage.wasm",
            b"this is not wasm at all, just some bytes\n",
            "not a valid WebAssembly component",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            "core WebAssembly module, not a component",
        ),
        ("missing.wasm", b"", "cannot read"),
    ];
    for (name, bytes, needle) in cases {
        // Write the bad file next to a copy of the good plugins.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        if !bytes.is_empty() {
            std::fs::write(dir.path().join(name), bytes).unwrap_or_else(|e| panic!("{e}"));
        }
        let config = format!(
            "[plugins]\ndir = \"{}\"\n\n{}",
            dir.path().display(),
            route_with(name, &b)
        );
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
        let config = switchyard::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let err = switchyard::Switchyard::start(&config)
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"))
            .to_string();
        assert!(err.contains(name), "{err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
    assert!(proxy_dir.exists());
}

#[test]
fn plugin_init_errors_are_reported() {
    let b = mock("b");
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n\
         router = {{ plugin = \"priority-router.wasm\", config = {{ header = \"\" }} }}\n",
        backend_entry(&b, "")
    );
    let err = TestProxy::try_start(&config)
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert!(err.contains("init for route `r` failed"), "{err}");
    assert!(err.contains("`header` must not be empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_reused_from_the_cache() {
    let b = mock("b");
    let config = route_with("round-robin.wasm", &b);
    // Either this run or an earlier test compiled it; the second start must
    // load it from the cache.
    drop(TestProxy::start(&config));
    let proxy = TestProxy::start(&config);
    let status = proxy.status().await;
    assert_eq!(
        status["routes"][0]["router"]["from_cache"], true,
        "{status}"
    );
    assert_eq!(
        status["routes"][0]["router"]["version"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
}
