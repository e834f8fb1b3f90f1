//! Long jobs, decoupled: `switchyard` replicas on a real `redis-server`,
//! workers that answer `202` and append events to the job's stream, and
//! real clients (Python `websockets`, `http.client` for server-sent
//! events) that disconnect, resume on another replica, and outlive the
//! replica they started on. Times are scaled down to seconds.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{Redis, Replica, eventually, exchange, free_port};

/// What a test worker does with a job.
#[derive(Clone, Copy)]
enum Behaviour {
    /// `202`, then `steps` progress events `step` apart, then the result.
    Steps { steps: usize, step: Duration },
    /// `202`, `steps` progress events, then silence: a worker that died.
    Dies { steps: usize },
    /// Answers the request itself after `after`.
    Direct { after: Duration },
}

/// Where a worker appends events: Redis, or the proxy's admin API.
#[derive(Clone)]
enum Sink {
    Redis(String),
    Admin(Arc<Mutex<Option<SocketAddr>>>),
}

/// A worker on a loopback port; records the job ids it was given.
struct Worker {
    addr: SocketAddr,
    jobs: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(name: &'static str, behaviour: Behaviour, sink: Sink) -> Worker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind worker");
        let addr = listener.local_addr().expect("addr");
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let seen = jobs.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, sink) = (seen.clone(), sink.clone());
                std::thread::spawn(move || serve_job(stream, name, behaviour, &sink, &seen));
            }
        });
        Worker { addr, jobs }
    }

    fn jobs(&self) -> Vec<String> {
        self.jobs.lock().expect("lock").clone()
    }
}

