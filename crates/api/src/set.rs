//! A consistent set of resources, indexed by identity, with duplicates refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{ConfigError, Errors};
use crate::kind::Kind;
use crate::resource::{Object, ObjectRef, Resource};

/// Every resource of one configuration, keyed by `kind namespace/name`.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    objects: BTreeMap<ObjectRef, Object>,
}

macro_rules! typed_iter {
    ($fn:ident, $variant:ident, $ty:ty) => {
        /// Every resource of this kind with its object.
        pub fn $fn(&self) -> impl Iterator<Item = (&Object, &$ty)> {
            self.of_kind(Kind::$variant).filter_map(|o| match &o.resource {
                Resource::$variant(r) => Some((o, &**r)),
                _ => None,
            })
        }
    };
}

impl ResourceSet {
    /// Builds a set; a second resource with the same identity is an error naming both files.
    pub fn from_objects(objects: Vec<Object>) -> (Self, Errors) {
        let mut set = ResourceSet::default();
        let mut errors = Errors::default();
        for object in objects {
            if let Some(first) = set.objects.get(&object.id) {
                errors.push(ConfigError::field(
                    &object.source.file,
                    &object.id,
                    "metadata.name",
                    format!("duplicate: {} is already defined in {}", object.id, first.source),
                ));
                continue;
            }
            set.objects.insert(object.id.clone(), object);
        }
        (set, errors)
    }

    /// Adds or replaces one resource; returns the one it replaced.
    pub fn upsert(&mut self, object: Object) -> Option<Object> {
        self.objects.insert(object.id.clone(), object)
    }

    /// Removes one resource.
    pub fn remove(&mut self, id: &ObjectRef) -> Option<Object> {
        self.objects.remove(id)
    }

    /// Looks a resource up.
    pub fn get(&self, id: &ObjectRef) -> Option<&Object> {
        self.objects.get(id)
    }

    /// Looks a namespaced resource up by kind, namespace and name.
    pub fn lookup(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Object> {
        let id =
            ObjectRef { kind, namespace: kind.namespaced().then(|| Arc::<str>::from(namespace)), name: name.into() };
        self.objects.get(&id)
    }

    /// Every resource of one kind, ordered by namespace and name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        let start = ObjectRef { kind, namespace: None, name: "".into() };
        self.objects.range(start..).take_while(move |(id, _)| id.kind == kind).map(|(_, o)| o)
    }

    /// Every resource.
    pub fn iter(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    typed_iter!(gateway_classes, GatewayClass, crate::gw::GatewayClass);
    typed_iter!(gateways, Gateway, crate::gw::Gateway);
    typed_iter!(http_routes, HttpRoute, crate::gw::HttpRoute);
    typed_iter!(grpc_routes, GrpcRoute, crate::gw::GrpcRoute);
    typed_iter!(tls_routes, TlsRoute, crate::gw::TlsRoute);
    typed_iter!(tcp_routes, TcpRoute, crate::gw::TcpRoute);
    typed_iter!(reference_grants, ReferenceGrant, crate::gw::ReferenceGrant);
    typed_iter!(namespaces, Namespace, crate::core::Namespace);
    typed_iter!(services, Service, crate::core::Service);
    typed_iter!(endpoint_slices, EndpointSlice, crate::core::EndpointSlice);
    typed_iter!(endpoints, Endpoints, crate::core::Endpoints);
    typed_iter!(ingress_classes, IngressClass, crate::core::IngressClass);
    typed_iter!(ingresses, Ingress, crate::core::Ingress);
    typed_iter!(secrets, Secret, crate::core::Secret);
    typed_iter!(config_maps, ConfigMap, crate::core::ConfigMap);
    typed_iter!(backend_tls_policies, BackendTlsPolicy, crate::gw::BackendTlsPolicy);
    typed_iter!(workloads, Workload, crate::workload::Workload);
    typed_iter!(traffic_policies, TrafficPolicy, crate::policy::TrafficPolicy);
    typed_iter!(fault_injections, FaultInjection, crate::policy::FaultInjection);
    typed_iter!(http_route_filters, HttpRouteFilter, crate::policy::HttpRouteFilter);
    typed_iter!(listener_policies, ListenerPolicy, crate::policy::ListenerPolicy);
    typed_iter!(peer_authentications, PeerAuthentication, crate::security::PeerAuthentication);
    typed_iter!(authorization_policies, AuthorizationPolicy, crate::security::AuthorizationPolicy);
    typed_iter!(mesh_configs, MeshConfig, crate::security::MeshConfig);
}
