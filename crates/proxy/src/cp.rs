//! The proxy's side of the control plane: certificates (`Identity.Certify`, over TLS that
//! verifies the control plane's SPIFFE ID; a join token first, the current SVID after) and
//! configuration (`Discovery.Stream`: apply each push, ACK it, or NACK with the reason and keep
//! the previous configuration). While the control plane is away the proxy keeps serving and
//! resubscribes with backoff.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use meshgate_api::{Object, ResourceSet, Source};
use meshgate_identity::{SpiffeId, TrustDomain};
use meshgate_proto::meshgate::discovery_client::DiscoveryClient;
use meshgate_proto::meshgate::discovery_request::Kind as ReqKind;
use meshgate_proto::meshgate::identity_client::IdentityClient;
use meshgate_proto::meshgate::telemetry_client::TelemetryClient;
use meshgate_proto::meshgate::{
    Ack, CertifyRequest, Credentials, DiscoveryRequest, DiscoveryResponse, Hello, Nack, TapAsk, Tapped,
};
use meshgate_tls::{MeshTls, TrustBundle};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::{Certified, Certifier};

/// Where the control plane is and how to trust it.
#[derive(Debug, Clone)]
pub struct ControlPlaneAddr {
    /// host:port of its gRPC API; several, comma-separated, for replicas (tried in turn).
    pub addr: String,
    /// The roots it is verified against (the bundle a proxy bootstraps with).
    pub bundle: Arc<TrustBundle>,
    /// Its SPIFFE ID.
    pub id: SpiffeId,
}

impl ControlPlaneAddr {
    /// The control plane of `trust_domain` at `addr`, trusted through `bundle_pem`.
    pub fn new(addr: &str, trust_domain: TrustDomain, bundle_pem: &str) -> Result<Self, String> {
        let id = trust_domain.control_plane_id().map_err(|e| e.to_string())?;
        let bundle = meshgate_tls::config::bundle_from_pem(trust_domain, bundle_pem)?;
        Ok(ControlPlaneAddr { addr: addr.to_string(), bundle: Arc::new(bundle), id })
    }
}

/// A tower connector: TCP, then TLS verifying the control plane's identity.
#[derive(Clone)]
struct Connector {
    target: ControlPlaneAddr,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (target, config) = (self.target.clone(), self.config.clone());
        Box::pin(async move {
            let addrs: Vec<&str> = target.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
            let start = fastrand::usize(..addrs.len().max(1));
            let mut last = None;
            let mut tcp = None;
            for i in 0..addrs.len() {
                let a = addrs[(start + i) % addrs.len()];
                match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(a)).await {
                    Ok(Ok(s)) => {
                        tcp = Some(s);
                        break;
                    }
                    Ok(Err(e)) => last = Some(format!("{a}: {e}")),
                    Err(_) => last = Some(format!("{a}: connect timed out")),
                }
            }
            let Some(tcp) = tcp else {
                return Err(last.unwrap_or_else(|| "no control plane address".into()).into());
            };
            let _ = tcp.set_nodelay(true);
            // A control plane that went away without closing (its host gone, a partition) is
            // noticed by the kernel's keep-alive probes: after 20 s without traffic, three
            // unanswered probes 5 s apart, ~35 s in all, and the channel reconnects (to the next
            // address). Not by HTTP/2 PINGs: each PING and its answer run h2, rustls and
            // AES-GCM, ~2.3 MiB of code scattered through the binary that an idle sidecar would
            // otherwise fault back in and keep resident (measured with `perf record -e
            // page-faults`: 38 faults of 64 KiB each, all on that path). Istio's proxies keep
            // their xDS connection to istiod alive the same way, with TCP keep-alive. A control
            // plane whose process hangs while its kernel still answers is not noticed; the
            // proxy keeps its last configuration meanwhile, as when it is down.
            if let Err(e) = keep_alive(&tcp) {
                tracing::debug!(error = %e, "control plane connection: no TCP keep-alive");
            }
            let name = ServerName::try_from("control-plane.meshgate")?.to_owned();
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            let peer = meshgate_tls::PeerIdentity::from_connection(tls.get_ref().1)
                .ok_or("the control plane presented no SPIFFE identity")?;
            if peer.id != target.id {
                return Err(format!("control plane identity {} is not the expected {}", peer.id, target.id).into());
            }
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// The control plane connection's TCP keep-alive (see `Connector::call`).
fn keep_alive(tcp: &TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(20))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive)
}

