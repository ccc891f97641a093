//! Who a workload is, for telemetry: its name, namespace and the `app` and `version` labels
//! Istio's metrics carry (`source_workload`, `destination_app`, ...). Built when the
//! configuration is compiled and shared by every record that names the workload.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::Serialize;

/// What Istio's standard metrics say of a workload.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    /// The workload's name (`Workload` name, or the gateway's).
    pub workload: Arc<str>,
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Its `app` label (else `app.kubernetes.io/name`; `unknown` without either).
    pub app: Arc<str>,
    /// Its `version` label (else `app.kubernetes.io/version`; `unknown` without either).
    pub version: Arc<str>,
    /// Of the four above, computed once: records are keyed by peers on the request path.
    #[serde(skip)]
    hash: u64,
}

/// The value Istio gives a label it does not know.
pub const UNKNOWN: &str = "unknown";

impl Peer {
    /// The workload `namespace/name` with `labels`.
    pub fn new(namespace: &str, name: &str, labels: &BTreeMap<&str, &str>) -> Self {
        let label = |keys: [&str; 2]| -> Arc<str> {
            keys.iter().find_map(|k| labels.get(k)).map_or_else(|| Arc::from(UNKNOWN), |v| Arc::from(*v))
        };
        Self::from_parts(
            Arc::from(name),
            Arc::from(namespace),
            label(["app", "app.kubernetes.io/name"]),
            label(["version", "app.kubernetes.io/version"]),
        )
    }

    /// A workload known by name only (a gateway, a proxy without configuration yet).
    pub fn named(namespace: &str, name: &str) -> Self {
        Self::from_parts(Arc::from(name), Arc::from(namespace), Arc::from(name), Arc::from(UNKNOWN))
    }

    /// Nothing is known of it (a client outside the mesh).
    pub fn unknown() -> Self {
        let u: Arc<str> = Arc::from(UNKNOWN);
        Self::from_parts(u.clone(), u.clone(), u.clone(), u)
    }

    fn from_parts(workload: Arc<str>, namespace: Arc<str>, app: Arc<str>, version: Arc<str>) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        (&*workload, &*namespace, &*app, &*version).hash(&mut h);
        Peer { workload, namespace, app, version, hash: h.finish() }
    }

    /// Whether nothing is known of it.
    pub fn is_unknown(&self) -> bool {
        &*self.workload == UNKNOWN && &*self.namespace == UNKNOWN
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.workload == other.workload
            && self.namespace == other.namespace
            && self.app == other.app
            && self.version == other.version
    }
}

impl Eq for Peer {}

impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The workloads of the mesh as one sidecar sees them, for its records: itself, every other
/// by address (a caller is known by its source IP, as ztunnel knows it), and the Service each
/// of its own ports serves.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshPeers {
    /// This workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub me: Option<Arc<Peer>>,
    /// Every workload with an address, by address.
    #[serde(skip)]
    pub by_ip: std::collections::HashMap<std::net::IpAddr, Arc<Peer>>,
    /// For each of this workload's ports, the Service (`namespace/name:port`) that targets it.
    pub services: BTreeMap<u16, Arc<str>>,
}

impl MeshPeers {
    /// The workload at `ip`, when the mesh knows it.
    pub fn at(&self, ip: std::net::IpAddr) -> Option<&Arc<Peer>> {
        self.by_ip.get(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_as_istio_reads_them() {
        let labels: BTreeMap<&str, &str> = [("app", "inventory"), ("version", "v2")].into_iter().collect();
        let p = Peer::new("lab", "inventory-v2", &labels);
        assert_eq!((&*p.app, &*p.version, &*p.workload, &*p.namespace), ("inventory", "v2", "inventory-v2", "lab"));
        let k8s: BTreeMap<&str, &str> = [("app.kubernetes.io/name", "shop")].into_iter().collect();
        let p = Peer::new("lab", "shop-1", &k8s);
        assert_eq!((&*p.app, &*p.version), ("shop", UNKNOWN));
        assert_eq!(Peer::new("lab", "shop-1", &k8s), p);
        assert_ne!(Peer::new("lab", "shop-2", &k8s), p);
        assert!(Peer::unknown().is_unknown());
    }
}
