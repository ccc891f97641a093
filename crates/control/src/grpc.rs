//! The gRPC API proxies use: `Identity.Certify` (CSR in, SVID out) and `Discovery.Stream`
//! (versioned pushes of the resources a proxy needs; ACK or NACK back), served over TLS with
//! the control plane's own SVID. Client certificates are optional (a first request carries a
//! join token) and, when present, verified and used as the caller's identity.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use meshgate_api::ObjectRef;
use meshgate_identity::SpiffeId;
use meshgate_proto::meshgate::discovery_request::Kind as ReqKind;
use meshgate_proto::meshgate::discovery_server::{Discovery, DiscoveryServer};
use meshgate_proto::meshgate::identity_server::{Identity, IdentityServer};
use meshgate_proto::meshgate::telemetry_server::{Telemetry, TelemetryServer};
use meshgate_proto::meshgate::{
    CertifyRequest, CertifyResponse, DiscoveryRequest, DiscoveryResponse, EdgeReport, ReportSummary,
    Resource as WireResource,
};
use meshgate_tls::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::plane::{ControlPlane, ProxyRecord, unix_now};
use crate::state::{Audience, Change, Snapshot};
use crate::store::Store;

/// Who called: the address, and the SPIFFE ID when a client certificate was presented.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Remote address.
    pub addr: SocketAddr,
    /// Verified SPIFFE ID.
    pub id: Option<SpiffeId>,
}

/// A TLS connection tonic can serve, carrying the caller.
pub struct TlsIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    caller: Caller,
}

impl Connected for TlsIo {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves the gRPC API on `listener` with the control plane's TLS config.
pub async fn serve<S: Store>(
    cp: Arc<ControlPlane<S>>,
    listener: TcpListener,
    tls: Arc<arc_swap::ArcSwap<tokio_rustls::rustls::ServerConfig>>,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = mpsc::channel::<Result<TlsIo, std::io::Error>>(64);
    // The accept loop lives in this future (not a detached task), so stopping the server
    // closes the listening socket.
    let accept = async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "control plane accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let id = PeerIdentity::from_connection(stream.get_ref().1).map(|p| p.id);
                        let _ = tx.send(Ok(TlsIo { inner: stream, caller: Caller { addr, id } })).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%addr, "control plane TLS handshake refused: {e}"),
                    Err(_) => tracing::warn!(%addr, "control plane TLS handshake timed out"),
                }
            });
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(IdentityServer::from_arc(Arc::new(IdentityService(cp.clone()))))
        .add_service(DiscoveryServer::from_arc(Arc::new(DiscoveryService(cp.clone()))))
        .add_service(TelemetryServer::from_arc(Arc::new(TelemetryService(cp))))
        .serve_with_incoming(ReceiverStream::new(rx));
    tokio::select! {
        r = server => r,
        () = accept => Ok(()),
    }
}

struct TelemetryService<S: Store>(Arc<ControlPlane<S>>);

#[tonic::async_trait]
impl<S: Store> Telemetry for TelemetryService<S> {
    async fn report(&self, req: Request<Streaming<EdgeReport>>) -> Result<Response<ReportSummary>, Status> {
        // Proxies with a mesh identity only: the graph is what they saw.
        if req.extensions().get::<Caller>().and_then(|c| c.id.as_ref()).is_none() {
            return Err(Status::unauthenticated("telemetry reports need a client certificate"));
        }
        let mut stream = req.into_inner();
        let mut accepted = 0;
        while let Some(report) = stream.message().await? {
            self.0.graph.record(&report);
            if !report.tapped.is_empty() {
                self.0.taps.record(&report.tapped);
            }
            accepted += 1;
        }
        Ok(Response::new(ReportSummary { accepted }))
    }
}

struct IdentityService<S: Store>(Arc<ControlPlane<S>>);