/// A gRPC channel to the control plane over TLS that checks its identity against `bundle` (the
/// bootstrap bundle until the proxy has its own, then the bundle it keeps up to date: after a
/// root rotation the control plane's certificate comes from the new root) and presents `svid`.
pub fn channel(
    target: &ControlPlaneAddr,
    bundle: Arc<TrustBundle>,
    svid: Option<&meshgate_tls::Svid>,
) -> Result<Channel, String> {
    let config = meshgate_tls::config::control_plane_client(bundle, svid).map_err(|e| e.to_string())?;
    let endpoint = Endpoint::from_static("http://control-plane.meshgate").connect_timeout(Duration::from_secs(5));
    Ok(endpoint.connect_with_connector_lazy(Connector { target: target.clone(), config }))
}

/// Certifies through the control plane: the join token for the first certificate, the current
/// SVID afterwards.
pub struct CpCertifier {
    target: ControlPlaneAddr,
    token: Mutex<Option<String>>,
    mesh: Mutex<Option<Arc<MeshTls>>>,
}

impl CpCertifier {
    /// A certifier holding a one-time join token.
    pub fn new(target: ControlPlaneAddr, token: Option<String>) -> Arc<Self> {
        Arc::new(CpCertifier { target, token: Mutex::new(token), mesh: Mutex::new(None) })
    }

    /// Renewals authenticate with this TLS state from now on.
    pub fn set_mesh(&self, mesh: Arc<MeshTls>) {
        if let Ok(mut m) = self.mesh.lock() {
            *m = Some(mesh);
        }
    }
}

impl Certifier for CpCertifier {
    fn certify<'a>(
        &'a self,
        _id: &'a SpiffeId,
        csr: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Certified, String>> + Send + 'a>> {
        Box::pin(async move {
            let mesh = self.mesh.lock().ok().and_then(|m| m.clone());
            let material = mesh.as_ref().map(|m| m.material());
            let svid = material.as_ref().map(|m| m.svid.clone());
            let bundle = material.as_ref().map_or_else(|| self.target.bundle.clone(), |m| m.bundle.clone());
            let token = if svid.is_some() {
                String::new()
            } else {
                self.token.lock().ok().and_then(|t| t.clone()).unwrap_or_default()
            };
            let ch = channel(&self.target, bundle, svid.as_deref())?;
            let resp = IdentityClient::new(ch)
                .certify(CertifyRequest { csr, token })
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                .into_inner();
            if let Ok(mut t) = self.token.lock() {
                *t = None; // one-time
            }
            let td = TrustDomain::new(&resp.trust_domain).map_err(|e| e.to_string())?;
            Ok(Certified {
                chain: resp.chain,
                bundle: TrustBundle {
                    trust_domain: td,
                    roots: resp.roots.into_iter().map(CertificateDer::from).collect(),
                },
            })
        })
    }
}

/// What the proxy does with each configuration: `Err` is sent back as a NACK.
pub type Apply = Arc<dyn Fn(ResourceSet) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Who subscribes, and how it is known to the control plane.
pub struct Subscriber {
    /// The control plane.
    pub target: ControlPlaneAddr,
    /// The proxy's TLS state (its SVID authenticates the stream; pushed bundles update it).
    pub mesh: Arc<MeshTls>,
    /// Told which root signs now; tells when the SVID was renewed.
    pub renewal: Arc<crate::identity::Renewal>,
    /// `gateway` or `sidecar`.
    pub role: String,
    /// Node name.
    pub node: String,
    /// `namespace/name` of a sidecar's Workload.
    pub workload: String,
    /// A gateway's addresses (its bind address when it binds one), for Gateway status.
    pub addresses: Vec<String>,
    /// Where the control plane's taps go: to the [`report`] task, which answers them.
    pub taps: Option<mpsc::Sender<TapAsk>>,
}

