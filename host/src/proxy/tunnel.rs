//! The bytes of an upgraded connection (WebSocket and other protocol
//! switches), relayed both ways for as long as either side keeps it open.

use super::body::Exchange;
use crate::route::Permit;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Relays bytes both ways after a protocol switch; the exchange (and the
/// backend's in-flight count), the route's admission slot and the client
/// connection's place under `max_connections` last as long as the tunnel.
pub async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    exchange: Exchange,
    held: (Option<Permit>, Option<super::HeldSlot>),
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let result =
        tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
    if let Err(e) = result {
        tracing::debug!("tunnel ended: {e}");
    }
    drop(exchange);
    drop(held);
}