#[tonic::async_trait]
impl<S: Store> Identity for IdentityService<S> {
    async fn certify(&self, req: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let addr = caller.as_ref().map_or_else(|| "?".to_string(), |c| c.addr.to_string());
        let req = req.into_inner();
        let cp = &self.0;
        let identity = match caller.and_then(|c| c.id) {
            Some(id) => id,
            None => {
                if req.token.is_empty() {
                    crate::metrics::CpMetrics::count(&cp.metrics.refused);
                    tracing::warn!(%addr, "certificate request refused: no join token and no client certificate");
                    return Err(Status::unauthenticated("a join token (or a valid SVID) is required"));
                }
                let grant = crate::tokens::redeem(&cp.store, &req.token).await.map_err(|e| {
                    crate::metrics::CpMetrics::count(&cp.metrics.refused);
                    tracing::warn!(%addr, "certificate request refused: {e}");
                    Status::permission_denied(e.to_string())
                })?;
                cp.options
                    .trust_domain
                    .workload_id(&grant.namespace, &grant.service_account)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
            }
        };
        let ttl = cp.state.snapshot().settings.workload_ttl();
        let (chain, bundle) = {
            let ca = cp.ca.lock().map_err(|_| Status::internal("CA unavailable"))?;
            let chain = ca.sign(&req.csr, &identity, Some(ttl)).map_err(|e| {
                crate::metrics::CpMetrics::count(&cp.metrics.refused);
                tracing::warn!(%addr, %identity, "certificate request refused: {e}");
                Status::invalid_argument(e.to_string())
            })?;
            (chain, ca.bundle())
        };
        crate::metrics::CpMetrics::count(&cp.metrics.issued);
        tracing::info!(%addr, %identity, "certificate issued");
        Ok(Response::new(CertifyResponse {
            chain,
            roots: bundle.roots.iter().map(|r| r.to_vec()).collect(),
            trust_domain: bundle.trust_domain.to_string(),
            spiffe_id: identity.to_string(),
        }))
    }
}

struct DiscoveryService<S: Store>(Arc<ControlPlane<S>>);

/// A gateway's addresses: those it says it serves on, else the one its stream comes from.
fn gateway_addresses(reported: &[String], caller: Option<&Caller>) -> Vec<std::net::IpAddr> {
    let said: Vec<std::net::IpAddr> = reported.iter().filter_map(|a| a.parse().ok()).collect();
    if said.is_empty() { caller.map(|c| c.addr.ip().to_canonical()).into_iter().collect() } else { said }
}

/// Whether a proxy of `role` in namespace `ns` needs the resource `id` with `audience`.
fn wanted(role: &str, ns: &str, root_ns: &str, id: &ObjectRef, audience: Audience) -> bool {
    let gateway = role == "gateway";
    match audience {
        Audience::Everyone => true,
        Audience::Nobody => false,
        Audience::Gateways => gateway,
        Audience::Route { gateway: to_gateways, mesh } => {
            if gateway {
                to_gateways
            } else {
                mesh
            }
        }
        Audience::NamespaceSidecars => !gateway && (id.ns() == ns || id.ns() == root_ns),
    }
}

/// Everything a proxy needs, from scratch.
fn full(snap: &Snapshot, role: &str, ns: &str) -> DiscoveryResponse {
    let root = snap.settings.root_namespace.as_str();
    let upserts = snap
        .entries
        .iter()
        .filter(|(_, e)| wanted(role, ns, root, &e.id, e.audience))
        .map(|(k, e)| WireResource { key: k.to_string(), json: e.json.clone() })
        .collect();
    DiscoveryResponse { version: snap.version.to_string(), full: true, upserts, ..DiscoveryResponse::default() }
}

