//! The resources in force: everything the store holds that decodes and validates, indexed,
//! serialized once for every proxy, and diffed on each change so pushes carry only what moved.
//! A resource that does not validate is kept out with `Accepted=False`; the rest flows.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use meshgate_api::{ConfigError, Object, ObjectRef, Resource, ResourceSet};
use meshgate_model::gwstatus::{ResourceStatus, stamp};
use meshgate_model::settings::MeshSettings;
use meshgate_model::{Condition, Severity, compile_gateway_with};
use tokio::sync::broadcast;

use crate::store::{Store, StoreError, key_of};

/// One resource as proxies receive it (the object itself is in [`Snapshot::set`]).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Which object.
    pub id: ObjectRef,
    /// Which proxies need it, worked out once per change rather than per proxy.
    pub audience: Audience,
    /// Its JSON, serialized once.
    pub json: Bytes,
    /// Content hash, to tell changes.
    pub hash: u64,
}

/// Which proxies receive a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every proxy.
    Everyone,
    /// None (Secrets other than TLS certificates stay in the control plane).
    Nobody,
    /// Gateways only.
    Gateways,
    /// An HTTPRoute: gateways when a Gateway is among its parents, sidecars when a Service is.
    Route {
        /// Attached to a Gateway.
        gateway: bool,
        /// Attached to a Service (a mesh route).
        mesh: bool,
    },
    /// Sidecars in the object's namespace, or in every namespace from the root namespace.
    NamespaceSidecars,
}

impl Audience {
    /// Of an object.
    pub fn of(object: &Object) -> Audience {
        match &object.resource {
            // The gateways serve the certificates of kubernetes.io/tls Secrets; other Secrets
            // stay in the control plane.
            Resource::Secret(s) if s.type_.as_deref() == Some("kubernetes.io/tls") => Audience::Gateways,
            Resource::Secret(_) => Audience::Nobody,
            Resource::Gateway(_)
            | Resource::GatewayClass(_)
            | Resource::TlsRoute(_)
            | Resource::TcpRoute(_)
            | Resource::ListenerPolicy(_) => Audience::Gateways,
            Resource::HttpRoute(r) => {
                let refs = r.spec.parent_refs.as_deref().unwrap_or_default();
                Audience::Route {
                    gateway: refs.iter().any(|p| p.kind.as_deref().unwrap_or("Gateway") == "Gateway"),
                    mesh: refs.iter().any(|p| p.kind.as_deref() == Some("Service")),
                }
            }
            Resource::GrpcRoute(r) => {
                let refs = r.spec.parent_refs.as_deref().unwrap_or_default();
                Audience::Route {
                    gateway: refs.iter().any(|p| p.kind.as_deref().unwrap_or("Gateway") == "Gateway"),
                    mesh: refs.iter().any(|p| p.kind.as_deref() == Some("Service")),
                }
            }
            Resource::PeerAuthentication(_) | Resource::AuthorizationPolicy(_) => Audience::NamespaceSidecars,
            _ => Audience::Everyone,
        }
    }
}

/// The state at one version.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every change.
    pub version: u64,
    /// Every valid resource by key (`Kind/namespace/name`).
    pub entries: BTreeMap<Arc<str>, Entry>,
    /// The same, as a set for compiling.
    pub set: ResourceSet,
    /// What did not load or validate.
    pub errors: Vec<ConfigError>,
    /// Status conditions of every resource.
    pub conditions: Vec<Condition>,
    /// Where each resource's conditions are in `conditions` (a list request reads many).
    pub conditions_of: HashMap<ObjectRef, Vec<usize>>,
    /// Gateway API status of each resource that has one, as last written to the store.
    pub status: HashMap<ObjectRef, serde_json::Value>,
    /// Mesh-wide settings.
    pub settings: MeshSettings,
    /// The certificates HTTPS listeners serve, by Secret: what a gateway keeps in force when
    /// an edit breaks a Secret, so the status said here matches what it serves.
    pub certs: HashMap<String, Arc<meshgate_tls::edge::EdgeCert>>,
    /// The connected gateways' addresses the status was written with.
    pub gateway_addresses: Vec<std::net::IpAddr>,
}

