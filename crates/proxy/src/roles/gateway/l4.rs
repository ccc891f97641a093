//! The gateway's connection routes: TLS passed through by SNI (TLSRoute) and opaque TCP
//! (TCPRoute). A connection goes to a backend picked by weight, then an endpoint by the
//! backend's balancer (another endpoint when one cannot be reached, three tries); its bytes
//! are copied both ways and counted until either side closes or it is idle for the idle
//! timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshgate_model::rule::Backend;
use meshgate_model::table::L4Route;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::Snapshot;
use crate::telemetry::{CloseReason, Opened, PlaintextReason, Security};

/// A fatal `unrecognized_name` alert (RFC 6066 §3) in a TLS 1.2-framed record: what a
/// ClientHello for a name no TLSRoute serves gets before the close.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Answers a ClientHello no route serves with an alert, and closes.
pub(super) async fn refuse_tls(
    mut stream: TcpStream,
    peer: SocketAddr,
    snapshot: &Snapshot,
    opened: Opened,
    why: &str,
) {
    tracing::debug!(%peer, "TLS connection refused: {why}");
    let _ = stream.write_all(&UNRECOGNIZED_NAME).await;
    let _ = stream.shutdown().await;
    let record =
        opened.closed((0, 7), CloseReason::Refused, Security::Plaintext(PlaintextReason::NotMeshed), None, true);
    snapshot.sink.connection(&record);
}

/// Carries `stream` to a backend of `route`; records the connection when it ends.
pub(super) async fn relay_route<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    route: &L4Route,
    snapshot: &Snapshot,
    opened: Opened,
    idle: Option<Duration>,
) {
    let security = Security::Plaintext(PlaintextReason::NotMeshed);
    let from = |r: crate::telemetry::ConnRecord| r.sourced(snapshot.identity.clone(), Some(snapshot.peer.clone()));
    let record = match relay_to_backend(&mut stream, peer, route, snapshot, idle).await {
        Ok((relayed, backend, endpoint)) => {
            let security = endpoint.security();
            let r = opened.closed((relayed.bytes_in, relayed.bytes_out), relayed.close, security, None, true);
            from(r).relayed(Some(backend), Some(&endpoint))
        }
        Err(why) => {
            tracing::warn!(%peer, route = %route.route, "connection closed: {why}");
            let mut r = from(opened.closed((0, 0), CloseReason::UpstreamUnreachable, security, None, true));
            r.flags = crate::flags::Flags::UPSTREAM_CONNECT_FAILURE;
            r
        }
    };
    snapshot.sink.connection(&record);
}

async fn relay_to_backend<'a, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    route: &L4Route,
    snapshot: &'a Snapshot,
    idle: Option<Duration>,
) -> Result<(crate::conn::tcp::Relayed, &'a Arc<str>, Arc<crate::upstream::pool::EndpointPool>), String> {
    let Some(weighted) = route.pick_backend() else {
        return Err("no backend with a weight above 0".into());
    };
    let backend = match &weighted.backend {
        Backend::Service(s) => {
            snapshot.backends.get(s.slot).ok_or_else(|| format!("backend {} is not prepared", s.id))?
        }
        Backend::Invalid { reason, message } => return Err(format!("invalid backend ({reason}): {message}")),
    };
    let (relayed, endpoint) = crate::roles::tcp_to_backend(stream, backend, idle).await?;
    tracing::debug!(%peer, route = %route.route, endpoint = %endpoint.addr, "connection relayed");
    Ok((relayed, &backend.model.id, endpoint))
}
