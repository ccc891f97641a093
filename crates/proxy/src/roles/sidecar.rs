//! The sidecar role: the proxy beside one workload, reached through the redirection rules of
//! its network namespace.
//!
//! Outbound (port 15001): every TCP connection the application opens arrives here with its
//! original destination. A Service's virtual IP is served with the mesh's routes and policies
//! (HTTP, declared or detected by sniffing the first bytes) or as opaque TCP to one of its
//! endpoints; a meshed pod dialled by address gets opaque TCP over mTLS to exactly that pod;
//! anything else passes through untouched, or is refused under `REGISTRY_ONLY`.
//!
//! Inbound (port 15006): the [`Inbound`] proxy, forwarding to the application on localhost.

use std::io::{Seek, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use meshgate_model::config::{AppProtocol, MeshOutbound};
use meshgate_model::{Compiled, ProxyConfig};
use meshgate_tls::MeshTls;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::inbound::{AppTarget, Inbound, InboundOptions};
use crate::conn::ServerSettings;
use crate::conn::accept::{Tracker, accept_until_stopped};
use crate::conn::detect::{Detected, detect};
use crate::conn::serve::{ConnSettings, http_builder};
use crate::conn::tcp::{Relayed, relay};
use crate::core::ProxyCore;
use crate::http::{ConnInfo, Target};
use crate::telemetry::{CloseReason, Opened, PlaintextReason, Role, Security};
use crate::upstream::pool::{EndpointPool, UpstreamError};

/// Settings of a sidecar.
#[derive(Debug)]
pub struct SidecarOptions {
    /// `namespace/name` of the workload.
    pub workload: String,
    /// Where redirected outbound connections arrive (Istio: 15001).
    pub outbound: SocketAddr,
    /// Where redirected inbound connections arrive (Istio: 15006).
    pub inbound: SocketAddr,
    /// How long to wait for a client's first bytes before treating an undeclared port as
    /// opaque TCP (server-speaks-first protocols send nothing).
    pub sniff_timeout: Duration,
    /// How long connections may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Where request and connection records go.
    pub sink: crate::telemetry::Sink,
    /// The workload's namespace `/etc/hosts` (bind-mounted by `ip netns exec`), rewritten in
    /// place with every Service's names: opened before privileges are dropped.
    pub hosts_file: Option<std::fs::File>,
}

impl SidecarOptions {
    /// Istio's ports on all addresses.
    pub fn new(workload: String) -> Self {
        SidecarOptions {
            workload,
            outbound: SocketAddr::from(([0, 0, 0, 0], 15001)),
            inbound: SocketAddr::from(([0, 0, 0, 0], 15006)),
            sniff_timeout: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(5),
            sink: crate::telemetry::noop(),
            hosts_file: None,
        }
    }
}

/// A running sidecar.
pub struct Sidecar {
    /// The proxy core: the configuration in force, backends and pools.
    pub core: Arc<ProxyCore>,
    /// The inbound proxy.
    pub inbound: Arc<Inbound>,
    workload: String,
    sniff_timeout: Duration,
    drain_timeout: Duration,
    /// The namespace's hosts file and the text last written to it.
    hosts: Option<Arc<Mutex<(std::fs::File, String)>>>,
    settings: ServerSettings,
    builder: auto::Builder<TokioExecutor>,
    /// Ends the outbound accept loop and asks its connections to finish.
    stop: watch::Sender<bool>,
    tracker: Arc<Tracker>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sidecar({})", self.workload)
    }
}

impl Sidecar {
    /// Binds both ports and starts accepting; until the first [`Sidecar::apply`], outbound
    /// connections pass through and inbound ones get the default policy (PERMISSIVE).
    pub async fn start(opts: SidecarOptions, tls: Option<Arc<MeshTls>>) -> std::io::Result<Arc<Self>> {
        let outbound = TcpListener::bind(opts.outbound).await?;
        let inbound_listener = TcpListener::bind(opts.inbound).await?;
        let outbound_addr = outbound.local_addr()?;
        let inbound_addr = inbound_listener.local_addr()?;
        let peer = match opts.workload.split_once('/') {
            Some((ns, name)) => meshgate_model::peer::Peer::named(ns, name),
            None => meshgate_model::peer::Peer::unknown(),
        };
        let core = ProxyCore::build(tls.clone(), opts.sink.clone(), peer);
        let inbound = Inbound::new(
            AppTarget::OriginalDst,
            tls,
            meshgate_model::security::InboundPolicy::default(),
            InboundOptions { workload: opts.workload.clone(), sink: core.sink().clone(), ..InboundOptions::default() },
        );
        let (stop, stop_rx) = watch::channel(false);
        let settings = ServerSettings::default();
        let me = Arc::new(Sidecar {
            core,
            inbound: inbound.clone(),
            workload: opts.workload,
            sniff_timeout: opts.sniff_timeout,
            drain_timeout: opts.drain_timeout,
            hosts: opts.hosts_file.map(|f| Arc::new(Mutex::new((f, String::new())))),
            builder: http_builder(&settings),
            settings,
            stop,
            tracker: Arc::new(Tracker::default()),
        });
        tokio::spawn(inbound.serve(inbound_listener));
        tokio::spawn(me.clone().accept_outbound(outbound, stop_rx));
        tracing::info!(workload = %me.workload, outbound = %outbound_addr, inbound = %inbound_addr, "sidecar listening");
        Ok(me)
    }

