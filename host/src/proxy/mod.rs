//! The proxy server: one thread per core, each with its own `current_thread`
//! runtime and its own `SO_REUSEPORT` listener, serving HTTP/1.1 and h2c.

mod attempt;
mod body;
mod client;
mod connection;
mod fallback;
mod gate;
mod headers;
mod hedge;
mod http1;
mod job;
mod json_field;
mod outgoing;
mod path;
mod prompt_prefix;
mod reply;
mod request_body;
mod retry;
mod service;
mod tunnel;
mod upstream;
mod usage;
mod websocket;
mod worker;

pub use headers::X_SWITCHYARD_BACKEND;
pub use worker::attribute as request_attribute;

use crate::config::ServerConfig;
use crate::route::RouteTable;
use arc_swap::ArcSwap;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use service::ClientConn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::watch;
use worker::Worker;

/// State shared by all workers: the route table, swapped whole on reload.
pub struct Shared {
    pub table: ArcSwap<RouteTable>,
    pub server: ServerConfig,
    /// Client connections open, all workers.
    connections: std::sync::atomic::AtomicUsize,
    /// Most client connections served at once.
    max_connections: usize,
    /// The CPU each worker is bound to, for `/status`.
    pub placement: crate::cpus::Placement,
}

impl Shared {
    pub fn new(table: RouteTable, server: ServerConfig) -> Arc<Shared> {
        let max_connections = match server.max_connections {
            0 => default_max_connections(open_file_limit()),
            n => n,
        };
        Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            server,
            connections: std::sync::atomic::AtomicUsize::new(0),
            max_connections,
            placement: crate::cpus::Placement::default(),
        })
    }

    /// Takes a connection slot, or `None` at `max_connections`.
    fn connection_slot(self: &Arc<Self>) -> Option<HeldSlot> {
        use std::sync::atomic::Ordering::Relaxed;
        let taken = self.connections.fetch_update(Relaxed, Relaxed, |n| {
            (n < self.max_connections).then_some(n + 1)
        });
        taken
            .ok()
            .map(|_| HeldSlot(Arc::new(ConnectionSlot(self.clone()))))
    }
}

/// Client connections allowed by default under an open-file limit of
/// `limit`: one descriptor for the client and one for its upstream
/// connection (a tunnel holds both), after a reserve for listeners, the
/// event loop, idle upstream connections, logs and plugin files.
fn default_max_connections(limit: u64) -> usize {
    let reserve = (limit / 8).min(256);
    (limit.saturating_sub(reserve) / 2).max(64) as usize
}

/// One client connection's place under `max_connections`, freed on drop.
struct ConnectionSlot(Arc<Shared>);

/// A hold on a connection's slot. The connection task has one; a request
/// that asks for an upgrade carries another in its extensions, which the
/// tunnel (or job relay) keeps, so an upgraded connection counts under
/// `max_connections` for as long as it lives.
#[derive(Clone)]
pub(crate) struct HeldSlot(#[allow(dead_code)] Arc<ConnectionSlot>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Raises the soft open-file limit to the hard one (the default soft limit
/// of 1024 is far below what a proxy holds), logging the change, and
/// returns the limit in force.
pub fn raise_open_file_limit() -> u64 {
    let before = open_file_limit();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now > before => {
            tracing::info!("raised the open-file limit from {before} to {now}");
            now
        }
        Ok(now) => now,
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit ({before}): {e}");
            before
        }
    }
}

fn open_file_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// A running proxy; dropping it does not stop it, [`RunningProxy::shutdown`] does.
pub struct RunningProxy {
    /// The address the proxy accepts on (the real port when 0 was asked).
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Stops accepting, lets in-flight requests finish up to the drain
    /// timeout, and waits for the workers to exit.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Why the proxy could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("server.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Affinity(String),
}

/// The listener's TLS acceptor, its certificate re-read when the files
/// change.
pub fn tls_acceptor(
    tls: &crate::config::ListenerTls,
) -> Result<tokio_rustls::TlsAcceptor, crate::tls::TlsError> {
    let cert = crate::tls::ReloadingCert::load(&tls.cert, &tls.key)?;
    let config = cert.server_config()?;
    let watched: Arc<dyn crate::refresh::Refresh> = cert;
    crate::refresh::register(&watched);
    Ok(tokio_rustls::TlsAcceptor::from(config))
}

/// Binds the listeners and starts `workers` threads serving `shared`.
pub fn start(
    shared: Arc<Shared>,
    listen: SocketAddr,
    workers: usize,
) -> Result<RunningProxy, ListenError> {
    let acceptor = shared.server.tls.as_ref().map(tls_acceptor).transpose()?;
    let listeners = bind(listen, workers.max(1))?;
    let cpus = crate::cpus::plan(&shared.server.cpu_affinity, listeners.len())
        .map_err(ListenError::Affinity)?;
    shared.placement.planned(&cpus);
    let addr = listeners[0].local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut threads = Vec::new();
    for (i, (listener, cpu)) in listeners.into_iter().zip(cpus).enumerate() {
        let shared = shared.clone();
        let stopped = stopped.clone();
        let acceptor = acceptor.clone();
        let thread = std::thread::Builder::new()
            .name(format!("switchyard-worker-{i}"))
            .spawn(move || {
                shared.placement.bind_worker(i, cpu);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    // Blocking-pool threads (name lookups) would inherit
                    // the worker's CPU.
                    .on_thread_start(crate::cpus::release)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!("worker {i}: cannot start runtime: {e}"),
                };
                let local = tokio::task::LocalSet::new();
                // Outcomes for the breakers leave in one batch per pass.
                local.spawn_local(crate::balance::outbox::flusher());
                local.spawn_local(gate::keeper());
                local.block_on(&runtime, serve(shared, listener, acceptor, stopped));
            })?;
        threads.push(thread);
    }
    tracing::info!(%addr, workers = threads.len(), "proxy listening");
    Ok(RunningProxy {
        addr,
        shared,
        stop,
        threads,
    })
}

