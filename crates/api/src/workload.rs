//! `meshgate.io/v1alpha1` Workload: a process outside Kubernetes that backs Services,
//! the counterpart of Istio's WorkloadEntry.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A workload: an address, labels Services select on, named ports and an identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `Workload`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata; `metadata.labels` are what Service selectors match.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The workload itself.
    pub spec: WorkloadSpec,
}

/// Where the workload is and who it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// IP address the workload listens on.
    pub address: String,
    /// Named ports: a Service `targetPort` given by name looks here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, i32>,
    /// Extra labels, merged over `metadata.labels` (as WorkloadEntry's `labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The service account whose identity the workload runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Network name, for multi-network meshes (kept, not yet used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Locality `region/zone/subzone` (kept, not yet used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load-balancing weight relative to the other endpoints (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `Mutual` when a meshgate proxy fronts the workload and accepts mTLS on its ports (the
    /// control plane sets this for workloads whose proxy is connected); `Disabled` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<TlsMode>,
}

/// Whether a workload is reached over meshgate mTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsMode {
    /// A meshgate proxy terminates mTLS in front of it.
    Mutual,
    /// Plain connections.
    Disabled,
}

impl Workload {
    /// The labels Services select on: `metadata.labels` with `spec.labels` over them.
    pub fn effective_labels(&self) -> BTreeMap<&str, &str> {
        let mut labels: BTreeMap<&str, &str> =
            self.metadata.labels.iter().flatten().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        labels.extend(self.spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        labels
    }
}

/// Whether `labels` carry every key and value of a label selector (a Service's `selector`, a
/// policy's `matchLabels`).
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<&str, &str>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k.as_str()) == Some(&v.as_str()))
}
