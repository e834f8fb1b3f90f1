//! The proxy server: one thread per core, each with its own `current_thread`
//! runtime and its own `SO_REUSEPORT` listener, serving HTTP/1.1 and h2c.

mod body;
mod forward;
mod headers;
mod json_field;
mod upstream;
mod usage;
mod worker;

pub use headers::X_SWITCHYARD_BACKEND;
pub use worker::attribute as request_attribute;

use crate::config::ServerConfig;
use crate::route::RouteTable;
use arc_swap::ArcSwap;
use forward::ClientConn;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
}

impl Shared {
    pub fn new(table: RouteTable, server: ServerConfig) -> Arc<Shared> {
        Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            server,
        })
    }
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
    let addr = listeners[0].local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let stopped = stopped.clone();
        let acceptor = acceptor.clone();
        let thread = std::thread::Builder::new()
            .name(format!("switchyard-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!("worker {i}: cannot start runtime: {e}"),
                };
                let local = tokio::task::LocalSet::new();
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
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(shared.server.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let handshake_timeout = shared.server.header_read_timeout;
    let builder = Rc::new(builder);
    let worker = Rc::new(Worker::new(shared));
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let client = Rc::new(ClientConn::new(peer));
                let worker = worker.clone();
                let service = service_fn(move |req| forward::serve(worker.clone(), client.clone(), req));
                let Some(acceptor) = &acceptor else {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::task::spawn_local(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!("client connection ended: {e}");
                        }
                    });
                    continue;
                };
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                tokio::task::spawn_local(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!("client connection ended: {e}");
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout {drain:?} reached; closing remaining connections");
    }
}