/// What `change` changed for one proxy (it costs the same whatever the size of the mesh).
/// What a key is now is read from the snapshot in force, which may be newer than the change:
/// the proxy is then sent the newer content (and sent it again with the change that made it,
/// which it applies as a no-op), never older. A removal goes only to proxies that received
/// the key before.
fn delta(snap: &Snapshot, change: &Change, role: &str, ns: &str) -> DiscoveryResponse {
    let root = snap.settings.root_namespace.as_str();
    if change.resync(root) {
        return full(snap, role, ns);
    }
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for (k, before) in change.changed.iter().chain(&change.removed).zip(&change.before) {
        match snap.entries.get(k) {
            Some(e) if wanted(role, ns, root, &e.id, e.audience) => {
                upserts.push(WireResource { key: k.to_string(), json: e.json.clone() });
            }
            _ => {
                let had = before.as_ref().is_some_and(|(a, id)| wanted(role, ns, &change.root_before, id, *a));
                if had {
                    removals.push(k.to_string());
                }
            }
        }
    }
    DiscoveryResponse {
        version: snap.version.to_string(),
        full: false,
        upserts,
        removals,
        ..DiscoveryResponse::default()
    }
}

/// The most resource JSON one message of a push carries: a larger push (the first, full one of
/// a large mesh) goes in parts. tonic keeps a stream's encode buffer at the size of its largest
/// message for the stream's life, so a whole-mesh message would cost every connected proxy the
/// size of the mesh on the control plane (~0.9 MiB each at 1,000 Services × 10 endpoints).
const PART_BYTES: usize = 32 * 1024;

/// Sends `resp`, in parts of at most [`PART_BYTES`] of resources when it is larger (each but
/// the last marked `more`; the first keeps `full`, the removals and the roots).
async fn send_in_parts(
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    mut resp: DiscoveryResponse,
) -> Result<(), mpsc::error::SendError<Result<DiscoveryResponse, Status>>> {
    let size = |r: &WireResource| r.json.len() + r.key.len();
    if resp.upserts.iter().map(size).sum::<usize>() <= PART_BYTES {
        return tx.send(Ok(resp)).await;
    }
    let mut rest = std::mem::take(&mut resp.upserts).into_iter().peekable();
    let mut part = resp;
    loop {
        let mut bytes = 0;
        while let Some(r) = rest.next_if(|r| part.upserts.is_empty() || bytes + size(r) <= PART_BYTES) {
            bytes += size(&r);
            part.upserts.push(r);
        }
        let last = rest.peek().is_none();
        part.more = !last;
        let next = DiscoveryResponse { version: part.version.clone(), ..DiscoveryResponse::default() };
        tx.send(Ok(part)).await?;
        if last {
            return Ok(());
        }
        part = next;
    }
}