    /// True once a configuration from the control plane is in force.
    pub fn is_configured(&self) -> bool {
        self.core.is_ready()
    }

    /// Applies a configuration compiled by [`meshgate_model::mesh::compile_mesh`]: the inbound
    /// policy, the outbound Services and the namespace's host names.
    pub async fn apply(&self, config: ProxyConfig, sources: Vec<String>) -> Result<u64, String> {
        let Some(mesh) = &config.mesh else {
            return Err("not a sidecar configuration (no mesh section)".into());
        };
        self.inbound.set_policy(mesh.inbound.clone());
        self.inbound.set_peers(mesh.peers.clone());
        self.inbound.set_header_timeout(config.downstream.header_timeout);
        if let Some(file) = &self.hosts {
            let text = hosts_text(mesh);
            let file = file.clone();
            let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut guard = file.lock().map_err(|_| std::io::Error::other("hosts file lock poisoned"))?;
                let (f, last) = &mut *guard;
                // Most pushes change no Service: leave the file alone, so that the application
                // never reads it mid-write for nothing.
                if *last == text {
                    return Ok(());
                }
                // In place (the namespace's /etc/hosts is a bind mount of this very inode, so a
                // rename would not reach it), new text over old and only then cut: a lookup
                // meanwhile never finds the file empty (and then asks a DNS server the
                // namespace cannot reach, waiting seconds for its timeout).
                f.rewind()?;
                f.write_all(text.as_bytes())?;
                f.set_len(text.len() as u64)?;
                f.flush()?;
                *last = text;
                Ok(())
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot update the namespace's /etc/hosts"),
                Err(e) => tracing::warn!(error = %e, "cannot update the namespace's /etc/hosts"),
            }
        }
        Ok(self.core.publish(Compiled { config, ..Compiled::default() }, sources))
    }

    /// Stops accepting on both ports and lets connections in flight, outbound and inbound,
    /// finish (up to the drain timeout).
    pub async fn drain(&self) {
        self.stop_accepting();
        let both = async { tokio::join!(self.tracker.wait_idle(), self.inbound.drain()) };
        if tokio::time::timeout(self.drain_timeout, both).await.is_err() {
            tracing::warn!(workload = %self.workload, "drain timeout: stopping with connections still open");
        }
    }

    /// Closes both listeners; HTTP connections are asked to finish.
    pub(crate) fn stop_accepting(&self) {
        self.stop.send_replace(true);
        self.inbound.stop_accepting();
    }

    async fn accept_outbound(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        accept_until_stopped(listener, stop, &self.tracker, |stream, peer| self.clone().outbound(stream, peer)).await;
    }

    /// HTTP to `target` (a Service's virtual IP, or a meshed pod, as this connection's original
    /// destination said once), each request with the configuration current when it arrives.
    async fn serve_http(&self, stream: TcpStream, peer: SocketAddr, target: Target, port: u16) {
        let info = ConnInfo { port, peer, scheme: "http", target, tls: None, sni: None };
        let cell = self.core.cell();
        let settings = ConnSettings::new(&self.settings);
        super::serve_routes(stream, info, cell, &self.builder, self.stop.subscribe(), settings).await;
    }

    async fn outbound(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let opened = Opened::now(Role::SidecarOutbound, peer);
        let not_meshed = Security::Plaintext(PlaintextReason::NotMeshed);
        // Opaque TCP: relayed here, recorded here (HTTP connections are recorded as served).
        let record = |relayed: Option<Relayed>, security: Security, to: Option<(&Arc<str>, &EndpointPool)>| {
            let (bytes, close) = match relayed {
                Some(r) => ((r.bytes_in, r.bytes_out), r.close),
                None => ((0, 0), CloseReason::UpstreamUnreachable),
            };
            let snapshot = self.core.snapshot();
            let mut r = opened
                .closed(bytes, close, security, None, true)
                .sourced(snapshot.identity.clone(), Some(snapshot.peer.clone()))
                .relayed(to.map(|t| t.0), to.map(|t| t.1));
            if close == CloseReason::UpstreamUnreachable {
                r.flags = crate::flags::Flags::UPSTREAM_CONNECT_FAILURE;
            }
            self.core.sink().connection(&r);
        };
        let dst = match meshgate_intercept::original_dst(&stream) {
            Ok(dst) if stream.local_addr().is_ok_and(|l| l == dst) => {
                tracing::debug!(%peer, "connection to the outbound port itself, not redirected: closing");
                return;
            }
            Ok(dst) => dst,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "no original destination on an intercepted connection");
                return;
            }
        };
        let snapshot = self.core.snapshot();
        let Some(mesh) = snapshot.config.mesh.as_ref() else {
            // No configuration yet (the application starts after it, so this is a race with
            // shutdown): behave as without a mesh.
            drop(snapshot);
            record(passthrough(&mut stream, dst).await, not_meshed, None);
            return;
        };
        if let Some(service) = mesh.services.get(&dst) {
            let http = match service.protocol {
                AppProtocol::Http => true,
                AppProtocol::Tcp => false,
                AppProtocol::Sniff => is_http(detect(&stream, self.sniff_timeout).await),
            };
            if http {
                drop(snapshot);
                self.serve_http(stream, peer, Target::Service(dst), dst.port()).await;
                return;
            }
            let Some(backend) = service.tcp.and_then(|t| snapshot.backends.get(t.slot)).cloned() else {
                tracing::warn!(service = %service.name, port = dst.port(), "TCP connection closed: the Service port has no backend");
                return;
            };
            drop(snapshot);
            match super::tcp_to_backend(&mut stream, &backend, None).await {
                Ok((relayed, endpoint)) => {
                    record(Some(relayed), endpoint.security(), Some((&backend.model.id, &endpoint)));
                }
                Err(why) => {
                    tracing::warn!(service = %backend.model.id, %dst, "TCP connection closed: {why}");
                    record(None, not_meshed, None);
                }
            }
            return;
        }
        if mesh.endpoints.contains_key(&dst) {
            let pool = snapshot.mesh_endpoint(&dst).cloned();
            drop(snapshot);
            let Some(pool) = pool else {
                tracing::warn!(%dst, "endpoint vanished from the configuration: closing");
                return;
            };
            if is_http(detect(&stream, self.sniff_timeout).await) {
                self.serve_http(stream, peer, Target::Pod(dst), dst.port()).await;
            } else {
                let backend = snapshot_backend_id(&self.core, &dst);
                match tcp_to_endpoint(&mut stream, &pool).await {
                    Ok(relayed) => record(Some(relayed), pool.security(), backend.as_ref().map(|b| (b, &*pool))),
                    Err(e) => {
                        tracing::warn!(endpoint = %pool.addr, error = %e, "TCP upstream connect failed");
                        record(None, pool.security(), None);
                    }
                }
            }
            return;
        }
        if mesh.registry_only {
            tracing::info!(
                target: "meshgate::access",
                %peer,
                %dst,
                "connection refused: {dst} is not a Service or endpoint in the mesh and outboundTrafficPolicy is REGISTRY_ONLY"
            );
            self.core.sink().connection(&opened.closed((0, 0), CloseReason::Refused, not_meshed, None, true));
            return;
        }
        drop(snapshot);
        record(passthrough(&mut stream, dst).await, not_meshed, None);
    }
}

