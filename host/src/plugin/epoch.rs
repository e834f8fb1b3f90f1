//! The epoch ticker behind plugin deadlines. One thread advances every
//! engine's epoch each [`EPOCH_TICK`] while a plugin call runs on any
//! thread, and sleeps while none does: an idle proxy does not wake a
//! thousand times a second.
//!
//! A thread marks itself busy for the length of a call ([`busy`]); the
//! ticker looks at the marks after each tick. The mark and the ticker's
//! "parked" flag are written and read in sequentially consistent order, so
//! either the ticker sees the call or the call sees the ticker parked and
//! wakes it: a call never runs without ticks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances while calls run; call deadlines are counted
/// in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Ticks with no call before the ticker sleeps.
const IDLE_TICKS: u32 = 20;

/// One thread's calls in progress, on a cache line of its own so marking a
/// call touches nothing another thread writes.
#[repr(align(64))]
#[derive(Default)]
struct Slot {
    depth: AtomicU32,
}

struct Ticker {
    engines: Mutex<Vec<EngineWeak>>,
    slots: Mutex<Vec<Weak<Slot>>>,
    parked: AtomicBool,
    /// Ticks made since start, for tests and the idle check.
    ticks: AtomicU64,
    thread: std::thread::Thread,
}

fn ticker() -> Option<&'static Ticker> {
    static TICKER: OnceLock<Option<Ticker>> = OnceLock::new();
    TICKER
        .get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("switchyard-epoch".into())
                .spawn(run);
            match spawned {
                Ok(handle) => Some(Ticker {
                    engines: Mutex::new(Vec::new()),
                    slots: Mutex::new(Vec::new()),
                    parked: AtomicBool::new(false),
                    ticks: AtomicU64::new(0),
                    thread: handle.thread().clone(),
                }),
                Err(e) => {
                    tracing::error!(
                        "cannot start the plugin epoch ticker, deadlines will not fire: {e}"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Puts `engine`'s epoch under the ticker; it is forgotten once dropped.
pub fn register(engine: &Engine) {
    if let Some(t) = ticker() {
        lock(&t.engines).push(engine.weak());
        t.thread.unpark();
    }
}

/// Marks the current thread as running a plugin call until the guard
/// drops, so the epoch advances and the call's deadline can fire.
pub fn busy() -> Busy {
    SLOT.with(|slot| {
        let depth = slot.depth.load(Ordering::Relaxed);
        slot.depth.store(depth + 1, Ordering::SeqCst);
    });
    if let Some(t) = ticker()
        && t.parked.load(Ordering::SeqCst)
    {
        t.thread.unpark();
    }
    Busy(std::marker::PhantomData)
}

/// A plugin call in progress on this thread; see [`busy`]. Not `Send`: it
/// ends on the thread that marked it.
pub struct Busy(std::marker::PhantomData<*const ()>);

impl Drop for Busy {
    fn drop(&mut self) {
        SLOT.with(|slot| {
            let depth = slot.depth.load(Ordering::Relaxed);
            slot.depth.store(depth.saturating_sub(1), Ordering::Release);
        });
    }
}

thread_local! {
    static SLOT: Arc<Slot> = {
        let slot = Arc::new(Slot::default());
        if let Some(t) = ticker() {
            lock(&t.slots).push(Arc::downgrade(&slot));
        }
        slot
    };
}

/// Ticks made so far, for tests.
pub fn ticks() -> u64 {
    ticker().map_or(0, |t| t.ticks.load(Ordering::Relaxed))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether any thread is in a call; forgets threads that ended.
fn any_busy(t: &Ticker) -> bool {
    let mut slots = lock(&t.slots);
    slots.retain(|s| s.strong_count() > 0);
    slots
        .iter()
        .filter_map(Weak::upgrade)
        .any(|s| s.depth.load(Ordering::SeqCst) > 0)
}

fn run() {
    // The ticker is set once this thread's spawn returned.
    let t = loop {
        if let Some(t) = ticker() {
            break t;
        }
        std::thread::park_timeout(Duration::from_millis(1));
    };
    let mut idle = 0;
    loop {
        {
            let mut engines = lock(&t.engines);
            engines.retain(|weak| match weak.upgrade() {
                Some(engine) => {
                    engine.increment_epoch();
                    true
                }
                None => false,
            });
        }
        t.ticks.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(EPOCH_TICK);
        if any_busy(t) {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS {
            continue;
        }
        t.parked.store(true, Ordering::SeqCst);
        if !any_busy(t) {
            std::thread::park();
        }
        t.parked.store(false, Ordering::SeqCst);
        idle = 0;
    }
}
