//! Glue between the generated bindings and a [`Router`](crate::Router).
//! Used by [`export_router!`](crate::export_router); not a public API.

pub use alloc::string::String;
pub use alloc::vec::Vec;

pub use crate::bindings::exports::switchyard::policy::router::Guest as RouterGuest;

use crate::{Attribute, BackendInfo, BackendLoad, Config, Decision, Request, Router};
use core::cell::RefCell;

/// Holds the plugin's router between calls.
pub struct Slot<R>(RefCell<Option<R>>);

// SAFETY: a component instance runs on one thread at a time and
// `wasm32-wasip2` has no threads, so the cell is never shared.
#[allow(unsafe_code)]
unsafe impl<R> Sync for Slot<R> {}

impl<R> Slot<R> {
    /// An empty slot, filled by `init`.
    pub const fn new() -> Self {
        Slot(RefCell::new(None))
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
    *slot.0.borrow_mut() = Some(router);
    Ok(interest)
}

/// Passes the pool's backends to the router.
pub fn set_backends<R: Router>(slot: &Slot<R>, backends: &[BackendInfo]) {
    if let Some(router) = slot.0.borrow_mut().as_mut() {
        router.set_backends(backends);
    }
}

/// Asks the router for a decision.
pub fn route<R: Router>(slot: &Slot<R>, request: &Request, backends: &[BackendLoad]) -> Decision {
    match slot.0.borrow_mut().as_mut() {
        Some(router) => router.route(request, backends),
        None => Decision::reject(500, "router used before init"),
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
