//! The control plane's core: the store, the resource state, the CA, the registry of connected
//! proxies, and the control plane's own serving identity.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshgate_identity::{SpiffeId, TrustDomain};
use meshgate_tls::{CertificateAuthority, SvidRequest, TrustBundle};
use serde::Serialize;

use crate::state::State;
use crate::store::{Store, StoreError};

/// How the control plane is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// SPIFFE trust domain (must match the MeshConfig's, when there is one).
    pub trust_domain: TrustDomain,
    /// Lifetime of a self-signed root.
    pub root_lifetime: Duration,
    /// User-provided CA material.
    pub user_ca: Option<crate::ca::UserCa>,
    /// A name for this replica (proxy-status shows it).
    pub replica: String,
}

impl Options {
    /// Defaults for a trust domain: a self-signed root for ten years.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Options {
            trust_domain,
            root_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            user_ca: None,
            replica: format!("cp-{:04x}", fastrand::u16(..)),
        }
    }
}

/// One connected proxy, as `meshgate proxy-status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRecord {
    /// Its SPIFFE ID.
    pub identity: String,
    /// Node name it reported.
    pub node: String,
    /// sidecar or gateway.
    pub role: String,
    /// Its Workload, for sidecars.
    pub workload: String,
    /// Version last sent.
    pub sent: u64,
    /// Version last acknowledged.
    pub acked: u64,
    /// The error of the last NACK (for the version sent), if any.
    pub nack: Option<String>,
    /// Unix seconds when the last version was sent.
    pub sent_at: u64,
    /// Which control-plane replica serves it.
    pub replica: String,
    /// SHA-256 (hex) of the root its leaf chains to, as it reported (empty: not reported).
    #[serde(default)]
    pub leaf_root: String,
    /// Its leaf's notAfter, Unix seconds (0: not reported).
    #[serde(default)]
    pub leaf_not_after: u64,
    /// SHA-256 (hex) of every root it trusts, as it reported.
    #[serde(default)]
    pub trusts: Vec<String>,
    /// A gateway's addresses: those it reported, else where its stream comes from.
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
}

impl ProxyRecord {
    /// SYNCED, STALE or NACKED.
    pub fn status(&self) -> &'static str {
        if self.nack.is_some() {
            "NACKED"
        } else if self.acked >= self.sent {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// The control plane.
pub struct ControlPlane<S: Store> {
    /// Where resources live.
    pub store: S,
    /// Resources in force.
    pub state: State,
    /// The certificate authority.
    pub ca: Mutex<CertificateAuthority>,
    /// Increases when the trust bundle changes (here, or on another replica: see
    /// [`ControlPlane::watch_store`]); proxy streams wait on it.
    pub bundle_version: tokio::sync::watch::Sender<u64>,
    /// The CA material as last read from or written to the store.
    ca_raw: Mutex<Vec<u8>>,
    /// Connected proxies by connection id.
    pub proxies: Mutex<BTreeMap<u64, ProxyRecord>>,
    next_conn: AtomicU64,
    /// Setup.
    pub options: Options,
    /// Set when the control plane stops: proxy streams end so proxies resubscribe elsewhere.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Its own metrics.
    pub metrics: crate::metrics::CpMetrics,
    /// The service graph, from the proxies' reports.
    pub graph: crate::graph::Graph,
    /// The dashboard's sign-in codes and sessions.
    pub sessions: crate::ui::Sessions,
    /// Taps asked of connected proxies, and what they caught.
    pub taps: crate::taps::Taps,
}

impl<S: Store> std::fmt::Debug for ControlPlane<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlPlane({})", self.store.describe())
    }
}

