//! Glue between the generated bindings and a [`Router`](crate::Router).
//! Used by [`export_router!`](crate::export_router); not a public API.

pub use alloc::string::String;
pub use alloc::vec::Vec;

pub use crate::bindings::exports::switchyard::policy::router::Guest as RouterGuest;
pub use crate::breaker_bindings::exports::switchyard::policy::circuit_breaker::Guest as BreakerGuest;
pub use crate::health_bindings::exports::switchyard::policy::health_check::Guest as HealthGuest;

pub use crate::bindings::switchyard::policy::types::{
    Choice, Decision as WitDecision, Request as Facts,
};

use crate::policy::{BreakerUpdate, CircuitBreaker, HealthCheck, Outcome, ProbeResult, Verdict};
use crate::{Attribute, BackendInfo, Config, Decision, Router};
use core::cell::RefCell;

/// Fills unused candidate slots of a compact choice.
#[cfg(any(target_arch = "wasm32", test))]
const NO_BACKEND: u32 = u32::MAX;

/// Holds the plugin's router between calls, and a decision too large for
/// the compact answer until the host fetches it.
pub struct Slot<R>(RefCell<(Option<R>, Option<Decision>)>);

// SAFETY: a component instance runs on one thread at a time and
// `wasm32-wasip2` has no threads, so the cell is never shared. Natively
// (plugin unit tests) that does not hold, and the slot is not `Sync`.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
unsafe impl<R> Sync for Slot<R> {}

impl<R> Slot<R> {
    /// An empty slot, filled by `init`.
    pub const fn new() -> Self {
        Slot(RefCell::new((None, None)))
    }
}

impl<R> Default for Slot<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs [`Router::init`] and keeps the router; returns its interest.
pub fn init<R: Router>(
    slot: &Slot<R>,
    route: &str,
    config: Vec<(String, String)>,
) -> Result<Vec<Attribute>, String> {
    let router = R::init(route, &Config::new(config))?;
    let interest = router.interest();
    slot.0.borrow_mut().0 = Some(router);
    Ok(interest)
}

/// Passes the pool's backends to the router.
pub fn set_backends<R: Router>(slot: &Slot<R>, backends: &[BackendInfo]) {
    if let Some(router) = slot.0.borrow_mut().0.as_mut() {
        router.set_backends(backends);
    }
}

/// Runs [`HealthCheck::init`] and keeps the check.
pub fn init_health<C: HealthCheck>(
    slot: &Slot<C>,
    pool: &str,
    config: Vec<(String, String)>,
) -> Result<(), String> {
    slot.0.borrow_mut().0 = Some(C::init(pool, &Config::new(config))?);
    Ok(())
}

pub fn set_health_backends<C: HealthCheck>(slot: &Slot<C>, backends: &[BackendInfo]) {
    if let Some(check) = slot.0.borrow_mut().0.as_mut() {
        check.set_backends(backends);
    }
}

/// Judges a probe; before `init`, only the status counts.
pub fn check<C: HealthCheck>(slot: &Slot<C>, probe: &ProbeResult) -> Verdict {
    match slot.0.borrow_mut().0.as_mut() {
        Some(check) => check.check(probe),
        None => Verdict::new(
            if (200..300).contains(&probe.status) {
                crate::Health::Healthy
            } else {
                crate::Health::Unhealthy
            },
            0,
        ),
    }
}

/// Runs [`CircuitBreaker::init`] and keeps the breaker.
pub fn init_breaker<B: CircuitBreaker>(
    slot: &Slot<B>,
    pool: &str,
    config: Vec<(String, String)>,
) -> Result<(), String> {
    slot.0.borrow_mut().0 = Some(B::init(pool, &Config::new(config))?);
    Ok(())
}

pub fn set_breaker_backends<B: CircuitBreaker>(slot: &Slot<B>, backends: &[BackendInfo]) {
    if let Some(breaker) = slot.0.borrow_mut().0.as_mut() {
        breaker.set_backends(backends);
    }
}

pub fn record<B: CircuitBreaker>(slot: &Slot<B>, outcome: &Outcome) -> Option<BreakerUpdate> {
    slot.0.borrow_mut().0.as_mut()?.record(outcome)
}

pub fn cool_down_ended<B: CircuitBreaker>(slot: &Slot<B>, backend: u32) -> BreakerUpdate {
    match slot.0.borrow_mut().0.as_mut() {
        Some(breaker) => breaker.cool_down_ended(backend),
        None => BreakerUpdate::Closed,
    }
}

/// Asks the router for a decision; answers compactly when it fits.
#[cfg(target_arch = "wasm32")]
pub fn route<R: Router>(slot: &Slot<R>, facts: Facts, loads: &[u32]) -> Choice {
    let request = crate::Request::from_host(facts);
    let mut state = slot.0.borrow_mut();
    let decision = match state.0.as_mut() {
        Some(router) => router.route(&request, crate::BackendLoad::from_words(loads)),
        None => Decision::reject(500, "router used before init"),
    };
    match compact(&decision) {
        Some(choice) => choice,
        None => {
            state.1 = Some(decision);
            Choice::Detailed
        }
    }
}

