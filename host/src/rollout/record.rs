//! Recording a route's sampled requests to a trace. A request hands its
//! record to one writer thread per file through a bounded queue: when the
//! queue is full the record is dropped and counted, and the request never
//! waits. The file is rotated at `max_size`, keeping three old files.

use super::trace::{self, Header, Record, TraceBackend, TraceOutcome};
use super::{Arm, Capture, Ending};
use crate::config::RecordConfig;
use crate::plugin::{Interest, RouterPlugin, wit};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};

/// Records waiting for the writer, at most.
const QUEUE: usize = 8192;
/// How long a busy writer lets records gather before writing them.
const BATCH: std::time::Duration = std::time::Duration::from_millis(50);
/// Old files kept: `.1` (newest) to `.3`.
const KEEP: u32 = 3;

/// A route's recorder.
pub struct Recorder {
    /// Attributes every record carries: the routers' and the config's.
    pub interest: Vec<Interest>,
    /// Body bytes read when an attribute is a body field.
    pub body_peek: usize,
    pub sample: f64,
    threshold: u64,
    header: Arc<Header>,
    writer: Arc<Writer>,
    written: AtomicU64,
    dropped: AtomicU64,
    dropped_total: metrics::Counter,
}

/// The writer thread of one file, shared by every recorder naming it.
struct Writer {
    tx: SyncSender<(Arc<Header>, Box<Record>)>,
    path: PathBuf,
}

// === impl Recorder ===

impl Recorder {
    /// A recorder of `route` writing to `config.path` (relative to
    /// `base`). The file is opened here, so a path that cannot be written
    /// is refused with the config, not found out on the first request.
    pub fn new(
        route: &str,
        config: &RecordConfig,
        base: &Path,
        routers: &[&Arc<RouterPlugin>],
        backends: &[wit::BackendInfo],
        body_peek: usize,
    ) -> Result<Recorder, String> {
        let mut interest: Vec<Interest> = Vec::new();
        let extra = config.attributes.iter().filter_map(|a| Interest::parse(a));
        for i in routers
            .iter()
            .flat_map(|r| r.interest.iter().cloned())
            .chain(extra)
        {
            if !interest.contains(&i) {
                interest.push(i);
            }
        }
        let live = routers.first();
        let header = Header {
            switchyard_trace: trace::FORMAT,
            route: route.to_string(),
            router: live.map(|p| p.name().to_string()),
            router_version: live.map(|p| p.component.hash.clone()),
            attributes: interest.iter().map(Interest::name).collect(),
            load_words: trace::LOAD_WORD_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            backends: backends
                .iter()
                .map(|b| TraceBackend {
                    id: b.id,
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                    labels: b.labels.iter().cloned().collect(),
                })
                .collect(),
        };
        let path = base.join(&config.path);
        let writer = Writer::for_path(&path, config.max_size)?;
        Ok(Recorder {
            interest,
            body_peek,
            sample: config.sample,
            threshold: super::threshold(config.sample),
            header: Arc::new(header),
            writer,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_total: metrics::counter!("switchyard_record_dropped_total", "route" => route.to_string()),
        })
    }

    /// Whether this request is recorded.
    pub fn sampled(&self) -> bool {
        super::sampled(self.threshold)
    }

    /// Whether a recorded attribute is a body field.
    pub fn reads_body(&self) -> bool {
        self.interest.iter().any(Interest::reads_body)
    }

    /// An empty capture for the decision to fill.
    pub fn blank(&self) -> Capture {
        Capture {
            facts: wit::Request {
                method: wit::Method::Other,
                client_ip: wit::IpAddress::V4(0),
            },
            attributes: Vec::new(),
            loads: Vec::new(),
            decided: None,
            failure: None,
        }
    }

    /// Queues the record of a finished request; drops it when the writer
    /// is behind.
    pub fn write(&self, capture: Capture, arm: Option<Arm>, ending: Ending) {
        let Some(decision) = capture.decided else {
            return;
        };
        let record = Box::new(Record {
            t: crate::clock::wall_clock_ms(),
            method: super::method_name(capture.facts.method).to_string(),
            client_ip: super::ip_text(capture.facts.client_ip),
            attrs: self
                .interest
                .iter()
                .zip(&capture.attributes)
                .map(|(i, v)| trace::attr_json(&super::shown_value(i, v)))
                .collect(),
            loads: capture.loads,
            decision,
            router_failure: capture.failure.map(str::to_string),
            version: arm.map(|a| a.name().to_string()),
            outcome: TraceOutcome {
                backend: ending.backend,
                status: ending.status,
                latency_us: ending.latency_us,
                ttfb_us: ending.ttfb_us,
                prompt_tokens: ending.prompt_tokens,
                completion_tokens: ending.completion_tokens,
                error: ending.error.map(str::to_string),
            },
        });
        match self.writer.tx.try_send((self.header.clone(), record)) {
            Ok(()) => {
                self.written.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
                self.dropped_total.increment(1);
            }
        }
    }

    /// What `/status` shows of the record.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.writer.path.display().to_string(),
            "sample": self.sample,
            "queued": self.written.load(Relaxed),
            "dropped": self.dropped.load(Relaxed),
            "attributes": self.header.attributes,
        })
    }
}

// === impl Writer ===

