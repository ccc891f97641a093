//! The gateway role: a snapshot of compiled configuration swapped atomically on reload, the
//! listening ports that snapshot asks for, and graceful draining.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use meshgate_model::rule::UpstreamProtocol;

use crate::balance::BackendState;
use meshgate_model::{Compiled, Condition, GatewayConfig};
use tokio::net::TcpListener;

use crate::balance::BackendRt;
use crate::pool::EndpointPool;
use crate::server::{PortServer, ServerSettings};

/// Everything a request needs, immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every applied configuration.
    pub version: u64,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// Where it was read from (files, or the control plane).
    pub sources: Vec<String>,
    /// The compiled configuration.
    pub config: GatewayConfig,
    /// Status conditions found while compiling.
    pub conditions: Vec<Condition>,
    /// Runtime state of each backend, indexed by `ServiceBackend::slot`.
    pub backends: Vec<Arc<BackendRt>>,
}

impl Snapshot {
    /// The pool of the meshed pod at `addr` (sidecars: a client dialled a pod directly).
    pub fn mesh_endpoint(&self, addr: &SocketAddr) -> Option<&Arc<EndpointPool>> {
        let at = self.config.mesh.as_ref()?.endpoints.get(addr)?;
        self.backends.get(at.slot)?.endpoints.get(at.index)
    }
}