/// What changed from one version to the next.
#[derive(Debug, Clone)]
pub struct Change {
    /// The new version.
    pub version: u64,
    /// Keys added or modified.
    pub changed: Vec<Arc<str>>,
    /// Keys removed.
    pub removed: Vec<Arc<str>>,
    /// Who received each key of `changed` and then `removed` before this change (none for a
    /// key that is new), and the root namespace then: a proxy is sent a removal only for what
    /// it was sent, with no per-proxy record of what that was (20,000 keys would cost every
    /// connected proxy ~0.6 MiB).
    pub before: Vec<Option<(Audience, ObjectRef)>>,
    /// The root namespace before this change.
    pub root_before: String,
}

impl Change {
    /// Whether the root namespace changed: what sidecars receive from it changes without
    /// those resources changing, so every proxy is sent everything again.
    pub fn resync(&self, root_now: &str) -> bool {
        self.root_before != root_now
    }
}

/// The control plane's view of its store.
#[derive(Debug)]
pub struct State {
    current: ArcSwap<Snapshot>,
    changes: broadcast::Sender<Arc<Change>>,
    reloading: tokio::sync::Mutex<()>,
    /// Where the gateways connected to any replica are reached: Gateway `status.addresses`
    /// and Ingress `status.loadBalancer`.
    gateway_addresses: std::sync::Mutex<Vec<std::net::IpAddr>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            current: ArcSwap::from_pointee(Snapshot::default()),
            changes: broadcast::channel(1024).0,
            reloading: tokio::sync::Mutex::new(()),
            gateway_addresses: std::sync::Mutex::new(Vec::new()),
        }
    }
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl State {
    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Sets the connected gateways' addresses (sorted, no repeats); true when they changed
    /// (the status is then written again by the next reload).
    pub fn set_gateway_addresses(&self, mut addresses: Vec<std::net::IpAddr>) -> bool {
        addresses.sort();
        addresses.dedup();
        match self.gateway_addresses.lock() {
            Ok(mut a) if *a != addresses => {
                *a = addresses;
                true
            }
            _ => false,
        }
    }

    /// Receives every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Re-reads the store; publishes a new version when anything changed. One reload at a
    /// time: two overlapping ones would diff against the same old version and the slower one
    /// (with an older view of the store) could replace the newer.
    pub async fn reload<S: Store>(&self, store: &S) -> Result<Option<Arc<Change>>, StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        let started = std::time::Instant::now();
        let loaded = store.load().await?;
        let read = started.elapsed();
        let (set, duplicates) = ResourceSet::from_objects(loaded.objects);
        let mut errors = loaded.errors.0;
        errors.extend(duplicates.0);
        let old = self.current.load();
        let mut entries = BTreeMap::new();
        for o in set.iter() {
            let key: Arc<str> = Arc::from(key_of(&o.id));
            // Unchanged since the last load (the store handed out the same content): what was
            // derived from it stands (serializing 20,000 objects again took ~150 ms).
            if old.set.get(&o.id).is_some_and(|b| b.resource.shares(&o.resource))
                && let Some((k, e)) = old.entries.get_key_value(&key)
            {
                entries.insert(k.clone(), e.clone());
                continue;
            }
            let json = match serde_json::to_vec(&o.resource) {
                Ok(j) => Bytes::from(j),
                Err(e) => {
                    errors.push(ConfigError::field(&o.source.file, &o.id, "", format!("cannot serialize: {e}")));
                    continue;
                }
            };
            let hash = hash_bytes(&json);
            let entry = Entry { id: o.id.clone(), audience: Audience::of(o), json, hash };
            entries.insert(key, entry);
        }
        let mut changed = Vec::new();
        for (k, e) in &entries {
            if old.entries.get(k).is_none_or(|o| o.hash != e.hash) {
                changed.push(k.clone());
            }
        }
        let removed: Vec<Arc<str>> = old.entries.keys().filter(|k| !entries.contains_key(*k)).cloned().collect();
        let errors_changed = old.errors != errors;
        let gateway_addresses = self.gateway_addresses.lock().map(|a| a.clone()).unwrap_or_default();
        let addresses_changed = old.gateway_addresses != gateway_addresses;
        let diffed = started.elapsed();
        if changed.is_empty() && removed.is_empty() && !errors_changed && !addresses_changed && old.version > 0 {
            tracing::debug!(?read, ?diffed, "reload: nothing changed");
            return Ok(None);
        }
        let mut compiled = {
            let last_good = |secret: &str| old.certs.get(secret).cloned();
            let inputs = meshgate_model::CompileInputs {
                last_good: &last_good,
                now: std::time::SystemTime::now(),
                ingress: meshgate_model::ingress::IngressPorts {
                    addresses: gateway_addresses.clone(),
                    ..Default::default()
                },
            };
            compile_gateway_with(&set, &inputs)
        };
        let compiled_in = started.elapsed();
        let status = write_status(store, std::mem::take(&mut compiled.status)).await;
        let status_in = started.elapsed();
        let certs =
            compiled.config.ports.values().flat_map(|p| p.certs()).map(|c| (c.secret.to_string(), c.clone())).collect();
        let mut conditions = compiled.conditions;
        for e in &errors {
            if let Some(id) = &e.object {
                conditions.push(Condition {
                    object: id.clone(),
                    file: e.file.clone(),
                    field: e.field.clone().unwrap_or_default(),
                    kind: "Accepted",
                    status: false,
                    reason: "Invalid",
                    message: e.message.clone(),
                    severity: Severity::Error,
                });
            }
        }
        let settings = meshgate_model::settings::mesh_settings(&set);
        // Only the status inputs changed (a gateway came or went): the status is written, no
        // version is pushed to the proxies.
        let status_only = changed.is_empty() && removed.is_empty() && !errors_changed && old.version > 0;
        let version = if status_only { old.version } else { old.version + 1 };
        if !status_only {
            for e in &errors {
                tracing::warn!("resource refused: {e}");
            }
        }
        let mut conditions_of: HashMap<ObjectRef, Vec<usize>> = HashMap::new();
        for (i, c) in conditions.iter().enumerate() {
            conditions_of.entry(c.object.clone()).or_default().push(i);
        }
        self.current.store(Arc::new(Snapshot {
            version,
            entries,
            set,
            errors,
            conditions,
            conditions_of,
            status,
            settings,
            certs,
            gateway_addresses,
        }));
        if status_only {
            return Ok(None);
        }
        tracing::debug!(?read, ?diffed, ?compiled_in, ?status_in, total = ?started.elapsed(), version, "reload");
        let before =
            changed.iter().chain(&removed).map(|k| old.entries.get(k).map(|e| (e.audience, e.id.clone()))).collect();
        let root_before = old.settings.root_namespace.clone();
        let change = Arc::new(Change { version, changed, removed, before, root_before });
        let _ = self.changes.send(change.clone());
        Ok(Some(change))
    }
}

