//! meshgate's security kinds (`meshgate.io/v1alpha1`), shaped like Istio's so policies port
//! over: `PeerAuthentication` (mTLS mode), `AuthorizationPolicy` (who may call what), and the
//! cluster-wide `MeshConfig` (trust domain, certificate lifetimes, root namespace).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Selects workloads by label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// mTLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the next level up.
    Unset,
    /// Only mTLS.
    Strict,
    /// mTLS and plaintext (plaintext is marked as such).
    Permissive,
    /// No TLS.
    Disable,
}

/// An mTLS setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mtls {
    /// The mode.
    pub mode: MtlsMode,
}

/// Whether workloads accept plaintext. In the root namespace without a selector it applies to
/// the mesh; in another namespace without a selector, to the namespace; with a selector, to
/// the selected workloads (and only then may ports override it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `PeerAuthentication`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The setting.
    pub spec: PeerAuthenticationSpec,
}

/// PeerAuthentication settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to (none: the whole namespace, or the mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Per workload port (the port the application listens on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, Mtls>,
}

/// ALLOW, DENY or AUDIT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthzAction {
    /// Requests must match a rule of some ALLOW policy (once any applies).
    #[default]
    Allow,
    /// Requests matching a rule are refused (checked before ALLOW).
    Deny,
    /// Requests matching a rule are logged.
    Audit,
}

/// Who may call what, selected by workload labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `AuthorizationPolicy`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: AuthorizationPolicySpec,
}

/// An authorization policy: any rule matching is a match of the policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workloads it applies to (none: all in the namespace, or the mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// What a match does (default ALLOW).
    #[serde(default)]
    pub action: AuthzAction,
    /// The rules; an ALLOW policy without rules allows nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

/// A rule: every present part must match (parts' entries are alternatives).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRule {
    /// Sources; one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzFrom>,
    /// Operations; one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzTo>,
    /// Extra conditions; all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthzCondition>,
}

/// A `from` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthzFrom {
    /// The source.
    pub source: AuthzSource,
}

/// Who the caller is. Values match exactly, by prefix (`abc*`), by suffix (`*abc`), or any
/// (`*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzSource {
    /// Peer SPIFFE IDs, with or without `spiffe://` (`cluster.local/ns/shop/sa/order`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer SPIFFE IDs that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Peer namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
}

/// A `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthzTo {
    /// The operation.
    pub operation: AuthzOperation,
}

/// What is being called.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzOperation {
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths (exact, `prefix*`, `*suffix`, `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Workload ports, as strings (`"8080"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
}

/// A condition on a request attribute: `request.headers[NAME]`, `source.principal`,
/// `source.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzCondition {
    /// The attribute.
    pub key: String,
    /// Values (exact, prefix, suffix, `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// Mesh-wide settings; one, named `default`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `MeshConfig`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The settings.
    #[serde(default)]
    pub spec: MeshConfigSpec,
}

/// Mesh-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// SPIFFE trust domain (default `cluster.local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Namespace whose policies apply to the whole mesh (default `meshgate-system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    /// Certificate lifetimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<CertificateSettings>,
    /// What sidecars do with destinations outside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// How every proxy treats its clients' connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<DownstreamSettings>,
    /// Access logs of every proxy (off by default; `--access-log` turns them on for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSettings>,
    /// Distributed tracing: sampling and where spans go (off without an exporter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
}

/// Distributed tracing (W3C Trace Context and B3 propagated; spans exported in batches).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingSettings {
    /// Share of new traces recorded, 0 to 100 (default 1). A request that arrives with a
    /// sampling decision keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_percent: Option<f64>,
    /// Zipkin v2 JSON: `{endpoint: http://HOST:9411/api/v2/spans}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinExporter>,
    /// OTLP: `{endpoint: http://HOST:4317, protocol: grpc}` or `{endpoint: http://HOST:4318,
    /// protocol: http}` (HTTP/protobuf; `/v1/traces` added when the URL has no path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpExporter>,
}

/// Where Zipkin spans go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZipkinExporter {
    /// The collector's URL.
    pub endpoint: String,
}

/// Where OTLP spans go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtlpExporter {
    /// The collector's URL.
    pub endpoint: String,
    /// `grpc` (default) or `http` (HTTP/protobuf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Access logs: one JSON line per request and per opaque TCP connection, on standard output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessLogSettings {
    /// On or off (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// How proxies treat their clients' (downstream) connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownstreamSettings {
    /// Time an HTTP/1.1 client has to send a complete request head (default `10s`; `0s`:
    /// unbounded): slow or stalled clients get 408 and are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
}

/// Certificate lifetimes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSettings {
    /// Workload SVID lifetime (default 24h, at least 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ttl: Option<String>,
}

/// Traffic to destinations outside the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    pub mode: String,
}
