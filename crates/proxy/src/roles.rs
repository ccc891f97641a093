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
use crate::http::{ConnInfo, handle};

/// Serves one downstream connection with the request path: each request is routed with the
/// configuration current when it arrives.
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
    let timeouts = settings.timeouts(snapshot.load().config.downstream.header_timeout);
    let handler = move |req| handle(snapshot.load_full(), info, req);
    serve(stream, peer, handler, builder, Some(stop), timeouts).await;
}