/// Why a CA update was not made.
#[derive(Debug, thiserror::Error)]
pub enum CaUpdateError {
    /// The step does not apply (e.g. no next root to use).
    #[error("{0}")]
    Refused(String),
    /// The store could not be read or written: nothing changed.
    #[error(transparent)]
    Store(StoreError),
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl<S: Store> ControlPlane<S> {
    /// Opens the CA (creating it in the store when needed) and loads the resources.
    pub async fn new(store: S, options: Options) -> Result<Arc<Self>, StoreError> {
        let (ca, ca_raw) =
            crate::ca::load_or_create(&store, &options.trust_domain, options.root_lifetime, options.user_ca.clone())
                .await?;
        let cp = Arc::new(ControlPlane {
            store,
            state: State::default(),
            ca: Mutex::new(ca),
            bundle_version: tokio::sync::watch::channel(1).0,
            ca_raw: Mutex::new(ca_raw),
            proxies: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            options,
            stopping: tokio::sync::watch::channel(false).0,
            metrics: crate::metrics::CpMetrics::default(),
            graph: crate::graph::Graph::default(),
            sessions: crate::ui::Sessions::default(),
            taps: crate::taps::Taps::default(),
        });
        cp.state.reload(&cp.store).await?;
        Ok(cp)
    }

    /// Re-reads the store whenever it changes, until the task is dropped; and every few
    /// seconds re-reads the CA, so that a root rotation made through another replica reaches
    /// this replica's proxies too.
    pub async fn watch_store(self: Arc<Self>) {
        let mut changes = self.store.changes();
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tick.tick() => {
                    self.reload_ca().await;
                    if !self.gateway_addresses_changed().await {
                        continue;
                    }
                }
            }
            self.reload_ca().await;
            match self.state.reload(&self.store).await {
                Ok(Some(c)) => tracing::info!(
                    version = c.version,
                    changed = c.changed.len(),
                    removed = c.removed.len(),
                    "resources changed"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the store; keeping the resources in force"),
            }
        }
    }

    /// Whether the addresses of the gateways connected to any replica changed since the
    /// status was last written (every replica sees the same published proxies, so they agree).
    async fn gateway_addresses_changed(&self) -> bool {
        let Ok(all) = self.all_proxies().await else { return false };
        let addresses = all.into_iter().filter(|p| p.role == "gateway").flat_map(|p| p.addresses).collect();
        self.state.set_gateway_addresses(addresses)
    }

