//! The gateway role: the listening ports the configuration's Gateway listeners ask for, each
//! connection served with the request path (listener chosen by port and `Host`), ports opened
//! before a configuration that needs them is published and closed after one that no longer
//! does, and graceful draining.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use meshgate_model::Compiled;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conn::ServerSettings;
use crate::conn::accept::{Tracker, accept_until_stopped};
use crate::conn::detect::{Detected, detect};
use crate::conn::serve::{ConnSettings, http_builder};
use crate::conn::tls;
use crate::core::{ProxyCore, Snapshot};
use crate::http::{ConnInfo, Target};
use crate::telemetry::{CloseReason, Opened, PlaintextReason, Role, Security, Sink};

mod l4;

/// How the gateway listens and talks upstream.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Address listeners bind to (the port comes from each Gateway listener).
    pub bind: IpAddr,
    /// Downstream connection settings.
    pub server: ServerSettings,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// This proxy's mTLS identity, for endpoints reached over mTLS.
    pub tls: Option<Arc<meshgate_tls::MeshTls>>,
    /// Where request and connection records go.
    pub sink: Sink,
    /// The ports Ingresses are served on (`--ingress-http`, `--ingress-https`).
    pub ingress: meshgate_model::ingress::IngressPorts,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            bind: IpAddr::from([0, 0, 0, 0]),
            server: ServerSettings::default(),
            drain_timeout: Duration::from_secs(10),
            tls: None,
            sink: crate::telemetry::noop(),
            ingress: meshgate_model::ingress::IngressPorts::default(),
        }
    }
}

/// A port that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (wanted by {wanted_by}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which Gateway listeners want it.
    pub wanted_by: String,
    /// The socket error.
    pub source: std::io::Error,
}

/// A running gateway.
pub struct Gateway {
    core: Arc<ProxyCore>,
    options: GatewayOptions,
    ports: tokio::sync::Mutex<HashMap<u16, PortServer>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gateway({:?})", self.core)
    }
}

impl Gateway {
    /// A gateway with an empty configuration, serving nothing until [`Gateway::apply`].
    pub fn new(options: GatewayOptions) -> Arc<Self> {
        let core = ProxyCore::with_sink(options.tls.clone(), options.sink.clone());
        Arc::new(Gateway { core, options, ports: tokio::sync::Mutex::new(HashMap::new()) })
    }

    /// The options it was started with.
    pub fn options(&self) -> &GatewayOptions {
        &self.options
    }

    /// The core shared with other roles.
    pub fn core(&self) -> &Arc<ProxyCore> {
        &self.core
    }

    /// This proxy's mTLS state, when it has an identity.
    pub fn tls(&self) -> Option<Arc<meshgate_tls::MeshTls>> {
        self.core.tls()
    }

