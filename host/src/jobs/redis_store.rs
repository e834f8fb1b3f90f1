//! Jobs on Redis: one stream per job. A command thread appends and reads
//! ranges; a reader thread follows every subscribed stream with one
//! blocking `XREAD`, woken with `CLIENT UNBLOCK` when a subscription is
//! added, and tells subscribers when Redis goes away and comes back.

use super::redis_reply::{entries, streams_of};
use super::{Delivery, Event, EventId, MAX_READ, StoreError};
use redis::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

/// How long the reader's `XREAD` blocks before it looks again. A new
/// subscription wakes it with `CLIENT UNBLOCK`; this bounds the wait of one
/// that arrives just before the read starts, and the idle cost of sending
/// every followed key again.
const BLOCK: Duration = Duration::from_secs(2);
/// Pause between attempts while Redis is unreachable.
const RETRY: Duration = Duration::from_millis(500);

pub(super) struct RedisJobs {
    commands: std_mpsc::Sender<Command>,
    reader: std_mpsc::Sender<Follow>,
    /// The reader connection's `CLIENT ID`, 0 while it has none.
    reader_id: Arc<AtomicI64>,
    address: String,
    timeout: Duration,
}

enum Command {
    Append {
        key: String,
        kind: String,
        data: String,
        ttl_ms: u64,
        reply: oneshot::Sender<Result<EventId, StoreError>>,
    },
    Read {
        key: String,
        after: Option<EventId>,
        reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
    },
    Expire {
        key: String,
        ttl_ms: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Wakes the reader's blocking read, so it takes new subscriptions.
    Unblock(i64),
}

/// A subscription for the reader thread to follow.
struct Follow {
    key: String,
    after: Option<EventId>,
    tx: UnboundedSender<Delivery>,
}

impl RedisJobs {
    pub(super) fn start(
        url: &str,
        address: String,
        timeout: Duration,
    ) -> Result<RedisJobs, String> {
        let client = redis::Client::open(url).map_err(|e| format!("jobs.store {address}: {e}"))?;
        let (commands, command_rx) = std_mpsc::channel();
        let (reader, follow_rx) = std_mpsc::channel();
        let reader_id = Arc::new(AtomicI64::new(0));
        let link = Link {
            client: client.clone(),
            address: address.clone(),
            timeout,
        };
        {
            let link = link.clone();
            std::thread::Builder::new()
                .name("switchyard-jobs".into())
                .spawn(move || run_commands(link, command_rx))
                .map_err(|e| format!("cannot start the job store thread: {e}"))?;
        }
        {
            let reader_id = reader_id.clone();
            std::thread::Builder::new()
                .name("switchyard-jobs-read".into())
                .spawn(move || run_reader(link, follow_rx, reader_id))
                .map_err(|e| format!("cannot start the job store thread: {e}"))?;
        }
        Ok(RedisJobs {
            commands,
            reader,
            reader_id,
            address,
            timeout,
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(make(tx)).is_err() {
            return Err(StoreError::Unavailable(
                "the job store thread has stopped".into(),
            ));
        }
        // The thread bounds each attempt; this bounds the queue wait too.
        match tokio::time::timeout(self.timeout * 4 + Duration::from_secs(1), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "the job store thread has stopped".into(),
            )),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {} did not answer in time",
                self.address
            ))),
        }
    }

    pub(super) async fn append(
        &self,
        key: String,
        kind: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<EventId, StoreError> {
        let (kind, data) = (kind.to_string(), data.to_string());
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.call(|reply| Command::Append {
            key,
            kind,
            data,
            ttl_ms,
            reply,
        })
        .await
    }

    pub(super) async fn keep(&self, key: String, ttl: Duration) -> Result<(), StoreError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.call(|reply| Command::Expire { key, ttl_ms, reply })
            .await
    }

    pub(super) async fn read(
        &self,
        key: String,
        after: Option<EventId>,
    ) -> Result<Vec<Event>, StoreError> {
        self.call(|reply| Command::Read { key, after, reply }).await
    }

    pub(super) fn subscribe(
        &self,
        key: String,
        after: Option<EventId>,
        tx: UnboundedSender<Delivery>,
    ) {
        let _ = self.reader.send(Follow { key, after, tx });
        // Wake the reader's blocking read so it takes the new stream now.
        let reader = self.reader_id.load(Relaxed);
        if reader != 0 {
            let _ = self.commands.send(Command::Unblock(reader));
        }
    }
}