/// One listener per worker on the same address; the kernel spreads
/// connections among them. The first binds (resolving port 0), the rest join.
fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Spawns futures on the worker's own thread; lets hyper run HTTP/2 streams
/// whose state is not `Send`.
#[derive(Clone, Copy)]
pub(crate) struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

async fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("cannot use listener: {e}"),
    };
    let drain = shared.server.drain_timeout;
    let mut builder = auto::Builder::new(LocalExec);
    // Request heads are timed by `connection::drive`, with one timer per
    // connection rather than one per request.
    builder.http1().writev(false).header_read_timeout(None);
    // Pings find HTTP/2 clients that vanished without closing.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    let start_timeout = shared.server.header_read_timeout;
    let limits = connection::Limits {
        idle: shared.server.idle_timeout,
        head: start_timeout,
    };
    let lean = (shared.server.http1 == crate::config::Http1Server::Lean).then_some(http1::Limits {
        idle: shared.server.idle_timeout,
        head: start_timeout,
    });
    let builder = Rc::new(builder);
    let worker = Rc::new(Worker::new(shared.clone()));
    let lean_drain = Rc::new(http1::Drain::default());
    // Each connection task holds a sender; the drain waits until all are gone.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut accept_errors = AcceptErrors::default();
    let refusals = Refusals::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // briefly, and say so once a second, not per try.
                        accept_errors.note(&e);
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Some(slot) = shared.connection_slot() else {
                    metrics::counter!("switchyard_connections_refused_total").increment(1);
                    refusals.refuse(stream, acceptor.is_some());
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let ctx = client::Context {
                    worker: worker.clone(),
                    client: Rc::new(ClientConn::new(peer)),
                    slot: slot.clone(),
                    builder: builder.clone(),
                    limits,
                    lean,
                    stopped: stopped.clone(),
                    drain: lean_drain.clone(),
                };
                let (acceptor, alive) = (acceptor.clone(), alive.clone());
                tokio::task::spawn_local(async move {
                    let _slot = slot;
                    let _alive = alive;
                    // hyper's header timer starts at the first byte, and its
                    // HTTP version detection has none: a client that sends
                    // nothing, or a partial HTTP/2 preface, is closed here.
                    let start = connection::request_starts(&stream, start_timeout, acceptor.is_some()).await;
                    if start == connection::Start::Silent {
                        metrics::counter!("switchyard_timeouts_total", "route" => "", "kind" => "client_silent")
                            .increment(1);
                        return;
                    }
                    let Some(acceptor) = acceptor else {
                        return client::serve(stream, start == connection::Start::Http2, ctx).await;
                    };
                    let stream = match tokio::time::timeout(start_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            metrics::counter!("switchyard_tls_handshake_failures_total").increment(1);
                            return tracing::debug!("TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            metrics::counter!("switchyard_tls_handshake_failures_total").increment(1);
                            return tracing::debug!("TLS handshake timed out");
                        }
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(&b"h2"[..]);
                    client::serve(stream, h2, ctx).await;
                });
            }
            _ = stopped.changed() => break,
        }
    }
    lean_drain.start();
    drop(listener);
    drop(alive);
    if tokio::time::timeout(drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout {drain:?} reached; closing remaining connections");
    }
}

/// Connections over `max_connections`: a plain-HTTP client is told so with
/// a 503 (written without waiting, its request drained for at most a
/// second so the answer is not lost to a reset); a TLS one, or any beyond
/// [`Refusals::MAX`] being refused at once, is closed.
#[derive(Default, Clone)]
struct Refusals(Rc<std::cell::Cell<u32>>);

impl Refusals {
    const MAX: u32 = 64;
    const ANSWER: &'static [u8] =
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 51\r\n\r\n\
the proxy is at server.max_connections; try again\r\n";

    fn refuse(&self, stream: tokio::net::TcpStream, tls: bool) {
        if tls || self.0.get() >= Self::MAX {
            return; // dropped: closed at once
        }
        self.0.set(self.0.get() + 1);
        let count = self.clone();
        tokio::task::spawn_local(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            let drain = async {
                stream.write_all(Self::ANSWER).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
            count.0.set(count.0.get() - 1);
        });
    }
}

/// Accept failures, logged at most once a second with a count.
#[derive(Default)]
struct AcceptErrors {
    since_log: u64,
    last_log: Option<std::time::Instant>,
}

impl AcceptErrors {
    fn note(&mut self, e: &std::io::Error) {
        self.since_log += 1;
        metrics::counter!("switchyard_accept_errors_total").increment(1);
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            tracing::warn!(
                "accept failed ({} times since the last report): {e}",
                self.since_log
            );
            self.since_log = 0;
            self.last_log = Some(std::time::Instant::now());
        }
    }
}
