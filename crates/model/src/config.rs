//! The compiled view a proxy serves, one type for every role: the gateway's listeners by port,
//! the sidecar's view of the mesh (Services by virtual IP, endpoints by address, its inbound
//! policy), the backends both route to, and how clients' connections are treated.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::rule::ServiceBackend;
use crate::security::InboundPolicy;
use crate::settings::Downstream;
use crate::status::Condition;
use crate::table::{ListenerSet, RouteTable};

/// What a proxy serves.
#[derive(Debug, Default, Serialize)]
pub struct ProxyConfig {
    /// The gateway role: port → listeners on it.
    pub ports: BTreeMap<u16, ListenerSet>,
    /// Every Service backend referenced, indexed by [`ServiceBackend::slot`].
    pub backends: Vec<Arc<ServiceBackend>>,
    /// The sidecar role: the mesh as seen from this workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshOutbound>,
    /// How clients' connections are treated (MeshConfig `spec.downstream`).
    pub downstream: Downstream,
    /// Access logs (MeshConfig `spec.accessLog`).
    pub telemetry: crate::settings::Telemetry,
}

impl ProxyConfig {
    /// The certificate an HTTPS listener serves from Secret `secret` (`namespace/name`).
    pub fn served_cert(&self, secret: &str) -> Option<Arc<meshgate_tls::edge::EdgeCert>> {
        self.ports.values().flat_map(ListenerSet::certs).find(|c| &*c.secret == secret).cloned()
    }
}

/// The compiler's output.
#[derive(Debug, Default)]
pub struct Compiled {
    /// What to serve.
    pub config: ProxyConfig,
    /// Status conditions for every Gateway and route (problems and successes).
    pub conditions: Vec<Condition>,
    /// Gateway API status of every GatewayClass, Gateway and route meshgate answers for, as
    /// the spec writes it (without transition times: [`crate::gwstatus::stamp`]).
    pub status: Vec<crate::gwstatus::ResourceStatus>,
}

impl Compiled {
    /// The conditions that report problems.
    pub fn problems(&self) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(|c| c.is_problem())
    }
}

/// A reference to a backend of [`ProxyConfig::backends`] by slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServiceBackendRef {
    /// Index in `backends`.
    pub slot: usize,
}

/// How a Service port is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AppProtocol {
    /// HTTP (declared, or detected by sniffing).
    Http,
    /// Opaque TCP (declared: server-speaks-first protocols must be).
    Tcp,
    /// Not declared: sniff the first bytes.
    Sniff,
}

/// One Service port in the mesh.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    /// `namespace/name`.
    pub name: String,
    /// Host names that reach it (`inventory`, `inventory.shop`, `inventory.shop.svc.cluster.local`).
    pub hosts: Vec<String>,
    /// The Service port.
    pub port: u16,
    /// How it is spoken.
    pub protocol: AppProtocol,
    /// HTTP routes (the mesh HTTPRoutes attached to it, or one default rule to it).
    pub routes: RouteTable,
    /// Where opaque TCP goes (the Service itself).
    #[serde(skip)]
    pub tcp: Option<ServiceBackendRef>,
}

/// Where an endpoint is in [`ProxyConfig::backends`]: backend `slot`, endpoint `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRef {
    /// The backend.
    pub slot: usize,
    /// The endpoint within it.
    pub index: usize,
}

/// The mesh from one workload's side.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshOutbound {
    /// Services by virtual IP and port.
    pub services: BTreeMap<SocketAddr, MeshService>,
    /// Endpoints by address, for clients that dial a pod directly.
    #[serde(skip)]
    pub endpoints: HashMap<SocketAddr, EndpointRef>,
    /// Refuse destinations outside the mesh.
    pub registry_only: bool,
    /// This workload's inbound policy.
    pub inbound: InboundPolicy,
    /// This workload's SPIFFE ID.
    pub identity: Option<String>,
    /// The workloads as this one's records name them.
    pub peers: Arc<crate::peer::MeshPeers>,
}