/// Subscribes for as long as the task runs, resubscribing with backoff when the control plane
/// goes away; the last good configuration stays in force meanwhile.
pub async fn subscribe(sub: Subscriber, apply: Apply) {
    let mut objects: BTreeMap<String, Object> = BTreeMap::new();
    let mut version = String::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&sub, &apply, &mut objects, &mut version).await {
            Ok(()) => tracing::warn!("control plane closed the stream; resubscribing"),
            Err(e) => {
                tracing::warn!(error = %e, "control plane unreachable; serving the last configuration (version {version})")
            }
        }
        tokio::time::sleep(backoff + Duration::from_millis(fastrand::u64(0..200))).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        if !version.is_empty() {
            backoff = backoff.min(Duration::from_secs(2));
        }
    }
}

fn credentials(mesh: &MeshTls) -> Credentials {
    let c = crate::identity::credentials(mesh);
    Credentials { root: c.leaf_root, not_after: c.not_after, trusts: c.trusts }
}

async fn session(
    sub: &Subscriber,
    apply: &Apply,
    objects: &mut BTreeMap<String, Object>,
    version: &mut String,
) -> Result<(), String> {
    let (target, mesh) = (&sub.target, &sub.mesh);
    let material = mesh.material();
    let ch = channel(target, material.bundle.clone(), Some(&material.svid))?;
    let mut renewals = sub.renewal.renewals();
    renewals.borrow_and_update();
    let (tx, rx) = mpsc::channel(16);
    let hello = DiscoveryRequest {
        kind: Some(ReqKind::Hello(Hello {
            node: sub.node.clone(),
            role: sub.role.clone(),
            workload: sub.workload.clone(),
            addresses: sub.addresses.clone(),
            version: version.clone(),
            credentials: Some(credentials(mesh)),
        })),
    };
    tx.send(hello).await.map_err(|e| e.to_string())?;
    let mut stream = DiscoveryClient::new(ch)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    tracing::info!(addr = %target.addr, "subscribed to the control plane");
    let mut parts: Option<DiscoveryResponse> = None;
    loop {
        let resp = tokio::select! {
            resp = stream.message() => match resp.map_err(|s| format!("{}: {}", s.code(), s.message()))? {
                Some(resp) => resp,
                None => break,
            },
            changed = renewals.changed() => {
                if changed.is_ok() {
                    let c = DiscoveryRequest { kind: Some(ReqKind::Credentials(credentials(mesh))) };
                    if tx.send(c).await.is_err() {
                        break;
                    }
                }
                continue;
            }
        };
        // A tap alone: no configuration, nothing to acknowledge.
        if let Some(ask) = resp.tap
            && !resp.full
            && resp.upserts.is_empty()
            && resp.removals.is_empty()
            && resp.roots.is_empty()
        {
            if let Some(t) = &sub.taps
                && t.try_send(ask).is_err()
            {
                tracing::debug!("a tap asked while others still wait: dropped");
            }
            continue;
        }
        // A push in parts is gathered first: applied and answered once, after its last part.
        let Some(resp) = gather(&mut parts, resp) else { continue };
        if !resp.roots.is_empty() {
            let bundle = TrustBundle {
                trust_domain: mesh.material().bundle.trust_domain.clone(),
                roots: resp.roots.iter().cloned().map(CertificateDer::from).collect(),
            };
            if let Err(e) = mesh.update(None, Some(bundle)) {
                tracing::warn!(error = %e, "trust bundle update refused");
            } else {
                tracing::info!(roots = resp.roots.len(), "trust bundle updated");
            }
            if !resp.signer.is_empty() {
                sub.renewal.set_signer(&resp.signer);
            }
            // The control plane learns which roots this proxy trusts now.
            let c = DiscoveryRequest { kind: Some(ReqKind::Credentials(credentials(mesh))) };
            if tx.send(c).await.is_err() {
                break;
            }
        }
        let mut decoded = Vec::with_capacity(resp.upserts.len());
        let mut errors = Vec::new();
        for r in &resp.upserts {
            let source = Source { file: format!("control-plane:{}", r.key).into(), line: 0 };
            let result = serde_json::from_slice::<serde_json::Value>(&r.json)
                .map_err(|e| e.to_string())
                .and_then(|v| meshgate_api::decode_document(&source, v).map_err(|e| e.to_string()));
            match result {
                Ok(mut objs) if objs.len() == 1 => {
                    if let Some(o) = objs.pop() {
                        decoded.push((r.key.clone(), o));
                    }
                }
                Ok(_) => errors.push(format!("{}: not exactly one resource", r.key)),
                Err(e) => errors.push(e),
            }
        }
        // What was received is kept even when it cannot be applied: the control plane sends
        // only changes from now on, and the next push is applied on top of everything. A push
        // that does not even decode changes nothing.
        let resources_changed = resp.full || !resp.upserts.is_empty() || !resp.removals.is_empty();
        let outcome = if errors.is_empty() && !resources_changed {
            // A new trust bundle alone: nothing to compile again.
            Ok(())
        } else if errors.is_empty() {
            if resp.full {
                objects.clear();
            }
            for k in &resp.removals {
                objects.remove(k);
            }
            objects.extend(decoded);
            let (set, dups) = ResourceSet::from_objects(objects.values().cloned().collect());
            if dups.is_empty() { apply(set).await } else { Err(dups.to_string()) }
        } else {
            Err(errors.join("\n"))
        };
        let reply = match outcome {
            Ok(()) => {
                *version = resp.version.clone();
                if resources_changed {
                    tracing::info!(version = %resp.version, resources = objects.len(), "configuration applied");
                }
                ReqKind::Ack(Ack { version: resp.version })
            }
            Err(error) => {
                crate::telemetry::note_rejected();
                tracing::error!(version = %resp.version, "configuration refused; keeping version {version}: {error}");
                ReqKind::Nack(Nack { version: resp.version, error })
            }
        };
        if tx.send(DiscoveryRequest { kind: Some(reply) }).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Adds `resp` to the parts of a push gathered so far: the whole push once `resp` is its last
/// part (or the push came whole), `None` while more parts are to come.
fn gather(parts: &mut Option<DiscoveryResponse>, resp: DiscoveryResponse) -> Option<DiscoveryResponse> {
    let whole = match parts.take() {
        None => resp,
        Some(mut so_far) => {
            so_far.full |= resp.full;
            so_far.upserts.extend(resp.upserts);
            so_far.removals.extend(resp.removals);
            if !resp.roots.is_empty() {
                so_far.roots = resp.roots;
                so_far.signer = resp.signer;
            }
            so_far.version = resp.version;
            so_far.more = resp.more;
            so_far
        }
    };
    if whole.more {
        *parts = Some(whole);
        None
    } else {
        Some(whole)
    }
}

/// How often a proxy reports its edges for the service graph.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Streams this proxy's edge statistics to the control plane (`Telemetry.Report`) every
/// [`REPORT_INTERVAL`]: what changed in its metrics since the last report. At most a few
/// reports wait while the control plane is slow; a report that cannot be queued (or is lost
/// with a broken stream) is dropped, and the next one says how many were.
pub async fn report(
    target: ControlPlaneAddr,
    mesh: Arc<MeshTls>,
    role: String,
    sink: crate::telemetry::Sink,
    mut asks: mpsc::Receiver<TapAsk>,
) {
    if sink.metrics().is_none() {
        return;
    }
    // What the taps the control plane asked for have caught, sent with the next report.
    let tapped: Arc<std::sync::Mutex<Vec<Tapped>>> = Arc::default();
    let mut deltas = crate::telemetry::report::Deltas::default();
    let mut dropped = 0u64;
    let mut backoff = Duration::from_millis(500);
    // A report the stream ended under: sent first on the next one (an idle proxy writes to its
    // stream only when it has something to say, so that is when it finds the stream gone).
    let mut unsent: Option<meshgate_proto::meshgate::EdgeReport> = None;
    loop {
        let material = mesh.material();
        let ch = match channel(&target, material.bundle.clone(), Some(&material.svid)) {
            Ok(ch) => ch,
            Err(e) => {
                tracing::debug!(error = %e, "telemetry report: no channel");
                tokio::time::sleep(REPORT_INTERVAL).await;
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<meshgate_proto::meshgate::EdgeReport>(4);
        if let Some(mut r) = unsent.take() {
            r.dropped = dropped;
            if tx.try_send(r).is_ok() {
                dropped = 0;
            }
        }
        let mut client = TelemetryClient::new(ch);
        let call = tokio::spawn(async move { client.report(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        let mut ticker = tokio::time::interval(REPORT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(ask) = asks.recv() => {
                    catch(&sink, ask, tapped.clone());
                    continue;
                }
            }
            let Some(metrics) = sink.metrics() else { return };
            let edges = deltas.next(metrics);
            let tapped = tapped.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
            // Nothing happened: nothing to say. An idle proxy sending empty reports ran the
            // encoder, h2's stream and TLS every interval, ~1 MiB of code kept resident.
            if edges.is_empty() && tapped.is_empty() && dropped == 0 {
                continue;
            }
            let report = meshgate_proto::meshgate::EdgeReport {
                role: role.clone(),
                interval_ms: REPORT_INTERVAL.as_millis() as u64,
                edges,
                dropped,
                tapped,
            };
            match tx.try_send(report) {
                Ok(()) => {
                    dropped = 0;
                    backoff = Duration::from_millis(500);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    tracing::debug!("telemetry report dropped: the control plane is behind");
                }
                Err(mpsc::error::TrySendError::Closed(r)) => {
                    unsent = Some(r);
                    break;
                }
            }
        }
        if let Ok(Err(s)) = call.await {
            tracing::debug!("telemetry report stream ended: {}: {}", s.code(), s.message());
        }
        if unsent.is_none() {
            dropped += 1;
        }
        tokio::time::sleep(backoff + Duration::from_millis(fastrand::u64(0..500))).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Answers a tap: listens to this proxy's requests for `ask.seconds` (at most `ask.max`
/// records, ten minutes at most), each kept as its tap record for the next report. Requests are
/// recorded in detail only while some tap listens, so this costs nothing the rest of the time.
fn catch(sink: &crate::telemetry::Sink, ask: TapAsk, into: Arc<std::sync::Mutex<Vec<Tapped>>>) {
    let Some(tap) = sink.tap() else { return };
    let (mut rx, listening) = tap.subscribe();
    let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(ask.seconds.clamp(1, 600)));
    let max = ask.max.clamp(1, 1000) as usize;
    tokio::spawn(async move {
        let _listening = listening;
        let mut caught = 0;
        while caught < max {
            let r = match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Ok(r)) => r,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) | Err(_) => break,
            };
            let record = crate::telemetry::access::request_json(&r).to_string();
            if let Ok(mut t) = into.lock() {
                t.push(Tapped { tap: ask.id, record });
                caught += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_proto::meshgate::Resource;

    #[tokio::test]
    async fn the_control_plane_connection_probes_a_silent_peer_within_35_seconds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let sock = socket2::SockRef::from(&tcp);
        assert!(!sock.keepalive().unwrap(), "off before");
        super::keep_alive(&tcp).unwrap();
        assert!(sock.keepalive().unwrap());
        let (time, interval, retries) = (
            sock.tcp_keepalive_time().unwrap(),
            sock.tcp_keepalive_interval().unwrap(),
            sock.tcp_keepalive_retries().unwrap(),
        );
        assert_eq!((time.as_secs(), interval.as_secs(), retries), (20, 5, 3));
        assert!(time + interval * retries <= Duration::from_secs(35));
    }

    fn part(version: &str, full: bool, keys: &[&str], more: bool) -> DiscoveryResponse {
        DiscoveryResponse {
            version: version.into(),
            full,
            upserts: keys.iter().map(|k| Resource { key: (*k).into(), json: bytes::Bytes::new() }).collect(),
            more,
            ..DiscoveryResponse::default()
        }
    }

    #[test]
    fn a_push_in_parts_is_gathered_whole_and_a_whole_push_passes() {
        let mut parts = None;
        assert!(gather(&mut parts, part("7", true, &["a", "b"], true)).is_none());
        let mut second = part("7", false, &["c"], true);
        second.removals.push("old".into());
        assert!(gather(&mut parts, second).is_none());
        let mut last = part("7", false, &["d"], false);
        last.roots.push(b"root".to_vec());
        last.signer = "abc".into();
        let whole = gather(&mut parts, last).unwrap();
        assert!(whole.full && !whole.more && parts.is_none());
        assert_eq!(whole.upserts.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(
            (whole.removals.as_slice(), whole.roots.len(), whole.signer.as_str()),
            (&["old".to_string()][..], 1, "abc")
        );
        let alone = gather(&mut parts, part("8", false, &["e"], false)).unwrap();
        assert_eq!((alone.version.as_str(), alone.upserts.len(), alone.full), ("8", 1, false));
    }
}
