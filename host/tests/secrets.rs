//! Credentials never leave the proxy by any door: a running `switchyard`
//! process with planted keys (from the environment, a file, inline, and a
//! client key) is driven through success and failure paths, and its log
//! (at debug level), admin API, dashboard, debug headers, error replies and
//! `check` output are all scanned for them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV_KEY: &str = "sk-planted-env-4f1c9a";
const FILE_KEY: &str = "sk-planted-file-8b2d7e";
const INLINE_KEY: &str = "sk-planted-inline-3e6f0b";
const CLIENT_KEY: &str = "sk-planted-client-9a4c1d";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One HTTP/1.1 exchange over a fresh connection; the whole answer, head
/// and body, as text.
fn http(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn digest(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn planted_keys_appear_in_no_log_page_header_or_error() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        plugins.join("round-robin.wasm").exists(),
        "run ./scripts/build-plugins.sh"
    );
    let mock =
        switchyard_testkit::MockBackend::start(switchyard_testkit::MockOptions::new("provider"))
            .expect("mock");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("provider.key"), format!("{FILE_KEY}\n")).expect("key file");
    let (port, admin_port) = (free_port(), free_port());
    let dead = free_port();
    let credentials = format!(
        "set_headers = {{ authorization = {{ env = \"SWITCHYARD_TEST_PLANTED\", prefix = \"Bearer \" }}, \
         \"x-file-key\" = {{ file = \"provider.key\" }}, \"x-inline-key\" = \"{INLINE_KEY}\" }}"
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\naccess_log = true\ndebug_header = true\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [plugins]\ndir = \"{plugins}\"\ncache_dir = \"{cache}\"\n\n\
         [pools.keyed]\n{credentials}\nbackends = [{{ name = \"provider\", address = \"{up}\" }}]\n\n\
         [pools.down]\n{credentials}\nbackends = [{{ name = \"gone\", address = \"127.0.0.1:{dead}\" }}]\n\n\
         [pools.tls]\n{credentials}\nbackends = [{{ name = \"not-tls\", address = \"https://localhost:{upport}\" }}]\n\n\
         [[routes]]\nname = \"keyed\"\nmatch = {{ path_prefix = \"/k\" }}\nstrip_prefix = true\npool = \"keyed\"\n\
         router = {{ plugin = \"round-robin.wasm\" }}\nauth = {{ keys = [{{ name = \"graph\", sha256 = \"{client}\" }}] }}\n\n\
         [[routes]]\nname = \"down\"\nmatch = {{ path_prefix = \"/d\" }}\npool = \"down\"\n\n\
         [[routes]]\nname = \"tls\"\nmatch = {{ path_prefix = \"/t\" }}\npool = \"tls\"\n",
        plugins = plugins.display(),
        cache = dir.path().join("cache").display(),
        up = mock.addr,
        upport = mock.addr.port(),
        client = digest(CLIENT_KEY),
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, &config).expect("config");
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&path)
        .env("SWITCHYARD_TEST_PLANTED", ENV_KEY)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("switchyard run");
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    wait_listening(proxy);
    wait_listening(admin);

    // The credentials do reach the backend (else this test proves nothing).
    let echoed = http(
        proxy,
        "/k/echo",
        &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
    );
    assert!(
        echoed.contains(ENV_KEY) && echoed.contains(FILE_KEY) && echoed.contains(INLINE_KEY),
        "{echoed}"
    );
    assert!(
        !echoed.contains(CLIENT_KEY),
        "the client's key reached the backend: {echoed}"
    );

    let debug = [
        ("authorization", format!("Bearer {CLIENT_KEY}")),
        ("x-switchyard-debug", "1".into()),
    ];
    let debug: Vec<(&str, &str)> = debug.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut seen = Vec::new();
    for p in ["/k/ok", "/k/status/503", "/d/ok", "/t/ok", "/nowhere"] {
        seen.push(http(proxy, p, &debug));
    }
    seen.push(http(
        proxy,
        "/k/ok",
        &[("authorization", "Bearer sk-wrong")],
    ));
    assert!(seen[0].starts_with("HTTP/1.1 200"), "{}", seen[0]);
    assert!(seen[2].starts_with("HTTP/1.1 502"), "{}", seen[2]);
    assert!(
        seen[3].starts_with("HTTP/1.1 502") && seen[3].contains("TLS"),
        "{}",
        seen[3]
    );
    for page in [
        "/status",
        "/plugins",
        "/metrics",
        "/dashboard",
        "/healthz",
        "/reloads",
    ] {
        seen.push(http(admin, page, &[]));
    }
    // A reload, and a refused one, log too.
    std::fs::write(&path, format!("{config}\n")).expect("rewrite");
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&path, format!("{config}\n[[routes]]\nname = 1\n")).expect("break");
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    let _ = child.wait();
    let check = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .env("SWITCHYARD_TEST_PLANTED", ENV_KEY)
        .output()
        .expect("check");
    seen.push(String::from_utf8_lossy(&check.stdout).into_owned());
    seen.push(String::from_utf8_lossy(&check.stderr).into_owned());
    let logged = std::fs::read_to_string(dir.path().join("stderr.log")).expect("log");
    assert!(logged.contains("reload"), "the log was captured: {logged}");
    seen.push(logged);

    for text in &seen {
        for key in [ENV_KEY, FILE_KEY, INLINE_KEY, CLIENT_KEY] {
            assert!(!text.contains(key), "{key} leaked:\n{text}");
        }
    }
}
