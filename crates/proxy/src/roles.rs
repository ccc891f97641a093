//! The roles a proxy plays over the one core: the gateway (listeners), the sidecar's outbound
//! side (a Service chosen by the original destination) and its inbound side (in front of the
//! application). A node proxy (ambient mode) is another role beside them.

pub mod gateway;
pub mod inbound;
pub mod sidecar;

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::conn::serve::{ConnSettings, serve};
use crate::core::Snapshot;
use crate::http::{ConnInfo, Target, handle};
use crate::telemetry::{Opened, PlaintextReason, Role, Security};

/// Serves one downstream connection with the request path: each request is routed with the
/// configuration current when it arrives. The connection's record goes to the sink when it
/// closes.
pub(crate) async fn serve_routes<S>(
    stream: S,
    info: ConnInfo,
    snapshot: Arc<ArcSwap<Snapshot>>,
    builder: &auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
    settings: ConnSettings,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let (role, security) = match info.target {
        Target::Listeners if info.scheme == "https" => (Role::Gateway, Security::Tls),
        Target::Listeners => (Role::Gateway, Security::Plaintext(PlaintextReason::NotMeshed)),
        Target::Service(_) | Target::Pod(_) => (Role::SidecarOutbound, Security::Plaintext(PlaintextReason::Local)),
    };
    let opened = Opened::now(role, peer);
    let timeouts = settings.timeouts(snapshot.load().config.downstream.header_timeout);
    let cell = snapshot.clone();
    let handler = move |req| handle(cell.load_full(), info.clone(), req);
    let served = serve(stream, peer, handler, builder, Some(stop), timeouts).await;
    let record = opened.closed((served.bytes_in, served.bytes_out), served.close, security, None, false);
    snapshot.load().sink.connection(&record);
}

/// Opaque TCP to one endpoint of `backend` (over mTLS to a meshed endpoint, TLS under a
/// BackendTLSPolicy): a connect failure tries another endpoint, up to three; then the bytes go
/// both ways until either side closes or none moves for `idle`. The one way every role carries
/// a connection to a Service. `Err` says why no endpoint took it.
pub(crate) async fn tcp_to_backend<S>(
    stream: &mut S,
    backend: &crate::upstream::balance::BackendRt,
    idle: Option<std::time::Duration>,
) -> Result<(crate::conn::tcp::Relayed, Arc<crate::upstream::pool::EndpointPool>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut avoid = None;
    let mut last_error = None;
    for _ in 0..3 {
        let Ok(endpoint) = backend.pick(None, avoid.as_ref()).cloned() else { break };
        match endpoint.open_tcp().await {
            Ok(mut upstream) => return Ok((crate::conn::tcp::relay_idle(stream, &mut upstream, idle).await, endpoint)),
            Err(e) => {
                tracing::warn!(service = %backend.model.id, endpoint = %endpoint.addr, error = %e, "TCP upstream connect failed");
                last_error = Some(e.to_string());
                avoid = Some(endpoint);
            }
        }
    }
    Err(match last_error {
        Some(e) => format!("no endpoint of {} could be reached: {e}", backend.model.id),
        None => format!("no healthy upstream: no endpoint of {} is ready", backend.model.id),
    })
}
