//! Mesh-wide settings from the MeshConfig named `default` (or their defaults): the trust domain,
//! the root namespace, certificate lifetimes, the outbound traffic policy and how proxies treat
//! their clients' connections.

use std::time::Duration;

use meshgate_api::ResourceSet;
use meshgate_api::validate::syntax::gateway_duration;
use serde::Serialize;

/// Mesh-wide settings, from the MeshConfig (or defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Namespace whose policies apply everywhere.
    pub root_namespace: String,
    /// Workload certificate lifetime.
    pub workload_ttl_secs: u64,
    /// Refuse destinations outside the mesh.
    pub registry_only: bool,
    /// How proxies treat their clients' connections.
    pub downstream: Downstream,
    /// What proxies record besides metrics.
    pub telemetry: Telemetry,
}

/// What proxies record besides metrics (MeshConfig `spec.accessLog`, `spec.tracing`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    /// A JSON line per request and per opaque TCP connection.
    pub access_log: bool,
    /// Distributed tracing, when an exporter is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// Distributed tracing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// Share of new traces recorded, in millionths.
    pub sampling_ppm: u32,
    /// Where spans go.
    pub exporter: TraceExporter,
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceExporter {
    /// Zipkin v2 JSON, posted to this URL.
    Zipkin(String),
    /// OTLP over gRPC to this `http://host:port`.
    OtlpGrpc(String),
    /// OTLP HTTP/protobuf, posted to this URL.
    OtlpHttp(String),
}

/// How proxies treat their clients' connections (MeshConfig `spec.downstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Downstream {
    /// Time an HTTP/1.1 client has to send a complete request head; `None`: unbounded.
    pub header_timeout: Option<Duration>,
}

impl Default for Downstream {
    fn default() -> Self {
        // nginx's client_header_timeout is 60 s, hyper's 30 s; a head is a few hundred bytes,
        // and a client that needs more than 10 s for it is stalled or hostile.
        Downstream { header_timeout: Some(Duration::from_secs(10)) }
    }
}

/// The SPIFFE ID of service account `ns/sa` in `trust_domain`: what a workload's proxy
/// presents and what its callers expect.
pub(crate) fn workload_id(trust_domain: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: "cluster.local".into(),
            root_namespace: "meshgate-system".into(),
            workload_ttl_secs: 24 * 3600,
            registry_only: false,
            downstream: Downstream::default(),
            telemetry: Telemetry::default(),
        }
    }
}

/// Reads the MeshConfig named `default`.
pub fn mesh_settings(set: &ResourceSet) -> MeshSettings {
    let mut s = MeshSettings::default();
    if let Some((_, m)) = set.mesh_configs().find(|(o, _)| o.id.name.as_ref() == "default") {
        if let Some(td) = &m.spec.trust_domain {
            s.trust_domain.clone_from(td);
        }
        if let Some(ns) = &m.spec.root_namespace {
            s.root_namespace.clone_from(ns);
        }
        if let Some(ttl) = m.spec.certificates.as_ref().and_then(|c| c.workload_ttl.as_ref())
            && let Ok(d) = gateway_duration(ttl)
        {
            s.workload_ttl_secs = d.as_secs();
        }
        s.registry_only = m.spec.outbound_traffic_policy.as_ref().is_some_and(|p| p.mode == "REGISTRY_ONLY");
        if let Some(t) = m.spec.downstream.as_ref().and_then(|d| d.header_timeout.as_ref())
            && let Ok(d) = gateway_duration(t)
        {
            s.downstream.header_timeout = (!d.is_zero()).then_some(d);
        }
        s.telemetry.access_log = m.spec.access_log.as_ref().and_then(|a| a.enabled).unwrap_or(false);
        if let Some(t) = &m.spec.tracing {
            let exporter = match (&t.otlp, &t.zipkin) {
                (Some(o), _) if o.protocol.as_deref() == Some("http") => {
                    let url = o.endpoint.trim_end_matches('/');
                    let has_path = url.strip_prefix("http://").is_some_and(|r| r.contains('/'));
                    Some(TraceExporter::OtlpHttp(if has_path { url.to_string() } else { format!("{url}/v1/traces") }))
                }
                (Some(o), _) => Some(TraceExporter::OtlpGrpc(o.endpoint.clone())),
                (None, Some(z)) => Some(TraceExporter::Zipkin(z.endpoint.clone())),
                (None, None) => None,
            };
            let percent = t.sampling_percent.unwrap_or(1.0).clamp(0.0, 100.0);
            s.telemetry.tracing =
                exporter.map(|exporter| Tracing { sampling_ppm: (percent * 10_000.0).round() as u32, exporter });
        }
    }
    s
}

impl MeshSettings {
    /// The workload certificate lifetime.
    pub fn workload_ttl(&self) -> Duration {
        Duration::from_secs(self.workload_ttl_secs)
    }
}

/// Where the gateway serves Ingresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPorts {
    /// Plain HTTP (`--ingress-http`).
    pub http: u16,
    /// HTTPS, for the Ingresses' TLS hosts (`--ingress-https`).
    pub https: u16,
    /// The addresses clients reach the gateway on, for the Ingresses' `status.loadBalancer`
    /// and the Gateways' `status.addresses`: a file-mode gateway's bind address; under a
    /// control plane, those of the gateways connected to it (none when not known).
    pub addresses: Vec<std::net::IpAddr>,
}

impl Default for IngressPorts {
    fn default() -> Self {
        IngressPorts { http: 80, https: 443, addresses: Vec::new() }
    }
}