/// How to reach Redis.
#[derive(Clone)]
struct Link {
    client: redis::Client,
    address: String,
    timeout: Duration,
}

impl Link {
    fn connect(&self, read_timeout: Duration) -> Result<redis::Connection, StoreError> {
        let c = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| self.unavailable(&e))?;
        c.set_read_timeout(Some(read_timeout))
            .and_then(|()| c.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.unavailable(&e))?;
        Ok(c)
    }

    fn unavailable(&self, e: &redis::RedisError) -> StoreError {
        StoreError::Unavailable(format!("redis at {}: {e}", self.address))
    }

    fn error(&self, e: &redis::RedisError) -> StoreError {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            self.unavailable(e)
        } else {
            StoreError::Refused(e.to_string())
        }
    }
}

/// The command thread: one connection, remade after a failure, and left
/// alone for [`RETRY`] once Redis is unreachable so callers fail at once.
fn run_commands(link: Link, rx: std_mpsc::Receiver<Command>) {
    let mut connection: Option<redis::Connection> = None;
    let mut down_until: Option<Instant> = None;
    while let Ok(command) = rx.recv() {
        let mut conn = |connection: &mut Option<redis::Connection>| -> Result<(), StoreError> {
            if connection.is_some() {
                return Ok(());
            }
            if let Some(t) = down_until
                && Instant::now() < t
            {
                return Err(StoreError::Unavailable(format!(
                    "redis at {} is unreachable",
                    link.address
                )));
            }
            match link.connect(link.timeout) {
                Ok(c) => {
                    *connection = Some(c);
                    down_until = None;
                    Ok(())
                }
                Err(e) => {
                    down_until = Some(Instant::now() + RETRY);
                    Err(e)
                }
            }
        };
        match command {
            Command::Append {
                key,
                kind,
                data,
                ttl_ms,
                reply,
            } => {
                let result = conn(&mut connection).and_then(|()| {
                    let c = connection.as_mut().expect("connected");
                    let mut pipe = redis::pipe();
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("type")
                        .arg(&kind)
                        .arg("data")
                        .arg(&data)
                        .cmd("PEXPIRE")
                        .arg(&key)
                        .arg(ttl_ms)
                        .ignore();
                    let (id,): (String,) = pipe.query(c).map_err(|e| link.error(&e))?;
                    EventId::parse(&id)
                        .ok_or_else(|| StoreError::Refused(format!("XADD answered {id:?}")))
                });
                if matches!(result, Err(StoreError::Unavailable(_))) {
                    connection = None;
                }
                let _ = reply.send(result);
            }
            Command::Read { key, after, reply } => {
                let result = conn(&mut connection).and_then(|()| {
                    let c = connection.as_mut().expect("connected");
                    let start = after.map_or("-".to_string(), |a| format!("({a}"));
                    let value: Value = redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(MAX_READ)
                        .query(c)
                        .map_err(|e| link.error(&e))?;
                    Ok(entries(&value))
                });
                if matches!(result, Err(StoreError::Unavailable(_))) {
                    connection = None;
                }
                let _ = reply.send(result);
            }
            Command::Expire { key, ttl_ms, reply } => {
                let result = conn(&mut connection).and_then(|()| {
                    let c = connection.as_mut().expect("connected");
                    redis::cmd("PEXPIRE")
                        .arg(&key)
                        .arg(ttl_ms)
                        .query::<Value>(c)
                        .map(drop)
                        .map_err(|e| link.error(&e))
                });
                if matches!(result, Err(StoreError::Unavailable(_))) {
                    connection = None;
                }
                let _ = reply.send(result);
            }
            Command::Unblock(client) => {
                if conn(&mut connection).is_ok() {
                    let c = connection.as_mut().expect("connected");
                    let sent: redis::RedisResult<Value> =
                        redis::cmd("CLIENT").arg("UNBLOCK").arg(client).query(c);
                    if sent.is_err() {
                        connection = None;
                    }
                }
            }
        }
    }
}

