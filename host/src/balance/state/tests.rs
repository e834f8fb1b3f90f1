use super::*;
use std::sync::Arc;

#[test]
fn in_flight_follows_guards() {
    let s = Arc::new(BackendState::default());
    let a = s.start_request();
    let b = s.start_request();
    assert_eq!(s.in_flight(), 2);
    drop(a);
    drop(b);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn error_rate_counts_failures_in_the_window() {
    let s = BackendState::default();
    for _ in 0..3 {
        s.record_outcome(Outcome::Response(200), 1000);
    }
    s.record_outcome(Outcome::Response(503), 1000);
    assert_eq!(s.snapshot().error_rate, 250);
    s.record_outcome(Outcome::ConnectError, 0);
    assert_eq!(s.snapshot().error_rate, 400);
}

#[test]
fn an_idle_average_fades_with_time() {
    let s = BackendState::default();
    s.record_outcome(Outcome::Response(200), 1000);
    let at = s.latency_at_ms.load(Relaxed);
    assert_eq!(s.load_rank(at).1, 1000);
    assert_eq!(s.load_rank(at + 2000).1, 500);
    assert!(s.load_rank(at + 20_000).1 <= 1);
    assert_eq!(s.snapshot_at(at + 4000).ewma_latency_us, 250);
}

/// Light sequential traffic: nothing in flight, so latency breaks the
/// tie. A backend that was slower once and then idle must win the tie
/// again before long, or one backend takes every request.
#[test]
fn a_stale_figure_does_not_decide_ties_for_ever() {
    let (busy, idle) = (BackendState::default(), BackendState::default());
    idle.record_outcome(Outcome::Response(200), 600);
    busy.record_outcome(Outcome::Response(200), 500);
    let now = busy.latency_at_ms.load(Relaxed);
    assert!(
        busy.load_rank(now) < idle.load_rank(now),
        "the faster one leads at first"
    );
    // A second of traffic to `busy` only: its figure is fresh then,
    // the idle one's a second old.
    let later = now + 1000;
    busy.latency_at_ms.store(later, Relaxed);
    assert!(
        idle.load_rank(later) < busy.load_rank(later),
        "the idle one is tried again"
    );
}

#[test]
fn the_in_flight_cap_is_reserved_atomically_and_trial_permits_come_back() {
    let s = Arc::new(BackendState::default());
    let peak = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (s, peak) = (s.clone(), peak.clone());
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    if let Some(guard) = s.try_start(3) {
                        peak.fetch_max(s.in_flight(), Relaxed);
                        drop(guard);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(peak.load(Relaxed) <= 3, "{}", peak.load(Relaxed));
    assert_eq!(s.in_flight(), 0);
    s.set_breaker(Breaker::HalfOpen, 0, 1);
    let unsent = s.try_start(0).unwrap();
    assert!(s.try_start(0).is_none(), "one trial at a time");
    drop(unsent);
    assert_eq!(
        s.trial_permits(),
        1,
        "a request never sent gives its permit back"
    );
    let mut sent = s.try_start(0).unwrap();
    sent.sent();
    drop(sent);
    assert_eq!(s.trial_permits(), 0);
}

#[test]
fn ewma_moves_toward_samples() {
    let s = BackendState::default();
    s.record_outcome(Outcome::Response(200), 1000);
    assert_eq!(s.snapshot().ewma_latency_us, 1000);
    s.record_outcome(Outcome::Response(200), 6000);
    assert_eq!(s.snapshot().ewma_latency_us, 2000);
}

#[test]
fn consecutive_failures_eject_until_the_timeout() {
    let s = BackendState::default();
    s.set_passive_health(2, std::time::Duration::from_millis(40), false);
    s.record_outcome(Outcome::ConnectError, 0);
    s.record_outcome(Outcome::Response(200), 100);
    s.record_outcome(Outcome::ConnectError, 0);
    assert!(s.is_usable(), "a success in between resets the count");
    s.record_outcome(Outcome::Timeout, 0);
    assert!(!s.is_usable());
    assert_eq!(s.snapshot().health, Health::Unhealthy);
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert!(s.is_usable(), "back after fail_timeout");
    s.record_outcome(Outcome::Response(503), 100);
    s.record_outcome(Outcome::Response(503), 100);
    assert!(s.is_usable(), "5xx is not passive health's business");
    s.set_passive_health(2, std::time::Duration::from_millis(40), true);
    s.record_outcome(Outcome::Response(503), 100);
    s.record_outcome(Outcome::Response(502), 100);
    assert!(!s.is_usable(), "unless fail_on_5xx says so");
}
