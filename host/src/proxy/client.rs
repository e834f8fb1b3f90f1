//! One accepted client connection, once it has said something: HTTP/1.1 on
//! the lean server while its requests are plain, hyper for HTTP/2 and for
//! the rest of a connection the lean server hands over (or throughout,
//! with `server.http1 = "hyper"`).

use super::http1;
use super::service::{self, ClientConn};
use super::worker::Worker;
use super::{HeldSlot, LocalExec, connection};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// What serving one connection needs.
pub struct Context {
    pub worker: Rc<Worker>,
    pub client: Rc<ClientConn>,
    /// The connection's slot, for a request that upgrades to carry along.
    pub slot: HeldSlot,
    pub builder: Rc<auto::Builder<LocalExec>>,
    pub limits: connection::Limits,
    /// The lean server's limits; `None`: hyper serves HTTP/1.1 too.
    pub lean: Option<http1::Limits>,
    pub stopped: watch::Receiver<bool>,
    /// The worker's drain signal, which lean connections wait on.
    pub drain: Rc<http1::Drain>,
}

/// Serves a client connection to its end; `h2`: it speaks HTTP/2.
pub async fn serve<S>(io: S, h2: bool, ctx: Context)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, read) = match ctx.lean {
        Some(limits) if !h2 => {
            let served = http1::serve(io, &ctx.worker, &ctx.client, limits, &ctx.drain);
            match served.await {
                http1::Ended::Closed => return,
                http1::Ended::Hyper(io, read) => (io, read),
            }
        }
        _ => (io, bytes::Bytes::new()),
    };
    let activity = connection::Activity::new();
    if h2 {
        activity.untime_heads();
    }
    let (worker, client, slot, requests) = (ctx.worker, ctx.client, ctx.slot, activity.clone());
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(slot.clone());
        }
        let request = requests.start(req.version());
        // Boxed: hyper moves the service future into place per request,
        // and the whole forwarding future is kilobytes.
        let req = req.map(super::request_body::Source::Hyper);
        let served = Box::pin(service::serve(worker.clone(), client.clone(), req));
        async move {
            let resp = served.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| connection::Tracked::new(b, request)))
        }
    });
    let io = TokioIo::new(connection::Watched::new(io, read, &activity));
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    if let Err(e) = connection::drive(conn, activity, ctx.limits, ctx.stopped).await {
        tracing::debug!("client connection ended: {e}");
    }
}
