//! The resources in force: everything the store holds that decodes and validates, indexed,
//! serialized once for every proxy, and diffed on each change so pushes carry only what moved.
//! A resource that does not validate is kept out with `Accepted=False`; the rest flows.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use meshgate_api::{ConfigError, Object, ResourceSet};
use meshgate_model::security::MeshSettings;
use meshgate_model::{Condition, Severity, compile_gateway};
use tokio::sync::broadcast;

use crate::store::{Store, StoreError, key_of};

/// One resource as proxies receive it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The object.
    pub object: Arc<Object>,
    /// Its JSON, serialized once.
    pub json: Bytes,
    /// Content hash, to tell changes.
    pub hash: u64,
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
    /// Mesh-wide settings.
    pub settings: MeshSettings,
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
}

/// The control plane's view of its store.
#[derive(Debug)]
pub struct State {
    current: ArcSwap<Snapshot>,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Default for State {
    fn default() -> Self {
        State { current: ArcSwap::from_pointee(Snapshot::default()), changes: broadcast::channel(1024).0 }
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

    /// Receives every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Re-reads the store; publishes a new version when anything changed.
    pub async fn reload<S: Store>(&self, store: &S) -> Result<Option<Arc<Change>>, StoreError> {
        let loaded = store.load().await?;
        let (set, duplicates) = ResourceSet::from_objects(loaded.objects);
        let mut errors = loaded.errors.0;
        errors.extend(duplicates.0);
        let mut entries = BTreeMap::new();
        for o in set.iter() {
            let json = match serde_json::to_vec(&o.resource) {
                Ok(j) => Bytes::from(j),
                Err(e) => {
                    errors.push(ConfigError::field(&o.source.file, &o.id, "", format!("cannot serialize: {e}")));
                    continue;
                }
            };
            let hash = hash_bytes(&json);
            entries.insert(Arc::from(key_of(&o.id)), Entry { object: Arc::new(o.clone()), json, hash });
        }
        let old = self.current.load();
        let mut changed = Vec::new();
        for (k, e) in &entries {
            if old.entries.get(k).is_none_or(|o| o.hash != e.hash) {
                changed.push(k.clone());
            }
        }
        let new_keys: BTreeSet<&Arc<str>> = entries.keys().collect();
        let removed: Vec<Arc<str>> = old.entries.keys().filter(|k| !new_keys.contains(k)).cloned().collect();
        let errors_changed = old.errors != errors;
        if changed.is_empty() && removed.is_empty() && !errors_changed && old.version > 0 {
            return Ok(None);
        }
        let compiled = compile_gateway(&set);
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
        let settings = meshgate_model::security::mesh_settings(&set);
        let version = old.version + 1;
        for e in &errors {
            tracing::warn!("resource refused: {e}");
        }
        self.current.store(Arc::new(Snapshot { version, entries, set, errors, conditions, settings }));
        let change = Arc::new(Change { version, changed, removed });
        let _ = self.changes.send(change.clone());
        Ok(Some(change))
    }
}
