//! Heap allocations per proxied request, counted by a counting global
//! allocator around a proxy running in this process. The backend and the
//! client are raw sockets that allocate nothing per request, so every
//! allocation counted is the proxy's (its workers, and the threads it
//! runs beside them).
//!
//!   ./scripts/build-plugins.sh && cargo bench -p switchyard-benches --bench allocs

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The system allocator, counting calls and bytes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations by size: up to 64 B, 1 KiB, 8 KiB, and above.
static SIZES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn count(size: usize) {
    ALLOCS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size as u64, Relaxed);
    let bucket = match size {
        0..=64 => 0,
        65..=1024 => 1,
        1025..=8192 => 2,
        _ => 3,
    };
    SIZES[bucket].fetch_add(1, Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain atomics that never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A backend answering every request `ok`, one thread per connection,
/// reading into a fixed buffer.
fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 8192];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    // Requests without a body; answer each complete head.
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        let used = end + 4;
                        buf.copy_within(used..have, 0);
                        have -= used;
                        if s.write_all(ANSWER).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends `n` keep-alive GETs to `path` on one connection and reads each
/// answer, with no allocation per request.
fn drive(proxy: SocketAddr, request: &'static [u8], n: u64) {
    let mut s = TcpStream::connect(proxy).expect("connect");
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        s.write_all(request).expect("write");
        let mut have = 0;
        // The proxy's answer ends with the backend's two-byte body.
        loop {
            let got = s.read(&mut buf[have..]).expect("read");
            assert!(got > 0, "the proxy closed the connection");
            have += got;
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n")
                && have >= end + 4 + 2
            {
                assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..have]);
                break;
            }
        }
    }
}

fn main() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        plugins.join("least-outstanding.wasm").exists(),
        "compiled plugins not found in {}; run ./scripts/build-plugins.sh",
        plugins.display()
    );
    let (b1, b2) = (backend(), backend());
    let cache = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n\
         [plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\nwatch = false\n\n\
         [pools.p]\nbackends = [{{ name = \"b1\", address = \"{b1}\" }}, {{ name = \"b2\", address = \"{b2}\" }}]\n\n\
         [[routes]]\nname = \"wasm\"\nmatch = {{ path_prefix = \"/wasm\" }}\npool = \"p\"\n\
         router = {{ plugin = \"least-outstanding.wasm\" }}\n\n\
         [[routes]]\nname = \"builtin\"\npool = \"p\"\n",
        plugins.display(),
        cache.path().display()
    );
    let config =
        switchyard::config::Config::parse(&text, Path::new("allocs.toml"), std::env::temp_dir())
            .expect("config");
    let proxy = switchyard::Switchyard::start(&config).expect("proxy");
    let addr = proxy.addr();
    const N: u64 = 20_000;
    println!(
        "Heap allocations per proxied request (GET, keep-alive, 1 worker, {N} requests after 2,000 to warm up)\n"
    );
    println!(
        "| route | allocations / request | bytes / request | of which ≤ 64 B / ≤ 1 KiB / ≤ 8 KiB / larger |"
    );
    println!("|---|---:|---:|---|");
    for (name, request) in [
        (
            "built-in router",
            &b"GET /x HTTP/1.1\r\nhost: bench\r\n\r\n"[..],
        ),
        (
            "Wasm router (least-outstanding)",
            &b"GET /wasm/x HTTP/1.1\r\nhost: bench\r\n\r\n"[..],
        ),
    ] {
        drive(addr, request, 2_000);
        let sizes = || SIZES.each_ref().map(|s| s.load(Relaxed));
        let (a0, b0, s0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed), sizes());
        drive(addr, request, N);
        let (a1, b1, s1) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed), sizes());
        let per = |d: u64| d as f64 / N as f64;
        println!(
            "| {name} | {:.1} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} |",
            per(a1 - a0),
            per(b1 - b0),
            per(s1[0] - s0[0]),
            per(s1[1] - s0[1]),
            per(s1[2] - s0[2]),
            per(s1[3] - s0[3]),
        );
    }
    proxy.shutdown();
}
