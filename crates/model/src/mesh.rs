//! The mesh as one workload's sidecar sees it: every Service by its virtual IP and port (with
//! the mesh HTTPRoutes attached to it, GAMMA style), every endpoint by address (for clients
//! that dial a pod directly), and the workload's own inbound policy.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshgate_api::{GATEWAY_GROUP, Kind, ResourceSet};

use crate::config::{AppProtocol, EndpointRef, MeshOutbound, MeshService, ProxyConfig, ServiceBackendRef};
use crate::matching::RouteMatch;
use crate::resolve::{Discovery, Referrer};
use crate::route::CompiledRoute;
use crate::rule::{Backend, Rule, WeightedBackend};
use crate::security::{WorkloadRef, compile_inbound};
use crate::settings::MeshSettings;
use crate::status::age;
use crate::table::{Entry, RouteTable};

fn protocol_of(port: &meshgate_api::core::ServicePort) -> AppProtocol {
    let name = port.name.as_deref().unwrap_or("");
    match port.app_protocol.as_deref() {
        Some("http" | "http2" | "grpc" | "h2c" | "kubernetes.io/h2c") => return AppProtocol::Http,
        Some("tcp" | "mysql" | "postgresql" | "redis" | "mongo") => return AppProtocol::Tcp,
        _ => {}
    }
    // Istio's naming convention: <protocol>[-<suffix>].
    let prefix = name.split('-').next().unwrap_or("");
    match prefix {
        "http" | "http2" | "grpc" => AppProtocol::Http,
        "tcp" | "mysql" | "postgresql" | "redis" | "mongo" | "tls" => AppProtocol::Tcp,
        _ => AppProtocol::Sniff,
    }
}

/// The range virtual IPs are allocated from when a Service has no `clusterIP`.
pub const SERVICE_CIDR: (std::net::Ipv4Addr, u8) = (std::net::Ipv4Addr::new(10, 96, 0, 0), 16);

/// Every Service's virtual IP: its `clusterIP` when it has one (as exported from Kubernetes),
/// else one allocated in [`SERVICE_CIDR`] from a hash of its name. Every sidecar computes the
/// same table from the same resources: collisions go to the younger Service (probing on), so
/// adding a Service never moves an existing one. Headless (`clusterIP: None`) and
/// ExternalName Services get none.
pub fn virtual_ips(set: &ResourceSet) -> HashMap<(&str, &str), IpAddr> {
    let mut out = HashMap::new();
    let mut taken = std::collections::HashSet::new();
    let mut wanting = Vec::new();
    for (o, svc) in set.services() {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        match spec.cluster_ip.as_deref() {
            Some("None") => {}
            Some(ip) if !ip.is_empty() => {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    taken.insert(ip);
                    out.insert((o.id.ns(), o.id.name.as_ref()), ip);
                }
            }
            _ => wanting.push(o),
        }
    }
    wanting.sort_by_key(|o| (age(o), o.id.ns().to_string(), o.id.name.to_string()));
    let (base, bits) = SERVICE_CIDR;
    let size = 1u32 << (32 - bits);
    for o in wanting {
        let key = format!("{}/{}", o.id.ns(), o.id.name);
        let mut h = fnv(key.as_bytes());
        // Skip the network address, the first host (often a gateway) and broadcast.
        for _ in 0..size {
            let offset = 2 + (h % (size - 3));
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(u32::from(base) + offset));
            if taken.insert(ip) {
                out.insert((o.id.ns(), o.id.name.as_ref()), ip);
                break;
            }
            h = h.wrapping_add(1);
        }
    }
    out
}

