//! The proxy core every role shares: the configuration in force (one snapshot, swapped
//! atomically), the registry of backends and endpoint pools that outlive configuration
//! changes, and publishing a new configuration. Roles sit on top of it (`crate::roles`: the
//! gateway, the sidecar's outbound and inbound sides, the node proxy later) and decide only how
//! connections arrive and which routes apply to them.

mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use meshgate_model::peer::Peer;
use meshgate_model::{Compiled, Condition, ProxyConfig};

use crate::telemetry::Sink;
use crate::upstream::balance::BackendRt;
use crate::upstream::pool::EndpointPool;
use registry::Registry;

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
    pub config: ProxyConfig,
    /// Status conditions found while compiling.
    pub conditions: Vec<Condition>,
    /// Gateway API status of the resources it serves, with transition times kept from the
    /// snapshot before while a condition holds (a file-mode gateway serves it on its admin
    /// endpoint; under a control plane, the control plane writes it).
    pub status: Vec<meshgate_model::gwstatus::ResourceStatus>,
    /// Runtime state of each backend, indexed by `ServiceBackend::slot`.
    pub backends: Vec<Arc<BackendRt>>,
    /// This proxy's SPIFFE ID (the source of the requests it sends upstream).
    pub identity: Option<Arc<str>>,
    /// This proxy's workload (the source of the requests it sends upstream), for records.
    pub peer: Arc<Peer>,
    /// Where request and connection records go.
    pub sink: Sink,
}

impl Snapshot {
    /// The pool of the meshed pod at `addr` (sidecars: a client dialled a pod directly).
    pub fn mesh_endpoint(&self, addr: &SocketAddr) -> Option<&Arc<EndpointPool>> {
        let at = self.config.mesh.as_ref()?.endpoints.get(addr)?;
        self.backends.get(at.slot)?.endpoints.get(at.index)
    }
}

/// The core of one proxy process.
pub struct ProxyCore {
    tls: Option<Arc<meshgate_tls::MeshTls>>,
    identity: Option<Arc<str>>,
    peer: Arc<Peer>,
    sink: Sink,
    snapshot: Arc<ArcSwap<Snapshot>>,
    registry: Registry,
    housekeeping: AtomicBool,
    versions: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl std::fmt::Debug for ProxyCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyCore(version {})", self.snapshot.load().version)
    }
}

impl ProxyCore {
    /// A core with an empty configuration; `tls` is this proxy's identity, for endpoints reached
    /// over mTLS. Records go nowhere.
    pub fn new(tls: Option<Arc<meshgate_tls::MeshTls>>) -> Arc<Self> {
        Self::with_sink(tls, crate::telemetry::noop())
    }

    /// The same, with records handed to `sink`; the proxy's workload is named after its
    /// identity's service account (a gateway's), or `meshgate-gateway` without one.
    pub fn with_sink(tls: Option<Arc<meshgate_tls::MeshTls>>, sink: Sink) -> Arc<Self> {
        let peer = match tls.as_ref().and_then(|t| t.id().workload().map(|(ns, sa)| Peer::named(ns, sa))) {
            Some(p) => p,
            None => Peer::named("meshgate-system", "meshgate-gateway"),
        };
        Self::build(tls, sink, peer)
    }

    /// A core whose records name `peer` as this proxy's workload until a configuration names
    /// it (a sidecar's names its Workload).
    pub fn build(tls: Option<Arc<meshgate_tls::MeshTls>>, sink: Sink, peer: Peer) -> Arc<Self> {
        let identity: Option<Arc<str>> = tls.as_ref().map(|t| Arc::from(t.id().as_str()));
        let peer = Arc::new(peer);
        let empty = Snapshot {
            version: 0,
            applied_at: SystemTime::now(),
            sources: Vec::new(),
            config: ProxyConfig::default(),
            conditions: Vec::new(),
            status: Vec::new(),
            backends: Vec::new(),
            identity: identity.clone(),
            peer: peer.clone(),
            sink: sink.clone(),
        };
        Arc::new(ProxyCore {
            tls,
            identity,
            peer,
            sink,
            snapshot: Arc::new(ArcSwap::from_pointee(empty)),
            registry: Registry::default(),
            housekeeping: AtomicBool::new(false),
            versions: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// This proxy's mTLS state, when it has an identity.
    pub fn tls(&self) -> Option<Arc<meshgate_tls::MeshTls>> {
        self.tls.clone()
    }

    /// Where this proxy's records go.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// The configuration now in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The cell holding the configuration in force (servers load it per request).
    pub(crate) fn cell(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// True once a configuration is in force, until draining starts.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Marks the proxy as draining: no longer ready.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Publishes a compiled configuration: builds its runtime state (reusing the pools of
    /// endpoints that stay, and the counters of backends that stay) and swaps it in atomically.
    /// Requests in flight keep the snapshot they started with. Returns the new version.
    pub fn publish(self: &Arc<Self>, compiled: Compiled, sources: Vec<String>) -> u64 {
        self.start_housekeeping();
        let backends = self.registry.prepare(&compiled.config, self.tls.as_ref());
        let version = self.versions.fetch_add(1, Ordering::AcqRel) + 1;
        let peer = match compiled.config.mesh.as_ref().and_then(|m| m.peers.me.clone()) {
            Some(me) => me,
            None => self.peer.clone(),
        };
        self.sink.configure(&compiled.config.telemetry, &peer);
        let before = self.snapshot.load();
        let now = meshgate_model::time::rfc3339_seconds(SystemTime::now());
        let mut status = compiled.status;
        for s in &mut status {
            let previous = meshgate_model::gwstatus::find(&before.status, &s.object);
            meshgate_model::gwstatus::stamp(&mut s.status, previous, &now);
        }
        let snapshot = Snapshot {
            version,
            applied_at: SystemTime::now(),
            sources,
            config: compiled.config,
            conditions: compiled.conditions,
            status,
            backends,
            identity: self.identity.clone(),
            peer,
            sink: self.sink.clone(),
        };
        self.snapshot.store(Arc::new(snapshot));
        self.registry.prune();
        self.ready.store(true, Ordering::Release);
        version
    }

    /// Tests: the endpoint at `addr` is served by `upstream`, in memory, from the next
    /// configuration on.
    #[cfg(test)]
    pub(crate) fn serve_in_memory(&self, addr: SocketAddr, upstream: crate::upstream::memory::Upstream) {
        if let Ok(mut m) = self.registry.memory.lock() {
            m.insert(addr, upstream);
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
                let Some(core) = weak.upgrade() else { return };
                for p in core.registry.live_pools() {
                    p.reap_idle();
                }
            }
        });
    }
}
