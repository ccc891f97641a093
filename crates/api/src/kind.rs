//! The kinds meshgate understands, and the apiVersions each is served under.

use std::fmt;

/// A resource kind meshgate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    /// `gateway.networking.k8s.io/v1` GatewayClass (cluster-scoped).
    GatewayClass,
    /// `gateway.networking.k8s.io/v1` Gateway.
    Gateway,
    /// `gateway.networking.k8s.io/v1` HTTPRoute.
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    /// `gateway.networking.k8s.io/v1` GRPCRoute.
    #[serde(rename = "GRPCRoute")]
    GrpcRoute,
    /// `gateway.networking.k8s.io/v1` TLSRoute (also v1alpha3, v1alpha2).
    #[serde(rename = "TLSRoute")]
    TlsRoute,
    /// `gateway.networking.k8s.io/v1alpha2` TCPRoute.
    #[serde(rename = "TCPRoute")]
    TcpRoute,
    /// `gateway.networking.k8s.io/v1beta1` ReferenceGrant.
    ReferenceGrant,
    /// `gateway.networking.k8s.io/v1` BackendTLSPolicy (also v1alpha3): TLS to a Service.
    #[serde(rename = "BackendTLSPolicy")]
    BackendTlsPolicy,
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Endpoints (deprecated by Kubernetes for EndpointSlice; read for a Service that has
    /// no EndpointSlice, as the API server's mirroring would).
    Endpoints,
    /// `networking.k8s.io/v1` IngressClass (cluster-scoped).
    IngressClass,
    /// `networking.k8s.io/v1` Ingress.
    Ingress,
    /// `v1` Secret.
    Secret,
    /// `v1` ConfigMap (CA certificates for BackendTLSPolicy).
    ConfigMap,
    /// `meshgate.io/v1alpha1` Workload: a process outside Kubernetes.
    Workload,
    /// `meshgate.io/v1alpha1` TrafficPolicy: balancing, timeouts, retries, limits per Service.
    TrafficPolicy,
    /// `meshgate.io/v1alpha1` FaultInjection: delays and aborts for an HTTPRoute rule.
    FaultInjection,
    /// `meshgate.io/v1alpha1` HTTPRouteFilter: what Gateway API filters cannot say (regex path
    /// rewrites, a request body limit, client address ranges, the backend's protocol), for an
    /// HTTPRoute rule.
    HttpRouteFilter,
    /// `meshgate.io/v1alpha1` ListenerPolicy: PROXY protocol, timeouts and limits of Gateway
    /// listeners.
    ListenerPolicy,
    /// `meshgate.io/v1alpha1` PeerAuthentication: mTLS mode.
    PeerAuthentication,
    /// `meshgate.io/v1alpha1` AuthorizationPolicy: who may call what.
    AuthorizationPolicy,
    /// `meshgate.io/v1alpha1` MeshConfig: mesh-wide settings (cluster-scoped).
    MeshConfig,
}

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// meshgate's own API group.
pub const MESHGATE_GROUP: &str = "meshgate.io";

impl Kind {
    /// Every kind, in the order resources are listed.
    pub const ALL: [Kind; 24] = [
        Kind::Namespace,
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TlsRoute,
        Kind::TcpRoute,
        Kind::ReferenceGrant,
        Kind::BackendTlsPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::IngressClass,
        Kind::Ingress,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Workload,
        Kind::TrafficPolicy,
        Kind::FaultInjection,
        Kind::HttpRouteFilter,
        Kind::ListenerPolicy,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::MeshConfig,
    ];

    /// The name used in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",
            Kind::ConfigMap => "ConfigMap",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::IngressClass => "IngressClass",
            Kind::Ingress => "Ingress",
            Kind::Secret => "Secret",
            Kind::Workload => "Workload",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::FaultInjection => "FaultInjection",
            Kind::HttpRouteFilter => "HTTPRouteFilter",
            Kind::ListenerPolicy => "ListenerPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::MeshConfig => "MeshConfig",
        }
    }

    /// The API group ("" for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::GatewayClass
            | Kind::Gateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TlsRoute
            | Kind::TcpRoute
            | Kind::ReferenceGrant
            | Kind::BackendTlsPolicy => GATEWAY_GROUP,
            Kind::Namespace | Kind::Service | Kind::Secret | Kind::ConfigMap | Kind::Endpoints => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::IngressClass | Kind::Ingress => "networking.k8s.io",
            Kind::Workload
            | Kind::TrafficPolicy
            | Kind::FaultInjection
            | Kind::HttpRouteFilter
            | Kind::ListenerPolicy
            | Kind::PeerAuthentication
            | Kind::AuthorizationPolicy
            | Kind::MeshConfig => MESHGATE_GROUP,
        }
    }

    /// Versions of the group this kind is accepted under (same schema for each).
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute => &["v1", "v1beta1"],
            Kind::ReferenceGrant => &["v1", "v1beta1"],
            Kind::GrpcRoute => &["v1"],
            Kind::TlsRoute => &["v1", "v1alpha3", "v1alpha2"],
            Kind::TcpRoute => &["v1alpha2"],
            Kind::BackendTlsPolicy => &["v1", "v1alpha3"],
            Kind::Namespace
            | Kind::Service
            | Kind::Secret
            | Kind::ConfigMap
            | Kind::EndpointSlice
            | Kind::Endpoints
            | Kind::IngressClass
            | Kind::Ingress => &["v1"],
            Kind::Workload
            | Kind::TrafficPolicy
            | Kind::FaultInjection
            | Kind::HttpRouteFilter
            | Kind::ListenerPolicy
            | Kind::PeerAuthentication
            | Kind::AuthorizationPolicy
            | Kind::MeshConfig => &["v1alpha1"],
        }
    }

    /// The preferred `apiVersion`.
    pub fn api_version(self) -> String {
        let version = self.versions()[0];
        match self.group() {
            "" => version.to_string(),
            group => format!("{group}/{version}"),
        }
    }

    /// Whether resources of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::GatewayClass | Kind::Namespace | Kind::MeshConfig | Kind::IngressClass)
    }

    /// Looks a kind up by its `kind:` name (exact case, as the API server does).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Looks a kind up by name, also accepting lower case and plural forms (for the CLI).
    pub fn from_cli(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        let singular = lower.strip_suffix("es").filter(|s| s.ends_with("ss")).or_else(|| lower.strip_suffix('s'));
        Kind::ALL.into_iter().find(|k| {
            let own = k.as_str().to_ascii_lowercase();
            own == lower || Some(own.as_str()) == singular
        })
    }

    /// Checks an `apiVersion` against this kind; returns the expected forms when it does not fit.
    pub fn check_api_version(self, api_version: &str) -> Result<(), String> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        if group == self.group() && self.versions().contains(&version) {
            return Ok(());
        }
        let expected: Vec<String> = self
            .versions()
            .iter()
            .map(|v| if self.group().is_empty() { (*v).to_string() } else { format!("{}/{v}", self.group()) })
            .collect();
        Err(format!("{} is served as apiVersion {}, not {api_version:?}", self.as_str(), expected.join(" or ")))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