fn fnv(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A mesh route (index into the compiled routes) attached to a Service, with the port it
/// names (none: every port).
type Attachment = (usize, Option<i32>);

/// Compiles the mesh for the sidecar of Workload `namespace/name`.
pub fn compile_mesh(set: &ResourceSet, namespace: &str, workload: &str) -> ProxyConfig {
    let settings: MeshSettings = crate::settings::mesh_settings(set);
    let disc = Discovery::new(set);
    let me = set.lookup(Kind::Workload, namespace, workload).and_then(|o| match &o.resource {
        meshgate_api::Resource::Workload(w) => Some(w.as_ref()),
        _ => None,
    });
    let labels = me.map(|w| w.effective_labels()).unwrap_or_default();
    let peers = mesh_peers(set, namespace, workload, me, &labels);
    let inbound = compile_inbound(set, &settings, &WorkloadRef { namespace, labels });
    let identity = me
        .and_then(|w| w.spec.service_account.as_ref())
        .map(|sa| crate::settings::workload_id(&settings.trust_domain, namespace, sa));
    let mut services = BTreeMap::new();
    // Mesh routes, each compiled once, by the Service they attach to (and the port they name).
    let mut routes: Vec<(&meshgate_api::Object, CompiledRoute)> = Vec::new();
    let mut by_service: HashMap<(&str, &str), Vec<Attachment>> = HashMap::new();
    for (o, r) in set.http_routes() {
        let mut index = None;
        for p in r.spec.parent_refs.iter().flatten() {
            if p.group.as_deref().unwrap_or(GATEWAY_GROUP).is_empty() && p.kind.as_deref() == Some("Service") {
                let i = *index.get_or_insert_with(|| {
                    routes.push((o, CompiledRoute::new(o, r, &disc, &mut Vec::new())));
                    routes.len() - 1
                });
                let ns = p.namespace.as_deref().unwrap_or(o.id.ns());
                by_service.entry((ns, p.name.as_str())).or_default().push((i, p.port));
            }
        }
    }
    let vips = virtual_ips(set);
    for (o, svc) in set.services() {
        let Some(spec) = &svc.spec else { continue };
        let Some(&ip) = vips.get(&(o.id.ns(), o.id.name.as_ref())) else { continue };
        let (ns, name) = (o.id.ns(), o.id.name.as_ref());
        let attached = by_service.get(&(ns, name)).map_or(&[][..], Vec::as_slice);
        for sp in spec.ports.iter().flatten() {
            let Ok(port) = u16::try_from(sp.port) else { continue };
            let referrer = Referrer { group: GATEWAY_GROUP, kind: "HTTPRoute", namespace: ns };
            let backend = disc.backend(referrer, None, None, None, name, Some(sp.port));
            let key = format!("{ns}/{name}");
            let for_port = attached.iter().filter(|(_, p)| p.is_none_or(|p| p == sp.port));
            // Consumer routes (in the client's namespace) win over the producer's (GAMMA).
            let consumer = namespace != ns && for_port.clone().any(|(i, _)| routes[*i].0.id.ns() == namespace);
            let from = if consumer { namespace } else { ns };
            let mut entries: Vec<Entry> = for_port
                .filter(|(i, _)| routes[*i].0.id.ns() == from)
                .flat_map(|(i, _)| routes[*i].1.entries(&[]))
                .collect();
            if entries.is_empty() {
                let rule = Rule {
                    route: format!("service:{key}").into(),
                    backends: vec![WeightedBackend::new(1, backend.clone())],
                    total_weight: 1,
                    ..Rule::default()
                };
                entries.push(Entry {
                    hostnames: Vec::new(),
                    matcher: RouteMatch::any(),
                    rule: Arc::new(rule),
                    order: (0, key.clone().into(), 0, 0),
                });
            }
            let tcp = match &backend {
                Backend::Service(s) => Some(ServiceBackendRef { slot: s.slot }),
                Backend::Invalid { .. } => None,
            };
            services.insert(
                SocketAddr::new(ip, port),
                MeshService {
                    name: key,
                    hosts: vec![name.to_string(), format!("{name}.{ns}"), format!("{name}.{ns}.svc.cluster.local")],
                    port,
                    protocol: protocol_of(sp),
                    routes: RouteTable::new(entries),
                    tcp,
                },
            );
        }
    }
    let backends = disc.into_backends();
    let mut endpoints = HashMap::new();
    for b in &backends {
        for (index, e) in b.endpoints.iter().enumerate() {
            endpoints.entry(e.addr).or_insert(EndpointRef { slot: b.slot, index });
        }
    }
    ProxyConfig {
        ports: BTreeMap::new(),
        backends,
        mesh: Some(MeshOutbound {
            services,
            endpoints,
            registry_only: settings.registry_only,
            inbound,
            identity,
            peers: Arc::new(peers),
        }),
        downstream: settings.downstream,
        telemetry: settings.telemetry,
    }
}

/// The workloads as `namespace/workload`'s records name them: itself, every workload by its
/// address, and the Service that targets each of its ports (the first by name when several
/// do, as a caller would not say which it dialled).
fn mesh_peers(
    set: &ResourceSet,
    namespace: &str,
    workload: &str,
    me: Option<&meshgate_api::Workload>,
    labels: &BTreeMap<&str, &str>,
) -> crate::peer::MeshPeers {
    use crate::peer::{MeshPeers, Peer};
    let mut peers = MeshPeers {
        me: Some(Arc::new(match me {
            Some(_) => Peer::new(namespace, workload, labels),
            None => Peer::named(namespace, workload),
        })),
        ..MeshPeers::default()
    };
    for (o, w) in set.workloads() {
        if let Ok(ip) = w.spec.address.parse::<IpAddr>() {
            let peer = Arc::new(Peer::new(o.id.ns(), &o.id.name, &w.effective_labels()));
            peers.by_ip.entry(ip).or_insert(peer);
        }
    }
    let Some(me) = me else { return peers };
    for (o, svc) in set.services() {
        let Some(spec) = &svc.spec else { continue };
        let selected =
            spec.selector.as_ref().is_some_and(|s| !s.is_empty() && meshgate_api::selector_matches(s, labels));
        if o.id.ns() != namespace || !selected {
            continue;
        }
        for sp in spec.ports.iter().flatten() {
            let target = match &sp.target_port {
                Some(meshgate_api::core::IntOrString::Int(p)) => Some(*p),
                Some(meshgate_api::core::IntOrString::String(named)) => me.spec.ports.get(named).copied(),
                None => Some(sp.port),
            };
            if let Some(target) = target.and_then(|p| u16::try_from(p).ok()) {
                let id: Arc<str> = format!("{}/{}:{}", o.id.ns(), o.id.name, sp.port).into();
                peers.services.entry(target).or_insert(id);
            }
        }
    }
    peers
}