fn serve_job(
    mut stream: TcpStream,
    name: &str,
    behaviour: Behaviour,
    sink: &Sink,
    seen: &Mutex<Vec<String>>,
) {
    let (head, body) = read_request(&mut stream);
    let header = |h: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(h).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let (job, reply_to) = (
        header("x-switchyard-job-id"),
        header("x-switchyard-reply-to"),
    );
    seen.lock().expect("lock").push(job.clone());
    let answer = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (steps, step, dies) = match behaviour {
        Behaviour::Direct { after } => {
            std::thread::sleep(after);
            let text = format!(
                r#"{{"worker":"{name}","echo":{}}}"#,
                serde_json::json!(body)
            );
            let _ = stream.write_all(answer("200 OK", &text).as_bytes());
            return;
        }
        Behaviour::Steps { steps, step } => (steps, step, false),
        Behaviour::Dies { steps } => (steps, Duration::from_millis(100), true),
    };
    let _ = stream.write_all(answer("202 Accepted", "{}").as_bytes());
    drop(stream);
    for i in 1..=steps {
        std::thread::sleep(step);
        append(
            sink,
            &job,
            &reply_to,
            "progress",
            &format!(r#"{{"step":{i},"worker":"{name}"}}"#),
        );
    }
    if !dies {
        let result =
            format!(r#"{{"worker":"{name}","usage":{{"prompt_tokens":7,"completion_tokens":3}}}}"#);
        append(sink, &job, &reply_to, "result", &result);
    }
}

fn append(sink: &Sink, job: &str, reply_to: &str, kind: &str, data: &str) {
    match sink {
        Sink::Redis(url) => {
            let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
            else {
                return; // Redis is down in that test: the event is lost, as a worker's would be
            };
            let _: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(reply_to)
                .arg("*")
                .arg("type")
                .arg(kind)
                .arg("data")
                .arg(data)
                .query(&mut c);
        }
        Sink::Admin(admin) => {
            let admin = admin.lock().expect("lock").expect("admin address set");
            let body = serde_json::json!({"type": kind, "data": data}).to_string();
            let (status, text) = exchange(
                admin,
                &format!(
                    "POST /jobs/{job}/events HTTP/1.1\r\nhost: admin\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                ),
            );
            assert_eq!(status, 201, "{text}");
        }
    }
}

/// Reads one request: its head and its `content-length` body.
fn read_request(stream: &mut TcpStream) -> (String, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return (String::new(), String::new());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    (head, body)
}

/// A job route on `workers`, its events in `store`.
fn job_config(workers: &[&Worker], store: &str, jobs: &str) -> String {
    let backends: Vec<String> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| format!(r#"{{ name = "w{}", address = "{}" }}"#, i + 1, w.addr))
        .collect();
    format!(
        r#"[pools.workers]
backends = [{}]

[[routes]]
name = "agents"
pool = "workers"
match = {{ path_prefix = "/agents" }}
mode = "job"
jobs = {{ store = "{store}", heartbeat = "1s", {jobs} }}
"#,
        backends.join(", ")
    )
}

fn python() -> String {
    std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A Python client following a job (`tests/python/job_client.py`), its
/// lines read as they come.
struct Client {
    child: Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Client {
    fn start(args: &[&str]) -> Client {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/job_client.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with websockets (run ./scripts/test.sh)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("client printed {line:?}: {e}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Client { child, lines }
    }

    /// The next line, within `limit`.
    fn next(&self, limit: Duration) -> serde_json::Value {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no line from the client within {limit:?}: {e}"))
    }

    /// Every line until the client's `end` line.
    fn rest(&self, limit: Duration) -> (Vec<serde_json::Value>, String) {
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next(left);
            if let Some(end) = line.get("end") {
                return (events, end.as_str().unwrap_or_default().to_string());
            }
            events.push(line);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn job_of(events: &[serde_json::Value]) -> String {
    events[0]["data"]["job"]
        .as_str()
        .expect("the first event is `accepted` with the job id")
        .to_string()
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let (_, text) = exchange(
        admin,
        "GET /status HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    );
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("status {body:?}: {e}"))
}

fn post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Two replicas on one Redis with the same config.
fn two_replicas(redis: &Redis, config: &str) -> (Replica, Replica) {
    (
        Replica::launch(&redis.url(), config),
        Replica::launch(&redis.url(), config),
    )
}

/// A new job by event stream on `addr`, dropped after `stop_after` events.
fn sse_job(addr: SocketAddr, stop_after: &str) -> Client {
    let url = format!("http://{addr}/agents/run");
    Client::start(&["sse", &url, "--body", "{}", "--stop-after", stop_after])
}

const STEPS: usize = 5;

#[test]
fn websocket_and_sse_clients_get_every_event_in_order() {
    let redis = Redis::start(free_port());
    let step = Duration::from_millis(300);
    let worker = Worker::start(
        "w1",
        Behaviour::Steps { steps: STEPS, step },
        Sink::Redis(redis.url()),
    );
    let replica = Replica::launch(
        &redis.url(),
        &job_config(&[&worker], "redis", "job_timeout = \"5s\""),
    );
    let ws_url = format!("ws://{}/agents/run", replica.addr);
    let sse_url = format!("http://{}/agents/run", replica.addr);
    let ws = Client::start(&["ws", &ws_url, "--body", r#"{"task":"by websocket"}"#]);
    let sse = Client::start(&["sse", &sse_url, "--body", r#"{"task":"by sse"}"#]);
    let mut want = vec!["accepted".to_string()];
    want.extend(std::iter::repeat_n("progress".to_string(), STEPS));
    want.push("result".into());
    for (client, end) in [(&ws, "closed 1000"), (&sse, "eof")] {
        let (events, how) = client.rest(Duration::from_secs(20));
        assert_eq!(kinds(&events), want, "{events:?}\n{}", replica.log());
        assert_eq!(how, end);
        let steps: Vec<u64> = events[1..=STEPS]
            .iter()
            .map(|e| e["data"]["step"].as_u64().expect("step"))
            .collect();
        assert_eq!(steps, (1..=STEPS as u64).collect::<Vec<_>>());
        assert_eq!(events[STEPS + 1]["data"]["worker"], "w1");
        let ids: Vec<&str> = events
            .iter()
            .map(|e| e["id"].as_str().expect("id"))
            .collect();
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "ids are distinct"
        );
    }
    // The worker got both jobs, with the stream to write to.
    assert_eq!(worker.jobs().len(), 2);
    eventually("both jobs finished", || {
        status(replica.admin)["routes"][0]["jobs"]["finished"] == 2
    });
    // The results' usage counts like a response's.
    let (_, metrics) = exchange(
        replica.admin,
        "GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    );
    let prompt: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_tokens_total{") && l.contains(r#"kind="prompt""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(prompt, 14.0, "7 prompt tokens per job");
    assert!(
        metrics.contains("switchyard_job_relay_lag_seconds"),
        "relay lag is measured"
    );
}

#[test]
fn a_client_resumes_on_another_replica_without_loss_or_duplicates() {
    let redis = Redis::start(free_port());
    let step = Duration::from_millis(300);
    let worker = Worker::start(
        "w1",
        Behaviour::Steps { steps: STEPS, step },
        Sink::Redis(redis.url()),
    );
    let config = job_config(&[&worker], "redis", "job_timeout = \"5s\"");
    let (a, b) = two_replicas(&redis, &config);
    let first = sse_job(a.addr, "3");
    let (seen, how) = first.rest(Duration::from_secs(10));
    assert_eq!(how, "stopped");
    assert_eq!(kinds(&seen), ["accepted", "progress", "progress"]);
    let job = job_of(&seen);
    let last = seen[2]["id"].as_str().expect("id").to_string();
    // Another replica, by event stream with Last-Event-ID...
    let resumed = Client::start(&[
        "sse",
        &format!("http://{}/jobs/{job}", b.addr),
        "--last-event-id",
        &last,
    ]);
    let (rest, how) = resumed.rest(Duration::from_secs(20));
    assert_eq!(how, "eof", "{rest:?}\n{}", b.log());
    let mut all = seen.clone();
    all.extend(rest.iter().cloned());
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no duplicate: {ids:?}"
    );
    let mut want = vec!["accepted".to_string()];
    want.extend(std::iter::repeat_n("progress".to_string(), STEPS));
    want.push("result".into());
    assert_eq!(kinds(&all), want, "nothing lost");
    // ...and by WebSocket from the same point: the same events again.
    let ws = Client::start(&[
        "ws",
        &format!("ws://{}/jobs/{job}?last_event_id={last}", a.addr),
    ]);
    let (again, how) = ws.rest(Duration::from_secs(10));
    assert_eq!(how, "closed 1000");
    assert_eq!(again, rest);
    assert_eq!(status(b.admin)["routes"][0]["jobs"]["resumed"], 1);
    // A finished job is still there as JSON.
    let (code, text) = exchange(
        b.addr,
        &format!("GET /jobs/{job} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"),
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains(r#""state":"done""#), "{text}");
}

#[test]
fn killing_the_replica_that_holds_the_client_loses_nothing() {
    let redis = Redis::start(free_port());
    let step = Duration::from_millis(400);
    let worker = Worker::start(
        "w1",
        Behaviour::Steps { steps: STEPS, step },
        Sink::Redis(redis.url()),
    );
    let config = job_config(&[&worker], "redis", "job_timeout = \"5s\"");
    let (mut a, b) = two_replicas(&redis, &config);
    let client = Client::start(&["ws", &format!("ws://{}/agents/run", a.addr), "--body", "{}"]);
    let accepted = client.next(Duration::from_secs(10));
    let progress = client.next(Duration::from_secs(10));
    assert_eq!(progress["type"], "progress");
    a.child.kill().expect("kill replica a");
    let _ = a.child.wait();
    let (_, how) = client.rest(Duration::from_secs(10));
    assert!(
        how.starts_with("closed") || how.starts_with("broken"),
        "{how}"
    );
    let job = job_of(std::slice::from_ref(&accepted));
    let last = progress["id"].as_str().expect("id");
    let resumed = Client::start(&[
        "ws",
        &format!("ws://{}/agents/run?job={job}&last_event_id={last}", b.addr),
    ]);
    let (rest, how) = resumed.rest(Duration::from_secs(20));
    assert_eq!(how, "closed 1000", "{}", b.log());
    assert_eq!(rest.len(), STEPS, "progress 2..=5 and the result: {rest:?}");
    assert_eq!(rest.last().expect("result")["type"], "result");
    assert_eq!(rest[0]["data"]["step"], 2);
}

#[test]
fn a_dead_worker_ends_the_job_with_an_error_within_job_timeout() {
    let redis = Redis::start(free_port());
    let worker = Worker::start("w1", Behaviour::Dies { steps: 1 }, Sink::Redis(redis.url()));
    let replica = Replica::launch(
        &redis.url(),
        &job_config(&[&worker], "redis", "job_timeout = \"1s\""),
    );
    let client = Client::start(&[
        "sse",
        &format!("http://{}/agents/run", replica.addr),
        "--body",
        "{}",
    ]);
    let started = Instant::now();
    let (events, how) = client.rest(Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(
        kinds(&events),
        ["accepted", "progress", "error"],
        "{events:?}"
    );
    assert_eq!(how, "eof");
    let error = &events[2]["data"];
    assert_eq!(error["error"], "job_timeout", "{error}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("w1")),
        "{error}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the error came after {took:?}"
    );
    let s = status(replica.admin);
    assert_eq!(s["routes"][0]["jobs"]["timed_out"], 1, "{s}");
    // The silence counted against the worker like a timeout.
    assert!(
        s["pools"][0]["backends"][0]["state"]["error_rate"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{s}"
    );
}

#[test]
fn a_job_whose_worker_and_replica_both_died_still_ends_with_an_error() {
    let redis = Redis::start(free_port());
    let worker = Worker::start("w1", Behaviour::Dies { steps: 1 }, Sink::Redis(redis.url()));
    let config = job_config(&[&worker], "redis", "job_timeout = \"1s\"");
    let (mut a, b) = two_replicas(&redis, &config);
    let client = sse_job(a.addr, "2");
    let (seen, _) = client.rest(Duration::from_secs(10));
    assert_eq!(kinds(&seen), ["accepted", "progress"]);
    // The replica that watched the job goes before the job times out.
    a.child.kill().expect("kill a");
    let _ = a.child.wait();
    let started = Instant::now();
    let job = job_of(&seen);
    let last = seen[1]["id"].as_str().expect("id");
    let resumed = Client::start(&[
        "sse",
        &format!("http://{}/jobs/{job}", b.addr),
        "--last-event-id",
        last,
    ]);
    let (rest, how) = resumed.rest(Duration::from_secs(15));
    assert_eq!(how, "eof", "{rest:?}");
    assert_eq!(kinds(&rest), ["error"], "{rest:?}\n{}", b.log());
    assert_eq!(rest[0]["data"]["error"], "job_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "after {:?}",
        started.elapsed()
    );
    // The error is in the log for everyone: a later reader sees the end.
    let (_, text) = exchange(
        b.addr,
        &format!("GET /jobs/{job} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"),
    );
    assert!(text.contains(r#""state":"failed""#), "{text}");
}

#[test]
fn least_outstanding_counts_a_running_job_on_its_worker() {
    let admin: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let step = Duration::from_millis(500);
    let slow = Worker::start(
        "w1",
        Behaviour::Steps { steps: 6, step },
        Sink::Admin(admin.clone()),
    );
    let quick = Worker::start(
        "w2",
        Behaviour::Direct {
            after: Duration::ZERO,
        },
        Sink::Admin(admin.clone()),
    );
    let replica = Replica::launch(
        "memory",
        &job_config(&[&slow, &quick], "memory", "job_timeout = \"5s\""),
    );
    *admin.lock().expect("lock") = Some(replica.admin);
    // Jobs until one runs on the slow worker (the quick one answers each
    // at once, so its count is back to zero before the next).
    while slow.jobs().is_empty() {
        let (code, text) = post(
            replica.addr,
            "/agents/run",
            "prefer: respond-async\r\n",
            "{}",
        );
        assert_eq!(code, 202, "{text}");
        std::thread::sleep(Duration::from_millis(50));
        assert!(quick.jobs().len() < 10, "no job reached the slow worker");
    }
    // Well after its HTTP exchange (the worker said 202 at once), the job
    // still counts on its worker.
    std::thread::sleep(Duration::from_millis(300));
    let s = status(replica.admin);
    assert_eq!(s["pools"][0]["backends"][0]["state"]["in_flight"], 1, "{s}");
    assert_eq!(s["routes"][0]["jobs"]["in_flight"], 1, "{s}");
    // So least-outstanding sends every job meanwhile to the other worker.
    let before = quick.jobs().len();
    for _ in 0..6 {
        let (code, text) = post(replica.addr, "/agents/run", "", "{}");
        assert_eq!(code, 200, "{text}");
    }
    assert_eq!(
        slow.jobs().len(),
        1,
        "least-outstanding sent more to the busy worker"
    );
    assert_eq!(quick.jobs().len(), before + 6);
    let mut done = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done && Instant::now() < deadline {
        let s = status(replica.admin);
        done = s["routes"][0]["jobs"]["in_flight"] == 0
            && s["pools"][0]["backends"][0]["state"]["in_flight"] == 0;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        done,
        "the slow job finished and freed its worker: {}",
        status(replica.admin)
    );
}

#[test]
fn a_job_no_worker_can_take_ends_with_503() {
    let admin: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let step = Duration::from_millis(300);
    let worker = Worker::start(
        "w1",
        Behaviour::Steps { steps: 4, step },
        Sink::Admin(admin.clone()),
    );
    let config = job_config(&[&worker], "memory", "job_timeout = \"5s\"")
        .replace("[pools.workers]\n", "[pools.workers]\nmax_in_flight = 1\n");
    let replica = Replica::launch("memory", &config);
    *admin.lock().expect("lock") = Some(replica.admin);
    let (code, text) = post(
        replica.addr,
        "/agents/run",
        "prefer: respond-async\r\n",
        "{}",
    );
    assert_eq!(code, 202, "{text}");
    eventually("the first job runs on the worker", || {
        worker.jobs().len() == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    // The worker runs one job at a time: the next has nowhere to go.
    let (code, text) = post(replica.addr, "/agents/run", "", "{}");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("at capacity"), "{text}");
    assert_eq!(worker.jobs().len(), 1);
    // Once the first has ended, the worker takes jobs again.
    eventually("the first job ended", || {
        status(replica.admin)["routes"][0]["jobs"]["finished"] == 1
    });
    let (code, text) = post(
        replica.addr,
        "/agents/run",
        "prefer: respond-async\r\n",
        "{}",
    );
    assert_eq!(code, 202, "{text}");
    eventually("the worker took the next job", || worker.jobs().len() == 2);
}

#[test]
fn the_in_process_store_serves_direct_answers_polls_and_limits() {
    let worker = Worker::start(
        "w1",
        Behaviour::Direct {
            after: Duration::from_millis(800),
        },
        Sink::Redis(String::new()),
    );
    let replica = Replica::launch(
        "memory",
        &job_config(
            &[&worker],
            "memory",
            "job_timeout = \"5s\", max_in_flight = 1",
        ),
    );
    // A plain request waits for the job's result; the worker answered it
    // directly.
    let waiting = std::thread::spawn({
        let addr = replica.addr;
        move || post(addr, "/agents/run", "", r#"{"q":1}"#)
    });
    std::thread::sleep(Duration::from_millis(300));
    // One job may run at once: the next is refused while the first runs.
    let (code, text) = post(
        replica.addr,
        "/agents/run",
        "prefer: respond-async\r\n",
        "{}",
    );
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("jobs.max_in_flight"), "{text}");
    let (code, text) = waiting.join().expect("join");
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains(r#""worker":"w1""#) && text.contains("x-switchyard-job-id"),
        "{text}"
    );
    // An async job, polled until it is done.
    let (code, text) = post(
        replica.addr,
        "/agents/run",
        "prefer: respond-async\r\n",
        r#"{"q":2}"#,
    );
    assert_eq!(code, 202, "{text}");
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("location")
        .trim()
        .to_string();
    eventually("the polled job is done", || {
        let (_, text) = exchange(
            replica.addr,
            &format!("GET {location} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"),
        );
        text.contains(r#""state":"done""#) && text.contains(r#"\"q\":2"#)
    });
    let s = status(replica.admin);
    assert_eq!(s["routes"][0]["jobs"]["refused"], 1, "{s}");
    assert_eq!(s["jobs"]["store"], "memory");
    // Unknown and malformed ids, and writes to /jobs, are refused plainly.
    for (request, want) in [
        (
            format!(
                "GET /jobs/{} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n",
                "0".repeat(32)
            ),
            404,
        ),
        (
            "GET /jobs/../etc HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n".to_string(),
            404,
        ),
        (
            format!("DELETE {location} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"),
            405,
        ),
        (
            format!(
                "GET {location} HTTP/1.1\r\nhost: p\r\nlast-event-id: nope\r\nconnection: close\r\n\r\n"
            ),
            400,
        ),
    ] {
        assert_eq!(exchange(replica.addr, &request).0, want, "{request}");
    }
}

#[test]
fn an_unreachable_redis_refuses_new_jobs_and_relays_report_it() {
    let mut redis = Redis::start(free_port());
    let step = Duration::from_millis(300);
    let worker = Worker::start(
        "w1",
        Behaviour::Steps { steps: 20, step },
        Sink::Redis(redis.url()),
    );
    let replica = Replica::launch(
        &redis.url(),
        &job_config(&[&worker], "redis", "job_timeout = \"2s\""),
    );
    let client = Client::start(&[
        "sse",
        &format!("http://{}/agents/run", replica.addr),
        "--body",
        "{}",
    ]);
    assert_eq!(client.next(Duration::from_secs(10))["type"], "accepted");
    assert_eq!(client.next(Duration::from_secs(10))["type"], "progress");
    redis.kill();
    let started = Instant::now();
    // The relay says so, then gives up on the job once it has heard
    // nothing for job_timeout: nothing hangs.
    let (events, how) = client.rest(Duration::from_secs(15));
    let status_event = events
        .iter()
        .find(|e| e["type"] == "status")
        .unwrap_or_else(|| panic!("no status event in {events:?}"));
    assert_eq!(status_event["data"]["store"], "unavailable", "{events:?}");
    assert_eq!(
        events.last().expect("an end")["type"],
        "error",
        "{events:?}"
    );
    assert_eq!(how, "eof");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A new job is refused at once with the reason.
    let asked = Instant::now();
    let (code, text) = post(
        replica.addr,
        "/agents/run",
        "accept: text/event-stream\r\n",
        "{}",
    );
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("job store unavailable"), "{text}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(status(replica.admin)["routes"][0]["jobs"]["refused"].as_u64() >= Some(1));
}

#[test]
fn the_long_jobs_example_runs() {
    // examples/long-jobs/run.sh: Redis, two workers, two replicas, a
    // client that drops halfway and resumes on the other replica; it exits
    // non-zero unless every event arrived once and in order.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/long-jobs/run.sh");
    // Bounded: `timeout` stops the whole run should anything hang.
    let out = Command::new("timeout")
        .args(["120", "bash", script])
        .env("SWITCHYARD_BIN", env!("CARGO_BIN_EXE_switchyard"))
        .env("STEPS", "4")
        .env("STEP", "0.3")
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4 progress events, result"), "{stdout}");
    assert!(stdout.contains("-- resumed on 127.0.0.1:8082"), "{stdout}");
}
