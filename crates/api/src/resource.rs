//! A loaded resource: its identity, where it came from, and its typed content.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::core::{ConfigMap, EndpointSlice, Endpoints, Ingress, IngressClass, Namespace, Secret, Service};
use crate::gw::{BackendTlsPolicy, Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute, TlsRoute};
use crate::kind::Kind;
use crate::policy::{FaultInjection, HttpRouteFilter, ListenerPolicy, TrafficPolicy};
use crate::security::{AuthorizationPolicy, MeshConfig, PeerAuthentication};
use crate::workload::Workload;

/// Names one resource: `kind namespace/name` (no namespace for cluster-scoped kinds).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// The namespace; `None` for cluster-scoped kinds.
    pub namespace: Option<Arc<str>>,
    /// The name.
    pub name: Arc<str>,
}

impl ObjectRef {
    /// A reference to a namespaced resource.
    pub fn namespaced(kind: Kind, namespace: &str, name: &str) -> Self {
        Self { kind, namespace: Some(namespace.into()), name: name.into() }
    }

    /// The namespace, or "" for cluster-scoped resources.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Where a resource was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// File path or store key, as the user wrote it.
    pub file: Arc<str>,
    /// First line of the YAML document (1-based); 0 when not from a file.
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 { write!(f, "{}:{}", self.file, self.line) } else { f.write_str(&self.file) }
    }
}

/// The typed content of a resource.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    /// A GatewayClass.
    GatewayClass(Arc<GatewayClass>),
    /// A Gateway.
    Gateway(Arc<Gateway>),
    /// An HTTPRoute.
    HttpRoute(Arc<HttpRoute>),
    /// A GRPCRoute.
    GrpcRoute(Arc<GrpcRoute>),
    /// A TLSRoute.
    TlsRoute(Arc<TlsRoute>),
    /// A TCPRoute.
    TcpRoute(Arc<TcpRoute>),
    /// A ReferenceGrant.
    ReferenceGrant(Arc<ReferenceGrant>),
    /// A BackendTLSPolicy.
    BackendTlsPolicy(Arc<BackendTlsPolicy>),
    /// A ConfigMap.
    ConfigMap(Arc<ConfigMap>),
    /// A Namespace.
    Namespace(Arc<Namespace>),
    /// A Service.
    Service(Arc<Service>),
    /// An EndpointSlice.
    EndpointSlice(Arc<EndpointSlice>),
    /// A (v1) Endpoints.
    Endpoints(Arc<Endpoints>),
    /// An IngressClass.
    IngressClass(Arc<IngressClass>),
    /// An Ingress.
    Ingress(Arc<Ingress>),
    /// A Secret.
    Secret(Arc<Secret>),
    /// A Workload.
    Workload(Arc<Workload>),
    /// A TrafficPolicy.
    TrafficPolicy(Arc<TrafficPolicy>),
    /// A FaultInjection.
    FaultInjection(Arc<FaultInjection>),
    /// An HTTPRouteFilter.
    HttpRouteFilter(Arc<HttpRouteFilter>),
    /// A ListenerPolicy.
    ListenerPolicy(Arc<ListenerPolicy>),
    /// A PeerAuthentication.
    PeerAuthentication(Arc<PeerAuthentication>),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    /// The MeshConfig.
    MeshConfig(Arc<MeshConfig>),
}