/// Subscribers of one stream, each with the last id it has seen.
struct Followers {
    subscribers: Vec<(Option<EventId>, UnboundedSender<Delivery>)>,
}

impl Followers {
    /// The position to read the stream from: the least any subscriber has.
    fn cursor(&self) -> String {
        self.subscribers
            .iter()
            .map(|(at, _)| *at)
            .min()
            .flatten()
            .map_or("0-0".to_string(), |id| id.to_string())
    }

    fn deliver(&mut self, events: &[Event]) {
        self.subscribers.retain_mut(|(at, tx)| {
            for e in events {
                if at.is_none_or(|a| e.id > a) {
                    if tx.send(Delivery::Event(e.clone())).is_err() {
                        return false;
                    }
                    *at = Some(e.id);
                }
            }
            true
        });
    }

    fn tell(&mut self, what: &Delivery) {
        self.subscribers
            .retain(|(_, tx)| tx.send(what.clone()).is_ok());
    }
}

/// The reader thread: follows every subscribed stream with one blocking
/// `XREAD` on a connection of its own.
fn run_reader(link: Link, rx: std_mpsc::Receiver<Follow>, my_id: Arc<AtomicI64>) {
    let mut streams: HashMap<String, Followers> = HashMap::new();
    let mut connection: Option<redis::Connection> = None;
    let mut down: Option<String> = None;
    loop {
        // Idle: wait for a subscription without touching Redis.
        let first = if streams.is_empty() {
            match rx.recv() {
                Ok(f) => Some(f),
                Err(_) => return,
            }
        } else {
            None
        };
        for f in first.into_iter().chain(rx.try_iter()) {
            streams
                .entry(f.key)
                .or_insert_with(|| Followers {
                    subscribers: Vec::new(),
                })
                .subscribers
                .push((f.after, f.tx));
        }
        streams.retain(|_, f| {
            f.subscribers.retain(|(_, tx)| !tx.is_closed());
            !f.subscribers.is_empty()
        });
        if streams.is_empty() {
            continue;
        }
        if connection.is_none() {
            match link.connect(BLOCK + link.timeout + Duration::from_secs(1)) {
                Ok(mut c) => {
                    let id: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("ID").query(&mut c);
                    my_id.store(id.unwrap_or(0), Relaxed);
                    connection = Some(c);
                    if down.take().is_some() {
                        tracing::info!(store = %link.address, "job store reachable again");
                        for f in streams.values_mut() {
                            f.tell(&Delivery::Up);
                        }
                    }
                }
                Err(e) => {
                    if down.is_none() {
                        tracing::warn!(store = %link.address, "job store unreachable: {e}");
                        let message = e.to_string();
                        for f in streams.values_mut() {
                            f.tell(&Delivery::Down(message.clone()));
                        }
                        down = Some(message);
                    }
                    std::thread::sleep(RETRY);
                    continue;
                }
            }
        }
        let c = connection.as_mut().expect("connected above");
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(MAX_READ)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        let keys: Vec<&String> = streams.keys().collect();
        for k in &keys {
            cmd.arg(k.as_str());
        }
        for k in &keys {
            cmd.arg(streams[*k].cursor());
        }
        match cmd.query::<Value>(c) {
            Ok(value) => {
                for (key, events) in streams_of(&value) {
                    if let Some(f) = streams.get_mut(&key) {
                        f.deliver(&events);
                    }
                }
            }
            Err(e) => {
                connection = None;
                my_id.store(0, Relaxed);
                let message = link.unavailable(&e).to_string();
                tracing::warn!(store = %link.address, "job store read failed: {message}");
                for f in streams.values_mut() {
                    f.tell(&Delivery::Down(message.clone()));
                }
                down = Some(message);
                std::thread::sleep(RETRY);
            }
        }
    }
}