/// The Service of the meshed pod at `dst` (a client dialled it directly).
fn snapshot_backend_id(core: &ProxyCore, dst: &SocketAddr) -> Option<Arc<str>> {
    let snapshot = core.snapshot();
    let at = snapshot.config.mesh.as_ref()?.endpoints.get(dst)?;
    Some(snapshot.backends.get(at.slot)?.model.id.clone())
}

fn is_http(detected: Detected) -> bool {
    matches!(detected, Detected::Http1 | Detected::Http2)
}

/// `/etc/hosts` for a workload: every Service's names on its virtual IP.
pub fn hosts_text(mesh: &MeshOutbound) -> String {
    let mut by_ip: std::collections::BTreeMap<std::net::IpAddr, Vec<&str>> = std::collections::BTreeMap::new();
    for (addr, s) in &mesh.services {
        let names = by_ip.entry(addr.ip()).or_default();
        for h in &s.hosts {
            if !names.contains(&h.as_str()) {
                names.push(h);
            }
        }
    }
    let mut text = String::from("# written by meshgate: the mesh's Services\n127.0.0.1 localhost\n::1 localhost\n");
    for (ip, names) in by_ip {
        text.push_str(&format!("{ip} {}\n", names.join(" ")));
    }
    text
}

/// Opaque TCP to one endpoint; `Err` only when it could not be reached.
async fn tcp_to_endpoint(stream: &mut TcpStream, pool: &EndpointPool) -> Result<Relayed, UpstreamError> {
    let mut upstream = pool.open_tcp().await?;
    Ok(relay(stream, &mut upstream).await)
}

/// Forwards the connection to where the application meant it to go, unchanged.
async fn passthrough(stream: &mut TcpStream, dst: SocketAddr) -> Option<Relayed> {
    match crate::upstream::pool::dial(dst, Duration::from_secs(10)).await {
        Ok(mut upstream) => Some(relay(stream, &mut upstream).await),
        Err(e) => {
            tracing::debug!(%dst, error = %e, "passthrough connect failed");
            None
        }
    }
}
