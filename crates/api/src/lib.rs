//! The resource model: Kubernetes-style resources (Gateway API, core, ours), loaded from
//! multi-document YAML, checked against their schemas and validated, every error naming the
//! file, the resource and the field path.

mod error;
mod kind;
mod load;
pub mod policy;
mod resource;
pub mod security;
mod set;
pub mod validate;
mod workload;

pub use error::{ConfigError, Errors};
pub use kind::{GATEWAY_GROUP, Kind, MESHGATE_GROUP};
pub use load::{
    Loaded, cannot_read, collect_files, decode_document, is_resource_file, load_file, load_paths, load_str,
};
pub use resource::{Object, ObjectRef, Resource, Source};
pub use set::ResourceSet;
pub use workload::{TlsMode, Workload, WorkloadSpec, selector_matches};

/// Gateway API types as meshgate reads them (the experimental channel: a superset of standard).
pub mod gw {
    pub use gateway_api::apis::standard::backendtlspolicies::{self, BackendTlsPolicy};
    pub use gateway_api::experimental::gatewayclasses::GatewayClass;
    pub use gateway_api::experimental::gateways::{self, Gateway};
    pub use gateway_api::experimental::grpcroutes::{self, GrpcRoute};
    pub use gateway_api::experimental::httproutes::{self, HttpRoute};
    pub use gateway_api::experimental::referencegrants::ReferenceGrant;
    pub use gateway_api::experimental::tcproutes::{self, TcpRoute};
    pub use gateway_api::experimental::tlsroutes::{self, TlsRoute};
}

/// Kubernetes core types meshgate reads.
pub mod core {
    pub use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Secret, Service, ServicePort};
    pub use k8s_openapi::api::discovery::v1::EndpointSlice;
    pub use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
}