impl Resource {
    /// The kind of this resource.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::GatewayClass(_) => Kind::GatewayClass,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
            Resource::ConfigMap(_) => Kind::ConfigMap,
            Resource::GrpcRoute(_) => Kind::GrpcRoute,
            Resource::TlsRoute(_) => Kind::TlsRoute,
            Resource::TcpRoute(_) => Kind::TcpRoute,
            Resource::ReferenceGrant(_) => Kind::ReferenceGrant,
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Service(_) => Kind::Service,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
            Resource::Endpoints(_) => Kind::Endpoints,
            Resource::IngressClass(_) => Kind::IngressClass,
            Resource::Ingress(_) => Kind::Ingress,
            Resource::Secret(_) => Kind::Secret,
            Resource::Workload(_) => Kind::Workload,
            Resource::TrafficPolicy(_) => Kind::TrafficPolicy,
            Resource::FaultInjection(_) => Kind::FaultInjection,
            Resource::HttpRouteFilter(_) => Kind::HttpRouteFilter,
            Resource::ListenerPolicy(_) => Kind::ListenerPolicy,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::MeshConfig(_) => Kind::MeshConfig,
        }
    }

    /// The object metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::GatewayClass(r) => &r.metadata,
            Resource::Gateway(r) => &r.metadata,
            Resource::HttpRoute(r) => &r.metadata,
            Resource::BackendTlsPolicy(r) => &r.metadata,
            Resource::ConfigMap(r) => &r.metadata,
            Resource::GrpcRoute(r) => &r.metadata,
            Resource::TlsRoute(r) => &r.metadata,
            Resource::TcpRoute(r) => &r.metadata,
            Resource::ReferenceGrant(r) => &r.metadata,
            Resource::Namespace(r) => &r.metadata,
            Resource::Service(r) => &r.metadata,
            Resource::EndpointSlice(r) => &r.metadata,
            Resource::Endpoints(r) => &r.metadata,
            Resource::IngressClass(r) => &r.metadata,
            Resource::Ingress(r) => &r.metadata,
            Resource::Secret(r) => &r.metadata,
            Resource::Workload(r) => &r.metadata,
            Resource::TrafficPolicy(r) => &r.metadata,
            Resource::FaultInjection(r) => &r.metadata,
            Resource::HttpRouteFilter(r) => &r.metadata,
            Resource::ListenerPolicy(r) => &r.metadata,
            Resource::PeerAuthentication(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::MeshConfig(r) => &r.metadata,
        }
    }

    /// Whether both are the same shared content, not merely equal (a store that keeps what it
    /// parsed hands out the same resource until its file changes: the control plane then
    /// reuses what it derived from it instead of serializing it again).
    pub fn shares(&self, other: &Resource) -> bool {
        std::ptr::eq(self.content(), other.content())
    }

    fn content(&self) -> *const () {
        match self {
            Resource::GatewayClass(r) => Arc::as_ptr(r).cast(),
            Resource::Gateway(r) => Arc::as_ptr(r).cast(),
            Resource::HttpRoute(r) => Arc::as_ptr(r).cast(),
            Resource::GrpcRoute(r) => Arc::as_ptr(r).cast(),
            Resource::TlsRoute(r) => Arc::as_ptr(r).cast(),
            Resource::TcpRoute(r) => Arc::as_ptr(r).cast(),
            Resource::ReferenceGrant(r) => Arc::as_ptr(r).cast(),
            Resource::BackendTlsPolicy(r) => Arc::as_ptr(r).cast(),
            Resource::ConfigMap(r) => Arc::as_ptr(r).cast(),
            Resource::Namespace(r) => Arc::as_ptr(r).cast(),
            Resource::Service(r) => Arc::as_ptr(r).cast(),
            Resource::EndpointSlice(r) => Arc::as_ptr(r).cast(),
            Resource::Endpoints(r) => Arc::as_ptr(r).cast(),
            Resource::IngressClass(r) => Arc::as_ptr(r).cast(),
            Resource::Ingress(r) => Arc::as_ptr(r).cast(),
            Resource::Secret(r) => Arc::as_ptr(r).cast(),
            Resource::Workload(r) => Arc::as_ptr(r).cast(),
            Resource::TrafficPolicy(r) => Arc::as_ptr(r).cast(),
            Resource::FaultInjection(r) => Arc::as_ptr(r).cast(),
            Resource::HttpRouteFilter(r) => Arc::as_ptr(r).cast(),
            Resource::ListenerPolicy(r) => Arc::as_ptr(r).cast(),
            Resource::PeerAuthentication(r) => Arc::as_ptr(r).cast(),
            Resource::AuthorizationPolicy(r) => Arc::as_ptr(r).cast(),
            Resource::MeshConfig(r) => Arc::as_ptr(r).cast(),
        }
    }

    /// The object metadata, mutable (defaults are filled in on load).
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::GatewayClass(r) => &mut Arc::make_mut(r).metadata,
            Resource::Gateway(r) => &mut Arc::make_mut(r).metadata,
            Resource::HttpRoute(r) => &mut Arc::make_mut(r).metadata,
            Resource::BackendTlsPolicy(r) => &mut Arc::make_mut(r).metadata,
            Resource::ConfigMap(r) => &mut Arc::make_mut(r).metadata,
            Resource::GrpcRoute(r) => &mut Arc::make_mut(r).metadata,
            Resource::TlsRoute(r) => &mut Arc::make_mut(r).metadata,
            Resource::TcpRoute(r) => &mut Arc::make_mut(r).metadata,
            Resource::ReferenceGrant(r) => &mut Arc::make_mut(r).metadata,
            Resource::Namespace(r) => &mut Arc::make_mut(r).metadata,
            Resource::Service(r) => &mut Arc::make_mut(r).metadata,
            Resource::EndpointSlice(r) => &mut Arc::make_mut(r).metadata,
            Resource::Endpoints(r) => &mut Arc::make_mut(r).metadata,
            Resource::IngressClass(r) => &mut Arc::make_mut(r).metadata,
            Resource::Ingress(r) => &mut Arc::make_mut(r).metadata,
            Resource::Secret(r) => &mut Arc::make_mut(r).metadata,
            Resource::Workload(r) => &mut Arc::make_mut(r).metadata,
            Resource::TrafficPolicy(r) => &mut Arc::make_mut(r).metadata,
            Resource::FaultInjection(r) => &mut Arc::make_mut(r).metadata,
            Resource::HttpRouteFilter(r) => &mut Arc::make_mut(r).metadata,
            Resource::ListenerPolicy(r) => &mut Arc::make_mut(r).metadata,
            Resource::PeerAuthentication(r) => &mut Arc::make_mut(r).metadata,
            Resource::AuthorizationPolicy(r) => &mut Arc::make_mut(r).metadata,
            Resource::MeshConfig(r) => &mut Arc::make_mut(r).metadata,
        }
    }
}

/// One resource with its identity and origin.
#[derive(Debug, Clone, Serialize)]
pub struct Object {
    /// `kind namespace/name`.
    #[serde(skip)]
    pub id: ObjectRef,
    /// Where it was read from.
    #[serde(skip)]
    pub source: Source,
    /// The content.
    #[serde(flatten)]
    pub resource: Resource,
}

impl Object {
    /// Labels from the metadata (empty when none).
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.resource.metadata().labels.iter().flatten().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
