//! What the tests that run `switchyard` processes share: free ports, a
//! `redis-server` of their own, replicas started from config text, raw
//! HTTP exchanges.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn plugin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        dir.join("global-token-budget.wasm").exists(),
        "compiled plugins not found in {}; run ./scripts/build-plugins.sh",
        dir.display()
    );
    dir
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` on a loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found; install it (Debian package redis-server) or run ./scripts/test.sh");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), "redis-server");
        Redis { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sum of every counter under `pattern`.
    pub fn sum(&self, pattern: &str) -> i64 {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut c = client.get_connection().expect("connect to redis");
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).expect("KEYS");
        keys.iter()
            .map(|k| redis::cmd("GET").arg(k).query::<i64>(&mut c).expect("GET"))
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `switchyard run` process.
pub struct Replica {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts a replica with `body` (pools and routes) on `store`.
    pub fn launch(store: &str, body: &str) -> Replica {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, admin_port) = (free_port(), free_port());
        let config = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
workers = 1
drain_timeout = "1s"

[admin]
listen = "127.0.0.1:{admin_port}"

[plugins]
dir = "{plugins}"
cache_dir = "{cache}"

[shared]
store = "{store}"

{body}"#,
            plugins = plugin_dir().display(),
            cache = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/test-plugin-cache")
                .display(),
        );
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start switchyard");
        let mut replica = Replica {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&replica.addr, Duration::from_millis(200)).is_err() {
            let exited = replica.child.try_wait().ok().flatten().is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "switchyard did not start:\n{}",
                replica.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange over a fresh connection: status and raw text.
pub fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Polls `check` every 20 ms for up to 5 s.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
