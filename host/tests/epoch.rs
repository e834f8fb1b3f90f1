//! The epoch ticker behind plugin deadlines sleeps while no plugin call
//! runs (an idle proxy does not wake a thousand times a second), and a
//! call that starts while it sleeps still meets its deadline. Its own test
//! binary: no other test's plugin calls keep the ticker awake.

use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::config::FailurePolicy;
use switchyard::plugin::{CallFailure, PluginRuntime, RouterPlugin, RouterSpec, epoch_ticks, wit};

fn spec(file: &str, deadline: Duration) -> RouterSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        dir.join(file).exists(),
        "compiled plugins not found in {}; run ./scripts/build-plugins.sh",
        dir.display()
    );
    RouterSpec {
        file: dir.join(file),
        route: "r".into(),
        config: Vec::new(),
        on_failure: FailurePolicy::FailOpen,
        deadline,
        memory_mb: 16,
        body_peek: 0,
        backends: vec![wit::BackendInfo {
            id: 0,
            name: "b".into(),
            address: "127.0.0.1:9".into(),
            weight: 1,
            labels: Vec::new(),
        }],
    }
}

/// Ticks made over `ms` milliseconds.
fn ticks_over(ms: u64) -> u64 {
    let before = epoch_ticks();
    std::thread::sleep(Duration::from_millis(ms));
    epoch_ticks() - before
}

#[test]
fn the_ticker_sleeps_when_idle_and_wakes_for_a_call() {
    let runtime = PluginRuntime::new(None).expect("runtime");
    let spin = RouterPlugin::load(
        &runtime,
        spec("fixture-spin.wasm", Duration::from_millis(20)),
    )
    .expect("spin loads");
    let rr = RouterPlugin::load(
        &runtime,
        spec("round-robin.wasm", Duration::from_millis(20)),
    )
    .expect("round-robin loads");
    let (mut spinning, mut routing) = (
        spin.instantiate().expect("instance"),
        rr.instantiate().expect("instance"),
    );
    let request = wit::Request {
        method: wit::Method::Get,
        client_ip: wit::IpAddress::V4(0x7f00_0001),
    };
    let loads = [0u32; 13];
    // Calls are over: within a moment the ticker sleeps.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ticks_over(300), 0, "the ticker ticked with no call running");
    // A call that starts now wakes it: the spinning router is stopped at
    // its deadline, not left running.
    let started = Instant::now();
    let failed = spinning.route(request, &loads, Vec::new());
    assert_eq!(failed, Err(CallFailure::Deadline));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the deadline fired after {:?}",
        started.elapsed()
    );
    // Ordinary calls keep working, and the ticker sleeps again after them.
    for _ in 0..1000 {
        assert!(routing.route(request, &loads, Vec::new()).is_ok());
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        ticks_over(300),
        0,
        "the ticker kept ticking after the calls"
    );

    // Under a stream of short calls the ticker wakes only now and then,
    // so the epoch lags the clock; a runaway call still gets its whole
    // deadline, counted from its start, and no more than about a tick
    // beyond it, wherever between the ticker's wakes it starts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, rr) = (stop.clone(), rr.clone());
        std::thread::spawn(move || {
            let mut routing = rr.instantiate().expect("instance");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(routing.route(request, &loads, Vec::new()).is_ok());
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut took = Vec::new();
    for offset_ms in [0, 3, 7, 2, 9, 5] {
        std::thread::sleep(Duration::from_millis(offset_ms));
        let mut spinning = spin.instantiate().expect("instance");
        let started = Instant::now();
        assert_eq!(
            spinning.route(request, &loads, Vec::new()),
            Err(CallFailure::Deadline)
        );
        took.push(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("load thread");
    for t in &took {
        assert!(
            *t >= Duration::from_millis(19) && *t < Duration::from_millis(80),
            "a 20 ms deadline fired after {took:?}"
        );
    }
}
