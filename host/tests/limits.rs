//! Running out of file descriptors is the proxy's trouble, not the
//! backend's: a `switchyard` process with a hard limit of 96 open files is
//! filled with idle client connections until an upstream connect fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A GET over a fresh connection; the answer's text, or empty on timeout.
fn get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn out_of_descriptors_answers_503_and_never_ejects_the_backend() {
    // A backend that closes every connection after its answer, so each
    // proxied request needs a new upstream connection (a pooled one would
    // hide the exhaustion).
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in backend.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
            );
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\nmax_connections = 10000\nheader_read_timeout = \"60s\"\n\n\
         [plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\nwatch = false\n\n\
         [pools.p]\nmax_fails = 1\nfail_timeout = \"60s\"\nbackends = [{{ name = \"b\", address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/plugins")
            .display(),
        dir.path().join("cache").display(),
        backend_addr,
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).expect("config");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 96 && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("switchyard");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(addr, "/ok").contains("200 OK") {
        assert!(Instant::now() < deadline, "the proxy never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Fill the descriptors with idle connections until a request's
    // upstream connect fails for want of one.
    let mut idle = Vec::new();
    let mut refusal = None;
    for _ in 0..200 {
        idle.push(TcpStream::connect(addr).expect("connect"));
        let answer = get(addr, "/ok");
        if answer.starts_with("HTTP/1.1 503") {
            refusal = Some(answer);
            break;
        }
        assert!(
            answer.is_empty() || answer.contains("200 OK"),
            "only 200s or a 503 for local trouble: {answer}"
        );
    }
    let refusal = refusal.expect("the descriptors never ran out");
    assert!(refusal.contains("out of resources"), "{refusal}");
    drop(idle);
    // The backend was not ejected (max_fails = 1, fail_timeout = 60 s):
    // the next request is served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(addr, "/ok");
        if answer.contains("200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backend was blamed: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one_and_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\n[plugins]\ndir = \"{}\"\nwatch = false\n\n\
         [pools.p]\nbackends = [{{ name = \"b\", address = \"127.0.0.1:9\" }}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        dir.path().display()
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).expect("config");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 200 && exec \"$0\" run --config \"$1\" 2>\"$2\"")
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .arg(&path)
        .arg(&log)
        .stdout(Stdio::null())
        .spawn()
        .expect("switchyard");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("proxy listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .expect("limit")
        .1;
    if hard > 200 {
        assert!(
            text.contains("raised the open-file limit from 200 to"),
            "{text}"
        );
    }
}