/// Where the Gateway API status of `id` is kept: a blob beside the resources, never sent to
/// proxies, so writing it is no configuration change (`Kind.namespace.name`: neither kinds nor
/// namespaces have dots).
pub fn status_key(id: &ObjectRef) -> String {
    match &id.namespace {
        Some(ns) => format!("status/{}.{ns}.{}", id.kind, id.name),
        None => format!("status/{}.{}", id.kind, id.name),
    }
}

/// Writes the Gateway API status of every resource that has one to the store, each condition
/// keeping its transition time while it holds (so replicas writing the same status agree, and
/// an unchanged status is not written again); removes the status of resources gone.
async fn write_status<S: Store>(store: &S, computed: Vec<ResourceStatus>) -> HashMap<ObjectRef, serde_json::Value> {
    let now = meshgate_model::time::rfc3339_seconds(std::time::SystemTime::now());
    let previous: HashMap<String, serde_json::Value> = match store.list_blobs("status").await {
        Ok(blobs) => blobs
            .into_iter()
            .filter_map(|(k, v)| Some((format!("status/{k}"), serde_json::from_slice(&v).ok()?)))
            .collect(),
        Err(e) => {
            tracing::warn!("cannot read the status written before: {e}");
            HashMap::new()
        }
    };
    let mut out = HashMap::new();
    for s in computed {
        let key = status_key(&s.object);
        let mut status = s.status;
        let before = previous.get(&key);
        stamp(&mut status, before, &now);
        if before != Some(&status) {
            let written = match serde_json::to_vec(&status) {
                Ok(bytes) => store.put_blob(&key, &bytes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = written {
                tracing::warn!("cannot write the status of {}: {e}", s.object);
            }
        }
        out.insert(s.object, status);
    }
    let kept: std::collections::HashSet<String> = out.keys().map(status_key).collect();
    for key in previous.keys().filter(|k| !kept.contains(*k)) {
        if let Err(e) = store.take_blob(key).await {
            tracing::warn!("cannot remove the status {key}: {e}");
        }
    }
    out
}
