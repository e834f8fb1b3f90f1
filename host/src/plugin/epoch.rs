//! The epoch ticker behind plugin deadlines. One thread advances every
//! engine's epoch by one per elapsed [`EPOCH_TICK`], so the epoch counts
//! milliseconds, but it wakes only as often as deadlines need:
//!
//! - every tick while a call is in progress at its wake (a call that may be
//!   running away, to be stopped on time);
//! - every [`SLOW_WAKE`] while calls come and go between its wakes (under
//!   load: calls last microseconds, so most wakes find none running; one
//!   wake in ten instead of every millisecond keeps it from preempting the
//!   workers a thousand times a second);
//! - never while no call has been made for [`IDLE_WAKES`] wakes: it parks,
//!   and the next call wakes it.
//!
//! Between wakes the epoch lags the clock; a call adds the whole ticks
//! elapsed since the last advance ([`deadline`]) to its deadline, so its
//! time is counted from when it started, not from the last wake.
//!
//! A thread marks itself busy for the length of a call ([`busy`]); the
//! ticker looks at the marks at each wake. The mark and the ticker's
//! "parked" flag are written and read in sequentially consistent order, so
//! either the ticker sees the call or the call sees the ticker parked and
//! wakes it: a call never runs without ticks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use wasmtime::{Engine, EngineWeak};

/// The epoch's unit; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The ticker's wake interval while calls run but none is in progress at
/// its wakes.
const SLOW_WAKE: Duration = Duration::from_millis(10);
/// Wakes that saw no call at all before the ticker parks.
const IDLE_WAKES: u32 = 3;
/// Most ticks one wake adds (and one call counts as elapsed): after a park
/// the epoch resumes rather than racing through the time it slept.
const MAX_CATCH_UP: u64 = 2 * (SLOW_WAKE.as_millis() / EPOCH_TICK.as_millis()) as u64;

/// One thread's calls in progress, on a cache line of its own so marking a
/// call touches nothing another thread writes.
#[repr(align(64))]
#[derive(Default)]
struct Slot {
    depth: AtomicU32,
    /// Calls started on this thread, so the ticker can tell calls happened
    /// between its wakes.
    calls: AtomicU32,
}

struct Ticker {
    engines: Mutex<Vec<EngineWeak>>,
    slots: Mutex<Vec<Weak<Slot>>>,
    parked: AtomicBool,
    /// Ticks made since start, for tests.
    ticks: AtomicU64,
    /// `clock::nanos()` up to which the epoch has been advanced.
    advanced_to: AtomicU64,
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
                    advanced_to: AtomicU64::new(crate::clock::nanos()),
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
        let calls = slot.calls.load(Ordering::Relaxed);
        slot.calls.store(calls.wrapping_add(1), Ordering::Relaxed);
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

/// The epoch deadline to set for a call of `ticks` starting now: `ticks`
/// plus the whole ticks the epoch lags behind the clock.
pub fn deadline(ticks: u64) -> u64 {
    ticks + ticker().map_or(0, |t| behind(t, crate::clock::nanos()))
}

/// Whole ticks between the last advance and `now`, capped.
fn behind(t: &Ticker, now: u64) -> u64 {
    let since = now.saturating_sub(t.advanced_to.load(Ordering::Acquire));
    (since / EPOCH_TICK.as_nanos() as u64).min(MAX_CATCH_UP)
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

/// Whether a thread is in a call now, and the calls started so far on all
/// threads; forgets threads that ended.
fn activity(t: &Ticker) -> (bool, u64) {
    let mut slots = lock(&t.slots);
    slots.retain(|s| s.strong_count() > 0);
    let (mut running, mut calls) = (false, 0u64);
    for s in slots.iter().filter_map(Weak::upgrade) {
        running |= s.depth.load(Ordering::SeqCst) > 0;
        calls = calls.wrapping_add(u64::from(s.calls.load(Ordering::Relaxed)));
    }
    (running, calls)
}

/// Advances every engine's epoch by the ticks elapsed since the last
/// advance (at most [`MAX_CATCH_UP`]), then notes how far it got: in that
/// order, so a call that reads the note never counts an advance twice as
/// missing, only, at worst, once as still to come.
fn advance(t: &Ticker) {
    let now = crate::clock::nanos();
    let due = behind(t, now);
    if due == 0 {
        return;
    }
    {
        let mut engines = lock(&t.engines);
        engines.retain(|weak| match weak.upgrade() {
            Some(engine) => {
                for _ in 0..due {
                    engine.increment_epoch();
                }
                true
            }
            None => false,
        });
    }
    t.ticks.fetch_add(due, Ordering::Relaxed);
    let tick = EPOCH_TICK.as_nanos() as u64;
    // Whole ticks only, the remainder carried; after a long park, from now.
    let from = t.advanced_to.load(Ordering::Relaxed);
    let to = if now.saturating_sub(from) / tick > MAX_CATCH_UP {
        now
    } else {
        from + due * tick
    };
    t.advanced_to.store(to, Ordering::Release);
}

fn run() {
    // The ticker is set once this thread's spawn returned.
    let t = loop {
        if let Some(t) = ticker() {
            break t;
        }
        std::thread::park_timeout(Duration::from_millis(1));
    };
    let (mut idle, mut seen) = (0, 0);
    loop {
        advance(t);
        let (running, calls) = activity(t);
        let called = std::mem::replace(&mut seen, calls) != calls;
        if running {
            idle = 0;
            std::thread::sleep(EPOCH_TICK);
            continue;
        }
        if called {
            idle = 0;
            std::thread::sleep(SLOW_WAKE);
            continue;
        }
        idle += 1;
        if idle < IDLE_WAKES {
            std::thread::sleep(SLOW_WAKE);
            continue;
        }
        t.parked.store(true, Ordering::SeqCst);
        if !activity(t).0 {
            std::thread::park();
        }
        t.parked.store(false, Ordering::SeqCst);
        idle = 0;
    }
}
