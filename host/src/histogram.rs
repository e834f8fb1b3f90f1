//! Latency histograms of the request path, kept per thread and summed when
//! `/metrics` is scraped.
//!
//! A record is a bucket search and two plain stores into the recording
//! thread's own shard. The exporter's histograms take a clock read and an
//! atomic push per sample, and a thread folds the samples into buckets
//! later; at two records per request that was ~1 % of the proxy's CPU.
//! Series are exported in the same text format, names and buckets as the
//! exporter's, and live as long as the process, so counts carry over a
//! reload that builds the routes again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Upper bounds of the buckets in microseconds, from 100 µs to 10 min (the
/// exporter's, set where the admin module installs it).
const BOUNDS_US: [u64; 21] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
    600_000_000,
];

/// The buckets and the `+Inf` one.
const CELLS: usize = BOUNDS_US.len() + 1;

/// Most shards a series keeps for threads of their own; threads beyond
/// them share one more, with atomic adds.
const MAX_OWN_SHARDS: usize = 64;

/// One thread's counts: each cell has a single writer, so a record is a load
/// and a store. Aligned so that two threads never write one cache line.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    cells: [AtomicU64; CELLS],
    sum_us: AtomicU64,
}

impl Shard {
    fn add(&self, cell: usize, us: u64, shared: bool) {
        if shared {
            self.cells[cell].fetch_add(1, Relaxed);
            self.sum_us.fetch_add(us, Relaxed);
        } else {
            let bump = |a: &AtomicU64, by: u64| a.store(a.load(Relaxed).wrapping_add(by), Relaxed);
            bump(&self.cells[cell], 1);
            bump(&self.sum_us, us);
        }
    }
}

struct Series {
    /// `own_shards()` shards of their own, then the shared one.
    shards: Box<[Shard]>,
}

/// A histogram series: one metric name with one set of labels. Cloning is
/// cheap; every clone records into the same series.
#[derive(Clone)]
pub struct Histogram(Arc<Series>);

/// Every series made so far, by name and rendered labels.
type Registry = BTreeMap<(&'static str, String), Histogram>;

fn registry() -> &'static Mutex<Registry> {
    static SERIES: Mutex<Registry> = Mutex::new(BTreeMap::new());
    &SERIES
}

fn own_shards() -> usize {
    static OWN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .clamp(1, MAX_OWN_SHARDS)
    })
}

impl Histogram {
    /// The series `name` with `labels` (in this order), made on first use.
    pub fn new(name: &'static str, labels: &[(&str, &str)]) -> Histogram {
        let mut rendered = String::new();
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                rendered.push(',');
            }
            let _ = write!(rendered, "{key}=\"{}\"", escape(value));
        }
        let mut series = registry().lock().unwrap_or_else(|e| e.into_inner());
        series
            .entry((name, rendered))
            .or_insert_with(|| {
                let shards = (0..=own_shards()).map(|_| Shard::default()).collect();
                Histogram(Arc::new(Series { shards }))
            })
            .clone()
    }

    /// Records one value in microseconds.
    pub fn record_us(&self, us: u64) {
        let cell = BOUNDS_US.partition_point(|&bound| bound < us);
        let shards = &self.0.shards;
        let shared = shards.len() - 1;
        let slot = slot::index().filter(|&i| i < shared);
        shards[slot.unwrap_or(shared)].add(cell, us, slot.is_none());
    }

    /// The counts per cell and the sum in microseconds, over all shards.
    fn totals(&self) -> ([u64; CELLS], u64) {
        let mut cells = [0u64; CELLS];
        let mut sum = 0u64;
        for shard in self.0.shards.iter() {
            for (total, cell) in cells.iter_mut().zip(&shard.cells) {
                *total += cell.load(Relaxed);
            }
            sum = sum.wrapping_add(shard.sum_us.load(Relaxed));
        }
        (cells, sum)
    }
}

