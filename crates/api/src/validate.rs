//! Per-resource validation: what the API server and the CRD schemas (with their CEL rules)
//! would refuse. References between resources are resolved later, by the model.

mod core;
mod gateway;
mod policy;
mod route;
mod security;
pub mod syntax;

pub use route::{backend_filter_as_rule_filter, filter_name};

use crate::resource::{Object, Resource};

/// One problem inside a resource: field path and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.rules[0].matches[1].path.value`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Collects problems with a field-path prefix.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) problems: Vec<Problem>,
}

impl Report {
    pub(crate) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.into(), message: message.into() });
    }

    /// Checks an integer against an inclusive range.
    pub(crate) fn range(&mut self, field: impl Into<String>, value: i64, min: i64, max: i64) {
        if value < min || value > max {
            self.add(field, format!("must be {min}..{max}, got {value}"));
        }
    }
}

/// Validates one resource on its own.
pub fn validate(object: &Object) -> Vec<Problem> {
    let mut report = Report::default();
    let meta = object.resource.metadata();
    if let Some(name) = meta.name.as_deref()
        && let Err(msg) = syntax::dns_subdomain(name)
    {
        report.add("metadata.name", msg);
    }
    if let Some(ns) = meta.namespace.as_deref()
        && let Err(msg) = syntax::dns_label(ns)
    {
        report.add("metadata.namespace", msg);
    }
    match &object.resource {
        Resource::Gateway(g) => gateway::gateway(g, &mut report),
        Resource::GatewayClass(c) => gateway::gateway_class(c, &mut report),
        Resource::HttpRoute(r) => route::http_route(r, &mut report),
        Resource::GrpcRoute(r) => route::grpc_route(r, &mut report),
        Resource::TlsRoute(r) => route::tls_route(r, &mut report),
        Resource::TcpRoute(r) => route::tcp_route(r, &mut report),
        Resource::ReferenceGrant(g) => gateway::reference_grant(g, &mut report),
        Resource::Service(s) => core::service(s, &mut report),
        Resource::EndpointSlice(s) => core::endpoint_slice(s, &mut report),
        Resource::Endpoints(e) => core::endpoints(e, &mut report),
        Resource::Secret(s) => core::secret(s, &mut report),
        Resource::Workload(w) => core::workload(w, &mut report),
        Resource::TrafficPolicy(t) => policy::traffic_policy(t, &mut report),
        Resource::FaultInjection(f) => policy::fault_injection(f, &mut report),
        Resource::HttpRouteFilter(f) => policy::http_route_filter(f, &mut report),
        Resource::ListenerPolicy(l) => policy::listener_policy(l, &mut report),
        Resource::PeerAuthentication(p) => security::peer_authentication(p, &mut report),
        Resource::AuthorizationPolicy(a) => security::authorization_policy(a, &mut report),
        Resource::MeshConfig(m) => security::mesh_config(object, m, &mut report),
        Resource::BackendTlsPolicy(p) => route::backend_tls_policy(p, &mut report),
        // Ingress problems (a pathType, a resource backend) leave the rest served: the gateway
        // compiler reports them per path.
        Resource::Namespace(_) | Resource::ConfigMap(_) | Resource::Ingress(_) | Resource::IngressClass(_) => {}
    }
    report.problems
}