    /// The configuration now in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.core.snapshot()
    }

    /// True once a configuration is applied and its ports are open, until draining starts.
    pub fn is_ready(&self) -> bool {
        self.core.is_ready()
    }

    /// The address a port is actually bound to (useful with port 0 in tests).
    pub async fn local_addr(&self, port: u16) -> Option<SocketAddr> {
        self.ports.lock().await.get(&port).map(PortServer::local_addr)
    }

    /// Publishes a compiled configuration: opens the ports it needs first (if one cannot be
    /// opened, nothing changes and the error says which), publishes it in the core, then starts
    /// serving the new ports and closes the ones no longer wanted. Requests in flight keep the
    /// snapshot they started with.
    pub async fn apply(self: &Arc<Self>, compiled: Compiled, sources: Vec<String>) -> Result<u64, Vec<BindError>> {
        let wanted: HashMap<u16, String> = compiled
            .config
            .ports
            .iter()
            .map(|(port, set)| {
                let who: Vec<String> =
                    set.listeners.iter().map(|l| format!("Gateway {} listener {:?}", l.gateway, l.name)).collect();
                (*port, who.join(", "))
            })
            .collect();
        let mut ports = self.ports.lock().await;
        let mut opened = Vec::new();
        let mut errors = Vec::new();
        for (port, who) in &wanted {
            if ports.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(self.options.bind, *port);
            match bind(addr) {
                Ok(listener) => opened.push((*port, listener, who.clone())),
                Err(source) => errors.push(BindError { addr, wanted_by: who.clone(), source }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let version = self.core.publish(compiled, sources);
        for (port, listener, who) in opened {
            let server = PortServer::start(listener, port, self.core.cell(), self.options.server.clone());
            tracing::info!(addr = %server.local_addr(), listeners = %who, "listening");
            ports.insert(port, server);
        }
        let gone: Vec<u16> = ports.keys().filter(|p| !wanted.contains_key(p)).copied().collect();
        for port in gone {
            if let Some(server) = ports.remove(&port) {
                tracing::info!(port, "no listener wants this port any more: closing it");
                let timeout = self.options.drain_timeout;
                tokio::spawn(async move { server.drain(timeout).await });
            }
        }
        Ok(version)
    }

    /// Stops accepting on every port and waits (up to the drain timeout) for requests in
    /// flight to finish.
    pub async fn drain(&self) {
        self.core.start_draining();
        let servers: Vec<PortServer> = self.ports.lock().await.drain().map(|(_, s)| s).collect();
        let timeout = self.options.drain_timeout;
        let mut tasks = Vec::new();
        for s in servers {
            tasks.push(tokio::spawn(async move { s.drain(timeout).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The accept loop of one port and the connections it accepted.
#[derive(Debug)]
struct PortServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tracker: Arc<Tracker>,
    task: JoinHandle<()>,
}

impl PortServer {
    /// Starts accepting on `listener`; requests are routed with whatever snapshot is current
    /// when each arrives.
    fn start(listener: TcpListener, port: u16, snapshot: Arc<ArcSwap<Snapshot>>, settings: ServerSettings) -> Self {
        let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], port)));
        let (stop, stop_rx) = watch::channel(false);
        let tracker = Arc::new(Tracker::default());
        let builder = Arc::new(http_builder(&settings));
        let per_conn = PerConnection {
            settings: ConnSettings::new(&settings),
            handshake_timeout: settings.handshake_timeout,
            idle_timeout: settings.idle_timeout,
        };
        let task = tokio::spawn(accept_loop(listener, port, snapshot, builder, stop_rx, tracker.clone(), per_conn));
        PortServer { addr, stop, tracker, task }
    }

    /// The bound address.
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, asks every connection to finish its requests and close, and waits up
    /// to `timeout` for them.
    async fn drain(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if tokio::time::timeout(timeout, self.tracker.wait_idle()).await.is_err() {
            tracing::warn!(
                addr = %self.addr,
                connections = self.tracker.live.load(Ordering::Acquire),
                "drain timeout: closing connections with requests still in flight"
            );
        }
    }
}

/// What every connection of a port is served with.
#[derive(Debug, Clone, Copy)]
struct PerConnection {
    settings: ConnSettings,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    snapshot: Arc<ArcSwap<Snapshot>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
    per_conn: PerConnection,
) {
    let conn_stop = stop.clone();
    let live = tracker.clone();
    accept_until_stopped(listener, stop, &tracker, |stream, peer| {
        let (snapshot, builder, stop, live) = (snapshot.clone(), builder.clone(), conn_stop.clone(), live.clone());
        async move {
            // The port's ListenerPolicy, as the configuration of the moment says.
            let (proxy_protocol, max, header, idle) = {
                let snap = snapshot.load();
                let s = snap.config.ports.get(&port).map(|set| &set.settings);
                (
                    s.is_some_and(|s| s.proxy_protocol),
                    s.and_then(|s| s.max_connections),
                    s.and_then(|s| s.header_timeout),
                    s.and_then(|s| s.idle_timeout),
                )
            };
            if let Some(max) = max
                && live.live.load(std::sync::atomic::Ordering::Acquire) > max as usize
            {
                tracing::warn!(%peer, port, max, "connection refused: the listener's maxConnections are open");
                return;
            }
            let mut per_conn = per_conn;
            if let Some(t) = idle {
                per_conn.idle_timeout = (!t.is_zero()).then_some(t);
                per_conn.settings.idle = per_conn.idle_timeout;
            }
            if header.is_some() {
                per_conn.settings.header = header;
            }
            let (stream, peer) = if proxy_protocol {
                match read_proxy_header(stream, peer, per_conn.handshake_timeout).await {
                    Some(accepted) => accepted,
                    None => return,
                }
            } else {
                (stream, peer)
            };
            serve_connection(stream, peer, port, snapshot, &builder, stop, per_conn).await
        }
    })
    .await;
}

/// Reads the PROXY protocol header (v1 or v2) a load balancer sends first: the connection's
/// client is the address it carries (the balancer's own for `LOCAL`/`UNKNOWN`). A connection
/// without a valid header within `timeout` is closed.
async fn read_proxy_header(
    mut stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<(TcpStream, SocketAddr)> {
    use tokio::io::AsyncReadExt;
    match detect(&stream, timeout).await {
        Detected::Proxy(header) => {
            let mut skip = vec![0u8; header.len];
            if stream.read_exact(&mut skip).await.is_err() {
                return None;
            }
            Some((stream, header.source.unwrap_or(peer)))
        }
        other => {
            tracing::debug!(%peer, ?other, "connection closed: this listener requires a PROXY protocol header");
            None
        }
    }
}

/// Serves one connection as its port's listeners say: TCP to its route; a ClientHello for a
/// passthrough listener to its TLSRoute; HTTPS terminated; HTTP. What the port serves is the
/// configuration's of the moment: a reload may change it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    snapshot: Arc<ArcSwap<Snapshot>>,
    builder: &auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
    per_conn: PerConnection,
) {
    let PerConnection { settings, handshake_timeout, idle_timeout } = per_conn;
    let (tcp, passthrough, terminate) = {
        let snap = snapshot.load();
        let set = snap.config.ports.get(&port);
        (
            set.is_some_and(|s| s.tcp().is_some()),
            set.is_some_and(|s| s.passes_tls_through()),
            set.is_some_and(|s| s.terminates_tls()),
        )
    };
    if tcp {
        let opened = Opened::now(Role::Gateway, peer);
        let snap = snapshot.load_full();
        match snap.config.ports.get(&port).and_then(|s| s.tcp()).and_then(|l| l.l4.select(None)) {
            Some(route) => l4::relay_route(stream, peer, route, &snap, opened, idle_timeout).await,
            None => {
                tracing::debug!(%peer, port, "TCP connection closed: no TCPRoute attached to the listener");
                let security = Security::Plaintext(PlaintextReason::NotMeshed);
                snap.sink.connection(&opened.closed((0, 0), CloseReason::Refused, security, None, true));
            }
        }
        return;
    }
    if passthrough {
        let opened = Opened::now(Role::Gateway, peer);
        let detected = detect(&stream, handshake_timeout).await;
        let snap = snapshot.load_full();
        let set = snap.config.ports.get(&port);
        match detected {
            Detected::Tls(hello) => {
                let sni = hello.sni.as_deref();
                if let Some(listener) = set.and_then(|s| s.passthrough(sni)) {
                    match listener.l4.select(sni) {
                        Some(route) => return l4::relay_route(stream, peer, route, &snap, opened, idle_timeout).await,
                        None => {
                            let why = format!("no TLSRoute of listener {:?} serves {sni:?}", listener.name);
                            return l4::refuse_tls(stream, peer, &snap, opened, &why).await;
                        }
                    }
                }
                if !terminate {
                    return l4::refuse_tls(stream, peer, &snap, opened, &format!("no listener serves {sni:?}")).await;
                }
            }
            _ if !terminate => {
                tracing::debug!(%peer, port, "connection closed: not a TLS ClientHello on a TLS port");
                let security = Security::Plaintext(PlaintextReason::NotMeshed);
                snap.sink.connection(&opened.closed((0, 0), CloseReason::Refused, security, None, true));
                return;
            }
            // Not TLS on a port that also terminates: the handshake refuses it.
            _ => {}
        }
    }
    let mut info = ConnInfo { port, peer, scheme: "http", target: Target::Listeners, tls: None, sni: None };
    if !terminate {
        return super::serve_routes(stream, info, snapshot, builder, stop, settings).await;
    }
    let opened = Opened::now(Role::Gateway, peer);
    let mut given = None;
    let mut sni_seen = None;
    // The certificate comes from the configuration in force at this handshake: a swap is seen
    // by the next ClientHello, established connections keep theirs.
    let select = |sni: Option<&str>, _: &mut dyn Iterator<Item = &[u8]>| {
        let snapshot = snapshot.load();
        let Some(cert) = snapshot.config.ports.get(&port).and_then(|set| set.select_cert(sni)) else {
            // No listener serves the name: the handshake fails with an alert.
            return meshgate_tls::edge::refusing_config();
        };
        if sni.is_some() {
            given = Some(cert.clone());
        }
        sni_seen = sni.map(str::to_string);
        Some(cert.server_config())
    };
    match tls::accept(stream, select, handshake_timeout).await {
        Ok(stream) => {
            // A TLS listener in Terminate mode carries bytes: its TLSRoute's backends get them.
            let snap = snapshot.load_full();
            let sni = sni_seen.as_deref();
            if let Some(listener) = snap.config.ports.get(&port).and_then(|s| s.tls_terminate(sni)) {
                let Some(route) = listener.l4.select(sni) else {
                    tracing::debug!(%peer, port, "TLS connection closed: no TLSRoute of listener {:?} serves {sni:?}", listener.name);
                    let record = opened.closed((0, 0), CloseReason::Refused, Security::Tls, None, true);
                    return snap.sink.connection(&record);
                };
                return l4::relay_route(stream, peer, route, &snap, opened, idle_timeout).await;
            }
            info.scheme = "https";
            info.tls = given;
            info.sni = sni_seen.map(|s| meshgate_model::host::normalize_host(&s).into());
            super::serve_routes(stream, info, snapshot, builder, stop, settings).await;
        }
        Err(e) => {
            tracing::debug!(%peer, port, "TLS handshake refused: {e}");
            let record = opened.closed((0, 0), CloseReason::HandshakeFailed, Security::Tls, None, false);
            snapshot.load().sink.connection(&record);
        }
    }
}