/// Every series in the Prometheus text format: cumulative `_bucket` lines,
/// `_sum` in seconds and `_count`.
pub fn render() -> String {
    let series = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    let mut last_name = "";
    for ((name, labels), histogram) in series.iter() {
        if *name != last_name {
            let _ = writeln!(out, "# TYPE {name} histogram");
            last_name = name;
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let (cells, sum_us) = histogram.totals();
        let mut count = 0;
        for (i, n) in cells.iter().enumerate() {
            count += n;
            let le = match BOUNDS_US.get(i) {
                Some(&us) => (us as f64 / 1e6).to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
        }
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
    out
}

/// A label value escaped as the text format wants it.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Which shard the current thread writes: a slot taken on the thread's first
/// record and given back when it exits, so threads that come and go (tests,
/// restarts) reuse shards instead of crowding the shared one.
mod slot {
    use std::cell::Cell;
    use std::sync::Mutex;

    static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    static NEXT: Mutex<usize> = Mutex::new(0);

    struct Slot(Cell<Option<usize>>);

    impl Drop for Slot {
        fn drop(&mut self) {
            if let Some(i) = self.0.get() {
                FREE.lock().unwrap_or_else(|e| e.into_inner()).push(i);
            }
        }
    }

    thread_local! {
        static SLOT: Slot = const { Slot(Cell::new(None)) };
    }

    /// This thread's slot; `None` while its thread-locals are torn down.
    pub(super) fn index() -> Option<usize> {
        SLOT.try_with(|slot| match slot.0.get() {
            Some(i) => i,
            None => {
                let reused = FREE.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let i = reused.unwrap_or_else(|| {
                    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
                    *next += 1;
                    *next - 1
                });
                slot.0.set(Some(i));
                i
            }
        })
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the line that starts with `prefix` in `text`.
    fn value(text: &str, prefix: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new("test_bounds_seconds", &[("route", "r")]);
        for us in [100, 101, 250, 700_000_000] {
            h.record_us(us);
        }
        let text = render();
        let line = |le: &str| format!("test_bounds_seconds_bucket{{route=\"r\",le=\"{le}\"}}");
        assert_eq!(value(&text, &line("0.0001")), 1.0, "100 µs is in le=0.0001");
        assert_eq!(value(&text, &line("0.00025")), 3.0);
        assert_eq!(value(&text, &line("600")), 3.0);
        assert_eq!(value(&text, &line("+Inf")), 4.0);
        assert_eq!(value(&text, "test_bounds_seconds_count{route=\"r\"}"), 4.0);
        let sum = value(&text, "test_bounds_seconds_sum{route=\"r\"}");
        assert!((sum - 700.000451).abs() < 1e-9, "{sum}");
        assert_eq!(
            text.matches("# TYPE test_bounds_seconds histogram").count(),
            1
        );
    }

    #[test]
    fn threads_beyond_the_shards_and_exited_ones_all_count() {
        let h = Histogram::new("test_threads_seconds", &[]);
        // More threads than shards of their own, all at once, then again:
        // the second wave reuses the first one's slots.
        for _ in 0..2 {
            let threads: Vec<_> = (0..own_shards() + 3)
                .map(|_| {
                    let h = h.clone();
                    std::thread::spawn(move || (0..1000).for_each(|_| h.record_us(1_000)))
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        }
        let n = 2.0 * (own_shards() + 3) as f64 * 1000.0;
        let text = render();
        assert_eq!(value(&text, "test_threads_seconds_count "), n);
        assert_eq!(value(&text, "test_threads_seconds_bucket{le=\"0.001\"}"), n);
        assert_eq!(
            value(&text, "test_threads_seconds_bucket{le=\"0.0005\"}"),
            0.0
        );
        assert!((value(&text, "test_threads_seconds_sum ") - n / 1000.0).abs() < 1e-6);
    }

    #[test]
    fn a_series_made_again_keeps_its_counts_and_labels_are_escaped() {
        let labels = [("route", "a\"b\\c\nd"), ("backend", "x")];
        Histogram::new("test_again_seconds", &labels).record_us(5);
        Histogram::new("test_again_seconds", &labels).record_us(5);
        Histogram::new(
            "test_again_seconds",
            &[("route", "other"), ("backend", "x")],
        )
        .record_us(5);
        let text = render();
        assert_eq!(
            value(
                &text,
                r#"test_again_seconds_count{route="a\"b\\c\nd",backend="x"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"test_again_seconds_count{route="other",backend="x"}"#
            ),
            1.0
        );
    }
}