#[tonic::async_trait]
impl<S: Store> Discovery for DiscoveryService<S> {
    type StreamStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream(&self, req: Request<Streaming<DiscoveryRequest>>) -> Result<Response<Self::StreamStream>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let Some(identity) = caller.as_ref().and_then(|c| c.id.clone()) else {
            return Err(Status::unauthenticated("subscribe with your SVID as client certificate"));
        };
        let mut inbound = req.into_inner();
        let cp = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let hello = match inbound.message().await {
                Ok(Some(DiscoveryRequest { kind: Some(ReqKind::Hello(h)) })) => h,
                _ => {
                    let _ = tx.send(Err(Status::invalid_argument("the first message must be Hello"))).await;
                    return;
                }
            };
            let ns = identity.workload().map(|(ns, _)| ns.to_string()).unwrap_or_default();
            let role = if hello.role == "gateway" { "gateway" } else { "sidecar" }.to_string();
            let mut changes = cp.state.subscribe();
            let conn = cp.register(ProxyRecord {
                identity: identity.to_string(),
                node: hello.node.clone(),
                role: role.clone(),
                workload: hello.workload.clone(),
                sent: 0,
                acked: 0,
                nack: None,
                sent_at: unix_now(),
                replica: cp.options.replica.clone(),
                leaf_root: hello.credentials.as_ref().map(|c| c.root.clone()).unwrap_or_default(),
                leaf_not_after: hello.credentials.as_ref().map_or(0, |c| c.not_after),
                trusts: hello.credentials.as_ref().map(|c| c.trusts.clone()).unwrap_or_default(),
                addresses: if role == "gateway" {
                    gateway_addresses(&hello.addresses, caller.as_ref())
                } else {
                    Vec::new()
                },
            });
            tracing::info!(%identity, role, node = %hello.node, "proxy subscribed");
            let tap_name = crate::taps::tap_name(&role, identity.as_str(), &hello.workload);
            let mut taps = cp.taps.register(conn, &tap_name);
            let mut stopping = cp.stopping.subscribe();
            let mut bundle = cp.bundle_version.subscribe();
            let mut bundle_sent = 0;
            let mut next = full(&cp.state.snapshot(), &role, &ns);
            let mut pushed_at: Option<std::time::Instant> = None;
            loop {
                let bv = *bundle.borrow_and_update();
                if bv != bundle_sent {
                    let (bundle, signer) = cp.bundle_and_signer();
                    next.roots = bundle.roots.iter().map(|r| r.to_vec()).collect();
                    next.signer = signer;
                    bundle_sent = bv;
                }
                if next.full || !next.upserts.is_empty() || !next.removals.is_empty() || !next.roots.is_empty() {
                    let v: u64 = next.version.parse().unwrap_or(0);
                    cp.update_proxy(conn, |r| {
                        r.sent = v;
                        r.nack = None;
                        r.sent_at = unix_now();
                    });
                    if send_in_parts(&tx, next).await.is_err() {
                        break;
                    }
                    crate::metrics::CpMetrics::count(&cp.metrics.pushes);
                    pushed_at = Some(std::time::Instant::now());
                }
                next = tokio::select! {
                    _ = stopping.changed() => break,
                    // A tap, alone in its message: the proxy answers it in its reports.
                    Some(ask) = taps.recv() => {
                        if tx.send(Ok(DiscoveryResponse { tap: Some(ask), ..DiscoveryResponse::default() })).await.is_err() {
                            break;
                        }
                        DiscoveryResponse::default()
                    }
                    // A new trust bundle alone: sent with the version in force.
                    _ = bundle.changed() => DiscoveryResponse { version: cp.state.snapshot().version.to_string(), ..DiscoveryResponse::default() },
                    msg = inbound.message() => {
                        match msg {
                            Ok(Some(DiscoveryRequest { kind: Some(ReqKind::Ack(a)) })) => {
                                let v = a.version.parse().unwrap_or(0);
                                if let Some(at) = pushed_at.take() {
                                    cp.metrics.acked(at.elapsed());
                                }
                                cp.update_proxy(conn, |r| { r.acked = r.acked.max(v); if v >= r.sent { r.nack = None; } });
                            }
                            Ok(Some(DiscoveryRequest { kind: Some(ReqKind::Credentials(c)) })) => {
                                tracing::debug!(%identity, root = %c.root.get(..16).unwrap_or_default(), trusts = c.trusts.len(), "proxy credentials");
                                cp.update_proxy(conn, |r| { r.leaf_root = c.root; r.leaf_not_after = c.not_after; r.trusts = c.trusts; });
                            }
                            Ok(Some(DiscoveryRequest { kind: Some(ReqKind::Nack(n)) })) => {
                                tracing::warn!(%identity, version = %n.version, "proxy refused configuration: {}", n.error);
                                crate::metrics::CpMetrics::count(&cp.metrics.nacks);
                                pushed_at = None;
                                cp.update_proxy(conn, |r| r.nack = Some(n.error.clone()));
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        }
                        DiscoveryResponse::default()
                    }
                    change = changes.recv() => {
                        match change {
                            Ok(c) => delta(&cp.state.snapshot(), &c, &role, &ns),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => full(&cp.state.snapshot(), &role, &ns),
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        }
                    }
                };
            }
            cp.unregister(conn);
            cp.taps.unregister(conn);
            tracing::info!(%identity, "proxy disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