/// Hands over the decision kept by the last `route`.
pub fn decision<R: Router>(slot: &Slot<R>) -> WitDecision {
    use crate::bindings::switchyard::policy::types::{Forward, Reject};
    match slot.0.borrow_mut().1.take() {
        Some(Decision::Forward {
            candidates,
            add_headers,
            hedge_after_us,
        }) => WitDecision::Forward(Forward {
            candidates: match candidates {
                crate::Candidates::Many(v) => v,
                few => few.as_slice().to_vec(),
            },
            add_headers,
            hedge_after_us,
        }),
        Some(Decision::Reject { status, body }) => WitDecision::Reject(Reject { status, body }),
        None => WitDecision::Reject(Reject {
            status: 500,
            body: "no detailed decision pending".into(),
        }),
    }
}

/// The compact form of a forward decision with at most four candidates and
/// no added headers, hedged or not.
#[cfg(any(target_arch = "wasm32", test))]
fn compact(decision: &Decision) -> Option<Choice> {
    match decision {
        Decision::Forward {
            candidates,
            add_headers,
            hedge_after_us,
        } if candidates.len() <= 4 && add_headers.is_empty() => {
            let ids = candidates.as_slice();
            let slot = |i: usize| ids.get(i).copied().unwrap_or(NO_BACKEND);
            let slots = (slot(0), slot(1), slot(2), slot(3));
            Some(match hedge_after_us {
                None => Choice::Forward(slots),
                Some(us) => Choice::Hedged((slots, *us)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_forward_decisions_are_compact() {
        assert_eq!(
            compact(&Decision::forward([2, 0])),
            Some(Choice::Forward((2, 0, NO_BACKEND, NO_BACKEND)))
        );
        assert_eq!(compact(&Decision::forward([0, 1, 2, 3, 4])), None);
        assert_eq!(compact(&Decision::reject(429, "slow down")), None);
        let with_header = Decision::forward([1]).with_header("x-a", "b");
        assert_eq!(compact(&with_header), None);
        assert_eq!(
            compact(&Decision::forward([3, 1]).hedged(40_000)),
            Some(Choice::Hedged(((3, 1, NO_BACKEND, NO_BACKEND), 40_000)))
        );
        assert_eq!(compact(&Decision::reject(503, "x").hedged(5)), None);
    }

    #[test]
    fn packed_words_are_read_in_place() {
        let mut words = alloc::vec![0u32; crate::LOAD_WORDS * 2 + 3];
        words[crate::LOAD_WORDS] = 1; // id of the second backend
        words[crate::LOAD_WORDS + 1] = 7; // its in-flight count
        words[crate::LOAD_WORDS + 8] = u32::MAX; // remaining requests: unknown
        words[crate::LOAD_WORDS + 9] = u32::MAX;
        words[10] = 5; // first backend: 5 remaining tokens
        let loads = crate::BackendLoad::from_words(&words);
        assert_eq!(loads.len(), 2);
        assert_eq!((loads[1].id, loads[1].in_flight), (1, 7));
        assert_eq!(loads[1].remaining_requests(), None);
        assert_eq!(loads[0].remaining_tokens(), Some(5));
        assert!(loads[0].is_usable());
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod wasm {
    use alloc::alloc::{Layout, alloc, handle_alloc_error, realloc};
    use core::sync::atomic::{AtomicBool, Ordering};

    // `memcpy`, `memcmp` and friends come from the target's C library; none
    // of them imports anything from WASI.
    #[link(name = "c")]
    unsafe extern "C" {}

    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    /// The canonical ABI's allocator: the host calls it to place lists and
    /// strings in guest memory. It must use the Rust allocator, because the
    /// bindings turn those buffers into `Vec`s and `String`s that Rust frees.
    ///
    /// # Safety
    /// Called only by the host with the canonical ABI's contract: `old_ptr`
    /// and `old_len` describe an earlier allocation of the same `align`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        if new_len == 0 {
            return align as *mut u8;
        }
        let Ok(new_layout) = Layout::from_size_align(new_len, align) else {
            core::arch::wasm32::unreachable()
        };
        // SAFETY: the layout is non-zero sized; a non-zero `old_len` comes
        // from an earlier call with the same alignment.
        let ptr = unsafe {
            if old_len == 0 {
                alloc(new_layout)
            } else {
                let old = Layout::from_size_align_unchecked(old_len, align);
                realloc(old_ptr, old, new_len)
            }
        };
        if ptr.is_null() {
            handle_alloc_error(new_layout);
        }
        ptr
    }

    /// Logs the panic through the host, then traps; the host applies the
    /// binding's failure policy and replaces the instance.
    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        static PANICKING: AtomicBool = AtomicBool::new(false);
        // A panic while reporting a panic (say, out of memory) traps at once.
        if !PANICKING.swap(true, Ordering::Relaxed) {
            let message = alloc::format!("plugin panicked: {info}");
            crate::host::log(crate::host::Level::Error, &message);
        }
        core::arch::wasm32::unreachable()
    }
}