impl Writer {
    /// The writer of `path`: the running one if a recorder already names
    /// it (across reloads too), else a new thread.
    fn for_path(path: &Path, max_size: u64) -> Result<Arc<Writer>, String> {
        static LIVE: Mutex<Option<HashMap<PathBuf, Weak<Writer>>>> = Mutex::new(None);
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let live = live.get_or_insert_with(HashMap::new);
        live.retain(|_, w| w.strong_count() > 0);
        if let Some(w) = live.get(path).and_then(Weak::upgrade) {
            return Ok(w);
        }
        let file = open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let target = path.to_path_buf();
        std::thread::Builder::new()
            .name("switchyard-record".into())
            .spawn(move || write_loop(&target, file, max_size, &rx))
            .map_err(|e| format!("cannot start the record writer: {e}"))?;
        let writer = Arc::new(Writer {
            tx,
            path: path.to_path_buf(),
        });
        live.insert(path.to_path_buf(), Arc::downgrade(&writer));
        Ok(writer)
    }
}

fn open(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("record.path {}: {e}", path.display()))
}

/// Writes records until every recorder of the file is gone, flushing
/// whenever the queue runs dry.
fn write_loop(
    path: &Path,
    file: std::fs::File,
    max_size: u64,
    rx: &Receiver<(Arc<Header>, Box<Record>)>,
) {
    let mut size = file.metadata().map_or(0, |m| m.len());
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut last: Option<Arc<Header>> = None;
    let mut line = Vec::with_capacity(4096);
    let mut busy_until = std::time::Instant::now();
    loop {
        let (header, record) = match rx.try_recv() {
            Ok(next) => next,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                let _ = out.flush();
                // While records keep coming, collect them in batches: a
                // sleeping writer is not woken by every record (a futex
                // wake and a write per record cost the request path's
                // core more than the record itself). Idle, it blocks.
                if std::time::Instant::now() < busy_until {
                    std::thread::sleep(BATCH);
                    continue;
                }
                match rx.recv() {
                    Ok(next) => next,
                    Err(_) => break,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        busy_until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        line.clear();
        let fresh = last
            .as_ref()
            .is_none_or(|h| !Arc::ptr_eq(h, &header) && **h != *header);
        if fresh || size == 0 {
            push_json(&mut line, &*header);
        }
        push_json(&mut line, &*record);
        if size > 0 && size + line.len() as u64 > max_size {
            let _ = out.flush();
            match rotate(path) {
                Ok(file) => {
                    out = std::io::BufWriter::with_capacity(64 * 1024, file);
                    size = 0;
                    if !fresh {
                        let mut with_header = Vec::with_capacity(line.len() + 1024);
                        push_json(&mut with_header, &*header);
                        with_header.extend_from_slice(&line);
                        line = with_header;
                    }
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot rotate the trace: {e}; recording stops");
                    return;
                }
            }
        }
        if let Err(e) = out.write_all(&line) {
            tracing::error!(path = %path.display(), "cannot write the trace: {e}; recording stops");
            return;
        }
        size += line.len() as u64;
        last = Some(header);
    }
    let _ = out.flush();
}

fn push_json<T: serde::Serialize>(line: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *line, value).is_ok() {
        line.push(b'\n');
    }
}

/// Moves `path` to `path.1` (and older files one further), and opens a new
/// `path`.
fn rotate(path: &Path) -> Result<std::fs::File, String> {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    for n in (1..KEEP).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    std::fs::rename(path, numbered(1)).map_err(|e| e.to_string())?;
    open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(recorder: &Recorder) {
        let mut capture = recorder.blank();
        capture.loads = vec![0; crate::plugin::LOAD_WORDS];
        capture.decided = Some(super::super::Decided::Forward(vec![0]));
        recorder.write(
            capture,
            None,
            Ending {
                status: 200,
                ..Ending::default()
            },
        );
    }

    #[test]
    fn the_trace_rotates_at_its_size_and_every_file_starts_with_a_header() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = RecordConfig {
            path: "t.jsonl".into(),
            sample: 1.0,
            max_size: 4096,
            attributes: vec!["header:x-user".into()],
        };
        let recorder = Recorder::new("r", &config, dir.path(), &[], &[], 0).expect("recorder");
        assert_eq!(recorder.to_json()["attributes"][0], "header:x-user");
        // About 330 bytes a record: some 3 files of 4 KiB.
        for _ in 0..30 {
            record(&recorder);
        }
        let path = dir.path().join("t.jsonl");
        let numbered = |n: u32| dir.path().join(format!("t.jsonl.{n}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let records = |p: &Path| {
            std::fs::read_to_string(p).map_or(0, |t| {
                t.lines()
                    .filter(|l| !l.contains("switchyard_trace"))
                    .count()
            })
        };
        while (1..=KEEP).map(|n| records(&numbered(n))).sum::<usize>() + records(&path) < 30 {
            assert!(
                std::time::Instant::now() < deadline,
                "records not written: {:?}",
                std::fs::read_dir(dir.path()).map(|d| d
                    .filter_map(|e| e.ok())
                    .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                    .collect::<Vec<_>>())
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!numbered(KEEP + 1).exists(), "at most {KEEP} old files");
        for p in [path, numbered(1), numbered(2)] {
            let text = std::fs::read_to_string(&p).expect("trace file");
            assert!(
                text.len() as u64 <= 4096 + 1024,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            let mut lines = text.lines();
            let first = lines.next().unwrap_or_default();
            assert!(
                matches!(trace::parse_line(first), Ok(trace::Line::Header(_))),
                "{first}"
            );
            assert!(lines.all(|l| matches!(trace::parse_line(l), Ok(trace::Line::Record(_)))));
        }
    }

    #[test]
    fn a_path_that_cannot_be_written_is_refused_with_the_config() {
        let config = RecordConfig {
            path: "/nonexistent/dir/t.jsonl".into(),
            sample: 1.0,
            max_size: 1 << 20,
            attributes: vec![],
        };
        let refused = Recorder::new("r", &config, Path::new("/"), &[], &[], 0).err();
        assert!(refused.is_some_and(|e| e.contains("record.path /nonexistent/dir/t.jsonl")));
    }
}