    /// Picks up CA material another replica wrote (a root rotation step).
    async fn reload_ca(&self) {
        let raw = match self.store.get_blob(crate::ca::KEY).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot re-read the CA");
                return;
            }
        };
        if self.ca_raw.lock().is_ok_and(|seen| *seen == raw) {
            return;
        }
        match crate::ca::decode(&self.options.trust_domain, &raw) {
            Ok(ca) => {
                let roots = self.install_ca(ca, raw);
                tracing::info!(roots, "certificate authority changed in the store: trust bundle updated");
            }
            Err(e) => tracing::warn!(error = %e, "the store's CA material is invalid; keeping the CA in force"),
        }
    }

    /// Puts a CA (as stored: `raw`) in force and tells this replica's proxies; returns how
    /// many roots its bundle holds.
    fn install_ca(&self, ca: CertificateAuthority, raw: Vec<u8>) -> usize {
        let roots = ca.bundle().roots.len();
        if let (Ok(mut current), Ok(mut seen)) = (self.ca.lock(), self.ca_raw.lock()) {
            *current = ca;
            *seen = raw;
        }
        self.bundle_version.send_modify(|v| *v += 1);
        roots
    }

    /// A root rotation step: made on a copy of the CA, saved to the store, and only then put
    /// in force (other replicas pick it up from the store). Returns how many roots the bundle
    /// holds.
    pub async fn update_ca(
        &self,
        step: impl FnOnce(&mut CertificateAuthority) -> Result<(), String>,
    ) -> Result<usize, CaUpdateError> {
        let raw = self
            .ca_raw
            .lock()
            .map_err(|_| CaUpdateError::Store(StoreError::Refused("CA lock poisoned".into())))?
            .clone();
        let mut ca = crate::ca::decode(&self.options.trust_domain, &raw).map_err(CaUpdateError::Store)?;
        step(&mut ca).map_err(CaUpdateError::Refused)?;
        let raw = crate::ca::encode(&ca).map_err(CaUpdateError::Store)?;
        self.store.put_blob(crate::ca::KEY, &raw).await.map_err(CaUpdateError::Store)?;
        Ok(self.install_ca(ca, raw))
    }

    /// The trust bundle, and the fingerprint of the root that signs now.
    pub fn bundle_and_signer(&self) -> (TrustBundle, String) {
        match self.ca.lock() {
            Ok(ca) => (ca.bundle(), ca.signing_root().map(|r| meshgate_tls::fingerprint(r)).unwrap_or_default()),
            Err(_) => {
                (TrustBundle { trust_domain: self.options.trust_domain.clone(), roots: Vec::new() }, String::new())
            }
        }
    }

    /// The trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.ca
            .lock()
            .map(|ca| ca.bundle())
            .unwrap_or_else(|_| TrustBundle { trust_domain: self.options.trust_domain.clone(), roots: Vec::new() })
    }

    /// The control plane's own identity.
    pub fn id(&self) -> Result<SpiffeId, StoreError> {
        self.options.trust_domain.control_plane_id().map_err(|e| StoreError::Refused(e.to_string()))
    }

    /// Issues the control plane its own SVID from its CA.
    pub fn own_svid(&self, ttl: Duration) -> Result<meshgate_tls::Svid, StoreError> {
        let id = self.id()?;
        let req = SvidRequest::new(&id).map_err(|e| StoreError::Refused(e.to_string()))?;
        let chain = {
            let ca = self.ca.lock().map_err(|_| StoreError::Refused("CA lock poisoned".into()))?;
            ca.sign(&req.csr, &id, Some(ttl)).map_err(|e| StoreError::Refused(e.to_string()))?
        };
        req.complete(chain).map_err(|e| StoreError::Refused(e.to_string()))
    }

    /// Registers a connected proxy; returns its connection id.
    pub fn register(&self, record: ProxyRecord) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.proxies.lock() {
            p.insert(id, record);
        }
        id
    }

    /// Updates a connected proxy's record.
    pub fn update_proxy(&self, conn: u64, f: impl FnOnce(&mut ProxyRecord)) {
        if let Ok(mut p) = self.proxies.lock()
            && let Some(r) = p.get_mut(&conn)
        {
            f(r);
        }
    }

    /// Forgets a disconnected proxy.
    pub fn unregister(&self, conn: u64) {
        if let Ok(mut p) = self.proxies.lock() {
            p.remove(&conn);
        }
    }

    /// The proxies connected to this replica.
    pub fn local_proxies(&self) -> Vec<ProxyRecord> {
        self.proxies.lock().map(|p| p.values().cloned().collect()).unwrap_or_default()
    }

    /// Publishes this replica's connected proxies to the store every two seconds, until the task
    /// is dropped: every replica then sees every proxy (a root is withdrawn only when no proxy
    /// of any replica still holds a leaf from it).
    pub async fn publish_proxies(self: Arc<Self>) {
        let key = format!("{REGISTRY}/{}", self.options.replica);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let published = Published { at: unix_now(), proxies: self.local_proxies() };
            match serde_json::to_vec(&published) {
                Ok(bytes) => {
                    if let Err(e) = self.store.put_blob(&key, &bytes).await {
                        tracing::debug!(error = %e, "cannot publish the connected proxies");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot encode the connected proxies"),
            }
        }
    }

    /// Withdraws this replica's published proxies (it is stopping).
    pub async fn unpublish_proxies(&self) {
        let _ = self.store.take_blob(&format!("{REGISTRY}/{}", self.options.replica)).await;
    }

    /// Every proxy connected to a live replica: this replica's as they are now, the others' as
    /// they last published them (a replica silent for [`REGISTRY_FRESH`] is gone). Errors reading
    /// the store are errors: a decision to withdraw a root cannot be made on half a view.
    pub async fn all_proxies(&self) -> Result<Vec<ProxyRecord>, StoreError> {
        let mut all = self.local_proxies();
        let now = unix_now();
        for (replica, bytes) in self.store.list_blobs(REGISTRY).await? {
            if replica == self.options.replica {
                continue;
            }
            match serde_json::from_slice::<Published>(&bytes) {
                Ok(p) if now.saturating_sub(p.at) <= REGISTRY_FRESH.as_secs() => all.extend(p.proxies),
                Ok(_) => {}
                Err(e) => tracing::debug!(%replica, error = %e, "unreadable published proxies"),
            }
        }
        Ok(all)
    }
}

/// Where each replica publishes its connected proxies (`proxies/REPLICA`).
const REGISTRY: &str = "proxies";
/// How long a replica's published proxies count without a newer publication.
pub const REGISTRY_FRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, serde::Deserialize)]
struct Published {
    at: u64,
    proxies: Vec<ProxyRecord>,
}