/// How the gateway listens and talks upstream.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Address listeners bind to (the port comes from each Gateway listener).
    pub bind: IpAddr,
    /// Downstream connection settings.
    pub server: ServerSettings,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Log one line per request.
    pub access_log: bool,
    /// This proxy's mTLS identity, for endpoints reached over mTLS.
    pub tls: Option<Arc<meshgate_tls::MeshTls>>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            bind: IpAddr::from([0, 0, 0, 0]),
            server: ServerSettings::default(),
            drain_timeout: Duration::from_secs(10),
            access_log: false,
            tls: None,
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
    options: GatewayOptions,
    snapshot: Arc<ArcSwap<Snapshot>>,
    ports: tokio::sync::Mutex<HashMap<u16, PortServer>>,
    pools: Mutex<HashMap<PoolKey, Weak<EndpointPool>>>,
    states: Mutex<HashMap<Arc<str>, Weak<BackendState>>>,
    housekeeping: AtomicBool,
    versions: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Gateway {
    /// A gateway with an empty configuration, serving nothing until [`Gateway::apply`].
    pub fn new(options: GatewayOptions) -> Arc<Self> {
        let empty = Snapshot {
            version: 0,
            applied_at: SystemTime::now(),
            sources: Vec::new(),
            config: GatewayConfig::default(),
            conditions: Vec::new(),
            backends: Vec::new(),
        };
        Arc::new(Gateway {
            options,
            snapshot: Arc::new(ArcSwap::from_pointee(empty)),
            ports: tokio::sync::Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            housekeeping: AtomicBool::new(false),
            versions: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// This proxy's mTLS state, when it has an identity.
    pub fn tls(&self) -> Option<Arc<meshgate_tls::MeshTls>> {
        self.options.tls.clone()
    }

    /// The configuration now in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The cell holding the configuration in force (servers load it per request).
    pub(crate) fn snapshot_cell(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// True once a configuration is applied and its ports are open, until draining starts.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// The address a port is actually bound to (useful with port 0 in tests).
    pub async fn local_addr(&self, port: u16) -> Option<SocketAddr> {
        self.ports.lock().await.get(&port).map(PortServer::local_addr)
    }

    /// Publishes a compiled configuration: opens the ports it needs first (if one cannot be
    /// opened, nothing changes and the error says which), builds its runtime state (reusing
    /// connection pools of endpoints that stay), swaps it in atomically, then starts serving
    /// the new ports and closes the ones no longer wanted. Requests in flight keep the snapshot
    /// they started with.
    pub async fn apply(self: &Arc<Self>, compiled: Compiled, sources: Vec<String>) -> Result<u64, Vec<BindError>> {
        self.start_housekeeping();
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
        let backends = self.prepare_backends(&compiled.config);
        let version = self.versions.fetch_add(1, Ordering::AcqRel) + 1;
        let snapshot = Snapshot {
            version,
            applied_at: SystemTime::now(),
            sources,
            config: compiled.config,
            conditions: compiled.conditions,
            backends,
        };
        self.snapshot.store(Arc::new(snapshot));
        for (port, listener, who) in opened {
            let server = PortServer::start(
                listener,
                port,
                self.snapshot.clone(),
                self.options.server.clone(),
                self.options.access_log,
            );
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
        drop(ports);
        self.prune_pools();
        self.ready.store(true, Ordering::Release);
        Ok(version)
    }

    fn prepare_backends(&self, config: &GatewayConfig) -> Vec<Arc<BackendRt>> {
        let (Ok(mut pools), Ok(mut states)) = (self.pools.lock(), self.states.lock()) else { return Vec::new() };
        config
            .backends
            .iter()
            .map(|b| {
                let state = match states.get(&b.id).and_then(Weak::upgrade) {
                    Some(s) => s,
                    None => {
                        let s = Arc::new(BackendState::default());
                        states.insert(b.id.clone(), Arc::downgrade(&s));
                        s
                    }
                };
                let endpoints = b
                    .endpoints
                    .iter()
                    .map(|e| {
                        let key = PoolKey {
                            backend: b.id.clone(),
                            addr: e.addr,
                            protocol: b.protocol,
                            connect: b.policy.connect_timeout,
                            idle: b.policy.idle_timeout,
                            identity: e.identity.clone(),
                        };
                        match pools.get(&key).and_then(Weak::upgrade) {
                            Some(p) => p,
                            None => {
                                let tls = self.tls_dial(e);
                                let p = Arc::new(EndpointPool::with_tls(
                                    e.addr,
                                    b.protocol,
                                    tls,
                                    state.clone(),
                                    b.policy.connect_timeout,
                                    b.policy.idle_timeout,
                                ));
                                pools.insert(key, Arc::downgrade(&p));
                                p
                            }
                        }
                    })
                    .collect();
                Arc::new(BackendRt::new(b.clone(), endpoints, state))
            })
            .collect()
    }

    /// mTLS settings for an endpoint that expects them (and for which this proxy has an
    /// identity).
    fn tls_dial(&self, e: &meshgate_model::rule::Endpoint) -> Option<crate::pool::TlsDial> {
        let expected = e.identity.as_deref()?;
        let Some(mesh) = &self.options.tls else {
            tracing::warn!(endpoint = %e.addr, %expected, "endpoint expects mTLS but this proxy has no identity; dialling plaintext");
            return None;
        };
        match meshgate_identity::SpiffeId::parse(expected) {
            Ok(expected) => Some(crate::pool::TlsDial { mesh: mesh.clone(), expected }),
            Err(err) => {
                tracing::warn!(endpoint = %e.addr, %err, "endpoint identity is not a SPIFFE ID; dialling plaintext");
                None
            }
        }
    }

    fn prune_pools(&self) {
        if let Ok(mut pools) = self.pools.lock() {
            pools.retain(|_, p| p.strong_count() > 0);
        }
        if let Ok(mut states) = self.states.lock() {
            states.retain(|_, s| s.strong_count() > 0);
        }
    }

    /// Closes idle upstream connections past their idle timeout, every few seconds.
    fn start_housekeeping(self: &Arc<Self>) {
        if self.housekeeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gw) = weak.upgrade() else { return };
                let live: Vec<Arc<EndpointPool>> =
                    gw.pools.lock().map(|p| p.values().filter_map(Weak::upgrade).collect()).unwrap_or_default();
                for p in live {
                    p.reap_idle();
                }
            }
        });
    }

    /// Stops accepting on every port and waits (up to the drain timeout) for requests in
    /// flight to finish.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
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

/// Pools are per backend (so limits count per Service port) and per settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    backend: Arc<str>,
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    connect: Duration,
    idle: Duration,
    identity: Option<String>,
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
