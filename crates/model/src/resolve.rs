//! Service discovery over a resource set: a Service port resolved to endpoints through
//! EndpointSlices (several per Service, merged) and Workloads (selector, targetPort), and
//! ReferenceGrant checks for cross-namespace references.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshgate_api::core::{EndpointSlice, IntOrString, Service, ServicePort};
use meshgate_api::gw::ReferenceGrant;
use meshgate_api::{ResourceSet, Workload};

use meshgate_api::Object;
use meshgate_api::policy::TrafficPolicySpec;

use crate::policy::BackendPolicy;
use crate::rule::{Backend, BackendTls, Endpoint, ServiceBackend, UpstreamProtocol};
use crate::status::Condition;
use crate::status::{age, cond};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Indexes of a resource set for resolving references.
pub struct Discovery<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    /// v1 Endpoints by Service (read only for a Service without EndpointSlices).
    legacy: HashMap<(&'a str, &'a str), &'a meshgate_api::core::Endpoints>,
    workloads: HashMap<&'a str, Vec<(&'a str, &'a Workload)>>,
    grants: Vec<(&'a str, &'a ReferenceGrant)>,
    cache: RefCell<HashMap<(String, String, u16, bool), Backend>>,
    /// Backends resolved now are spoken to over HTTP/2 whatever their port's appProtocol
    /// (while a GRPCRoute compiles).
    h2c: std::cell::Cell<bool>,
    resolved: RefCell<Vec<Arc<ServiceBackend>>>,
    /// The TrafficPolicy in force per (namespace, service, port or None for the whole Service).
    policies: HashMap<(&'a str, &'a str, Option<u16>), (String, &'a TrafficPolicySpec)>,
    /// Conditions of every TrafficPolicy.
    pub policy_conditions: Vec<Condition>,
    faults: HashMap<(&'a str, &'a str), &'a meshgate_api::policy::FaultInjectionSpec>,
    route_filters: HashMap<(&'a str, &'a str), &'a meshgate_api::policy::HttpRouteFilterSpec>,
    /// BackendTLSPolicies by (namespace, Service): the port name they are for (all ports when
    /// `None`) and the TLS, or why the policy cannot be used.
    backend_tls: HashMap<(&'a str, &'a str), Vec<PortTls<'a>>>,
    trust_domain: String,
}

/// A BackendTLSPolicy's TLS, or why it cannot be used.
type TlsOrWhy = Result<Arc<BackendTls>, String>;

/// The port name a BackendTLSPolicy targets (`None`: every port), and its TLS.
type PortTls<'a> = (Option<&'a str>, TlsOrWhy);

/// Who is referring: for ReferenceGrant checks.
#[derive(Debug, Clone, Copy)]
pub struct Referrer<'a> {
    /// API group of the referring kind.
    pub group: &'a str,
    /// Referring kind.
    pub kind: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
}

impl<'a> Discovery<'a> {
    /// Indexes `set`.
    pub fn new(set: &'a ResourceSet) -> Self {
        let mut d = Discovery {
            services: HashMap::new(),
            slices: HashMap::new(),
            legacy: HashMap::new(),
            workloads: HashMap::new(),
            grants: Vec::new(),
            cache: RefCell::new(HashMap::new()),
            h2c: std::cell::Cell::new(false),
            resolved: RefCell::new(Vec::new()),
            policies: HashMap::new(),
            policy_conditions: Vec::new(),
            faults: HashMap::new(),
            route_filters: HashMap::new(),
            backend_tls: HashMap::new(),
            trust_domain: crate::settings::mesh_settings(set).trust_domain,
        };
        d.index_backend_tls(set);
        for (o, f) in set.fault_injections() {
            d.faults.insert((o.id.ns(), &o.id.name), &f.spec);
        }
        for (o, f) in set.http_route_filters() {
            d.route_filters.insert((o.id.ns(), &o.id.name), &f.spec);
        }
        for (o, s) in set.services() {
            d.services.insert((o.id.ns(), &o.id.name), s);
        }
        for (o, s) in set.endpoint_slices() {
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                d.slices.entry((o.id.ns(), svc.as_str())).or_default().push(s);
            }
        }
        for (o, e) in set.endpoints() {
            d.legacy.insert((o.id.ns(), &o.id.name), e);
        }
        for (o, w) in set.workloads() {
            d.workloads.entry(o.id.ns()).or_default().push((&o.id.name, w));
        }
        for (o, g) in set.reference_grants() {
            d.grants.push((o.id.ns(), g));
        }
        d.index_policies(set);
        d
    }

    /// Decides which TrafficPolicy applies to each target (the oldest when several claim the
    /// same one) and records a condition for every target reference.
    fn index_policies(&mut self, set: &'a ResourceSet) {
        let mut policies: Vec<(&'a Object, &'a meshgate_api::policy::TrafficPolicy)> = set.traffic_policies().collect();
        policies.sort_by_key(|(o, _)| (age(o), o.id.clone()));
        for (o, p) in policies {
            let ns = o.id.ns();
            let name = format!("TrafficPolicy {ns}/{}", o.id.name);
            for (i, t) in p.spec.target_refs.iter().enumerate() {
                let field = format!("spec.targetRefs[{i}]");
                let port = t.port.and_then(|p| u16::try_from(p).ok());
                let Some(svc) = self.services.get(&(ns, t.name.as_str())) else {
                    self.policy_conditions.push(
                        cond(
                            o,
                            field,
                            "Accepted",
                            false,
                            "TargetNotFound",
                            format!("Service {ns}/{} not found", t.name),
                        )
                        .error(),
                    );
                    continue;
                };
                if let Some(port) = port {
                    let has = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .is_some_and(|ps| ps.iter().any(|sp| sp.port == i32::from(port)));
                    if !has {
                        self.policy_conditions.push(
                            cond(
                                o,
                                format!("{field}.port"),
                                "Accepted",
                                false,
                                "TargetNotFound",
                                format!("Service {ns}/{} has no port {port}", t.name),
                            )
                            .error(),
                        );
                        continue;
                    }
                }
                let key = (ns, t.name.as_str(), port);
                if let Some((winner, _)) = self.policies.get(&key) {
                    let target = match port {
                        Some(p) => format!("Service {ns}/{} port {p}", t.name),
                        None => format!("Service {ns}/{}", t.name),
                    };
                    let msg = format!("{winner} already targets {target} and is older; it applies, this one does not");
                    self.policy_conditions.push(cond(o, field, "Conflicted", true, "Conflicted", msg));
                    continue;
                }
                self.policies.insert(key, (name.clone(), &p.spec));
                self.policy_conditions.push(cond(o, field, "Accepted", true, "Accepted", "applies".into()));
            }
        }
    }

    /// A FaultInjection by namespace and name.
    pub fn fault(&self, ns: &str, name: &str) -> Option<&'a meshgate_api::policy::FaultInjectionSpec> {
        self.faults.get(&(ns, name)).copied()
    }

    /// An HTTPRouteFilter by namespace and name.
    pub fn route_filter(&self, ns: &str, name: &str) -> Option<&'a meshgate_api::policy::HttpRouteFilterSpec> {
        self.route_filters.get(&(ns, name)).copied()
    }

    /// The policy for one Service port: defaults, then the Service-wide policy, then the
    /// port's.
    fn policy_for(&self, ns: &str, name: &str, port: u16) -> BackendPolicy {
        let mut policy = BackendPolicy::default();
        for key in [(ns, name, None), (ns, name, Some(port))] {
            if let Some((from, spec)) = self.policies.get(&key) {
                policy.layer(from.clone(), spec);
            }
        }
        policy
    }

    /// Whether `from` may refer to `to_group/to_kind to_ns/to_name`: same namespace, or a
    /// ReferenceGrant in the target namespace allows it.
    pub fn ref_permitted(&self, from: Referrer<'_>, to_group: &str, to_kind: &str, to_ns: &str, to_name: &str) -> bool {
        if from.namespace == to_ns {
            return true;
        }
        self.grants.iter().filter(|(ns, _)| *ns == to_ns).any(|(_, g)| {
            g.spec.from.iter().any(|f| f.group == from.group && f.kind == from.kind && f.namespace == from.namespace)
                && g.spec
                    .to
                    .iter()
                    .any(|t| t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name))
        })
    }

    /// Resolves a backendRef (defaults: group "", kind Service, namespace of the referrer).
    pub fn backend(
        &self,
        from: Referrer<'_>,
        group: Option<&str>,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: &str,
        port: Option<i32>,
    ) -> Backend {
        let group = group.unwrap_or("");
        let kind = kind.unwrap_or("Service");
        let ns = namespace.unwrap_or(from.namespace);
        if !(group.is_empty() && kind == "Service") {
            return Backend::Invalid {
                reason: "InvalidKind",
                message: format!("backend kind {}{kind} is not supported (only core Services)", group_prefix(group)),
            };
        }
        if !self.ref_permitted(from, "", "Service", ns, name) {
            return Backend::Invalid {
                reason: "RefNotPermitted",
                message: format!(
                    "{} {}/... may not refer to Service {ns}/{name}: no ReferenceGrant in namespace {ns} allows it",
                    from.kind, from.namespace
                ),
            };
        }
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            return Backend::Invalid {
                reason: "UnsupportedValue",
                message: "a Service backendRef needs a port".into(),
            };
        };
        let key = (ns.to_string(), name.to_string(), port, self.h2c.get());
        if let Some(b) = self.cache.borrow().get(&key) {
            return b.clone();
        }
        let resolved = self.service(ns, name, port);
        self.cache.borrow_mut().insert(key, resolved.clone());
        resolved
    }

    /// Reads every BackendTLSPolicy (oldest first: the older one wins a Service port both
    /// target) with its CA certificates; reports each.
    fn index_backend_tls(&mut self, set: &'a ResourceSet) {
        let mut policies: Vec<_> = set.backend_tls_policies().collect();
        policies.sort_by_key(|(o, _)| (age(o), o.id.clone()));
        for (o, p) in policies {
            let ns = o.id.ns();
            let key: Arc<str> = format!("{ns}/{}", o.id.name).into();
            let v = &p.spec.validation;
            let mut pem = Vec::new();
            let mut problem = None;
            if v.well_known_ca_certificates.as_deref() == Some("System") {
                match std::fs::read(meshgate_tls::edge::SYSTEM_ROOTS) {
                    Ok(b) => pem = b,
                    Err(e) => {
                        problem = Some((
                            "NoValidCACertificate",
                            format!("system roots {}: {e}", meshgate_tls::edge::SYSTEM_ROOTS),
                        ))
                    }
                }
            }
            for (i, r) in v.ca_certificate_refs.iter().flatten().enumerate() {
                let kind = if r.kind == "Secret" { meshgate_api::Kind::Secret } else { meshgate_api::Kind::ConfigMap };
                let found = set.lookup(kind, ns, &r.name).and_then(|o| match &o.resource {
                    meshgate_api::Resource::ConfigMap(c) => {
                        c.data.as_ref()?.get("ca.crt").map(|s| s.as_bytes().to_vec())
                    }
                    meshgate_api::Resource::Secret(s) => s
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get("ca.crt"))
                        .map(|s| s.as_bytes().to_vec())
                        .or_else(|| s.data.as_ref()?.get("ca.crt").map(|b| b.0.clone())),
                    _ => None,
                });
                match found {
                    Some(b) => pem.extend(b),
                    None => {
                        problem = Some((
                            "InvalidCACertificateRef",
                            format!(
                                "spec.validation.caCertificateRefs[{i}]: {} {ns}/{} with a ca.crt key not found",
                                r.kind, r.name
                            ),
                        ))
                    }
                }
            }
            let tls = match problem {
                Some((reason, message)) => {
                    self.policy_conditions.push(cond(
                        o,
                        "spec.validation".into(),
                        "ResolvedRefs",
                        false,
                        reason,
                        message.clone(),
                    ));
                    Err(format!("BackendTLSPolicy {key}: {message}"))
                }
                None => match meshgate_tls::edge::origination_configs(&pem) {
                    Ok((http1, h2)) => {
                        let msg = format!("TLS to the targets, verified as {}", v.hostname);
                        self.policy_conditions.push(cond(o, String::new(), "Accepted", true, "Accepted", msg));
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        pem.hash(&mut h);
                        let roots_hash = h.finish();
                        Ok(Arc::new(BackendTls {
                            policy: key.clone(),
                            hostname: v.hostname.clone(),
                            roots_hash,
                            http1,
                            h2,
                        }))
                    }
                    Err(e) => {
                        let message = format!("the CA certificates: {e}");
                        self.policy_conditions.push(cond(
                            o,
                            "spec.validation.caCertificateRefs".into(),
                            "ResolvedRefs",
                            false,
                            "NoValidCACertificate",
                            message.clone(),
                        ));
                        Err(format!("BackendTLSPolicy {key}: {message}"))
                    }
                },
            };
            for t in &p.spec.target_refs {
                let entry = self.backend_tls.entry((ns, t.name.as_str())).or_default();
                let section = t.section_name.as_deref();
                if entry.iter().any(|(s, _)| *s == section) {
                    let msg = format!("Service {ns}/{} already has an older BackendTLSPolicy for this port", t.name);
                    self.policy_conditions.push(cond(
                        o,
                        "spec.targetRefs".into(),
                        "Accepted",
                        false,
                        "Conflicted",
                        msg,
                    ));
                    continue;
                }
                // A policy for one port is found before one for all of them.
                if section.is_some() {
                    entry.insert(0, (section, tls.clone()));
                } else {
                    entry.push((section, tls.clone()));
                }
            }
        }
    }

    /// Runs `f` with every backend it resolves spoken to over HTTP/2 (gRPC).
    pub(crate) fn over_h2c<R>(&self, f: impl FnOnce() -> R) -> R {
        let before = self.h2c.replace(true);
        let r = f();
        self.h2c.set(before);
        r
    }

    /// Every Service backend resolved so far, in slot order.
    pub fn into_backends(self) -> Vec<Arc<ServiceBackend>> {
        self.resolved.into_inner()
    }

    fn service(&self, ns: &str, name: &str, port: u16) -> Backend {
        let Some(svc) = self.services.get(&(ns, name)) else {
            return Backend::Invalid { reason: "BackendNotFound", message: format!("Service {ns}/{name} not found") };
        };
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Backend::Invalid {
                reason: "UnsupportedValue",
                message: format!("Service {ns}/{name} is of type ExternalName, which is not supported yet"),
            };
        }
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let Some(sp) = ports.iter().find(|p| p.port == i32::from(port)) else {
            let have: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
            return Backend::Invalid {
                reason: "BackendNotFound",
                message: format!("Service {ns}/{name} has no port {port} (ports: {})", have.join(", ")),
            };
        };
        let tls = match self.backend_tls.get(&(ns, name)).and_then(|ps| {
            ps.iter().find(|(section, _)| section.is_none_or(|s| Some(s) == sp.name.as_deref())).map(|(_, t)| t)
        }) {
            Some(Ok(tls)) => Some(tls.clone()),
            Some(Err(why)) => {
                return Backend::Invalid {
                    reason: "InvalidBackendTLSPolicy",
                    message: format!("Service {ns}/{name} port {port}: {why}"),
                };
            }
            None => None,
        };
        let mut endpoints = self.slice_endpoints(ns, name, sp);
        if let Some(selector) = spec.and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) {
            endpoints.extend(self.workload_endpoints(ns, selector, sp));
        }
        endpoints.sort_by_key(|a| a.addr);
        endpoints.dedup_by(|a, b| a.addr == b.addr);
        let mut resolved = self.resolved.borrow_mut();
        let backend = Arc::new(ServiceBackend {
            id: format!("{ns}/{name}:{port}").into(),
            namespace: ns.to_string(),
            name: name.to_string(),
            port,
            protocol: if self.h2c.get() { UpstreamProtocol::H2c } else { protocol_of(sp) },
            endpoints,
            tls,
            slot: resolved.len(),
            policy: Arc::new(self.policy_for(ns, name, port)),
        });
        resolved.push(backend.clone());
        Backend::Service(backend)
    }

    fn slice_endpoints(&self, ns: &str, name: &str, sp: &ServicePort) -> Vec<Endpoint> {
        let want = sp.name.as_deref().unwrap_or("");
        let mut out = Vec::new();
        if !self.slices.contains_key(&(ns, name))
            && let Some(e) = self.legacy.get(&(ns, name))
        {
            // The Endpoints API's subsets: ready addresses, each with the subset's port of
            // this Service port's name (what the API server mirrors into an EndpointSlice).
            let origin = format!("Endpoints {ns}/{name}");
            for s in e.subsets.iter().flatten() {
                let port = s.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == want);
                let Some(port) = port.and_then(|p| u16::try_from(p.port).ok()) else { continue };
                for a in s.addresses.iter().flatten() {
                    if let Ok(ip) = a.ip.parse::<IpAddr>() {
                        let addr = SocketAddr::new(ip, port);
                        out.push(Endpoint { addr, origin: origin.clone(), identity: None, workload: None });
                    }
                }
            }
            return out;
        }
        for slice in self.slices.get(&(ns, name)).into_iter().flatten() {
            if slice.address_type == "FQDN" {
                continue;
            }
            let Some(port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == want)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            let origin = format!("EndpointSlice {ns}/{}", slice.metadata.name.as_deref().unwrap_or(""));
            for ep in slice.endpoints.iter().flatten() {
                // An unset `ready` means ready (the API's documented default).
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        out.push(Endpoint {
                            addr: SocketAddr::new(ip, port),
                            origin: origin.clone(),
                            identity: None,
                            workload: None,
                        });
                    }
                }
            }
        }
        out
    }

    fn workload_endpoints(&self, ns: &str, selector: &BTreeMap<String, String>, sp: &ServicePort) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for (wname, w) in self.workloads.get(ns).into_iter().flatten() {
            if !meshgate_api::selector_matches(selector, &w.effective_labels()) {
                continue;
            }
            let port = match &sp.target_port {
                Some(IntOrString::Int(p)) => Some(*p),
                Some(IntOrString::String(named)) => w.spec.ports.get(named).copied(),
                None => Some(sp.port),
            };
            let (Some(port), Ok(ip)) = (port.and_then(|p| u16::try_from(p).ok()), w.spec.address.parse::<IpAddr>())
            else {
                continue;
            };
            let identity = match (w.spec.tls_mode, &w.spec.service_account) {
                (Some(meshgate_api::TlsMode::Mutual), Some(sa)) => {
                    Some(crate::settings::workload_id(&self.trust_domain, ns, sa))
                }
                _ => None,
            };
            out.push(Endpoint {
                addr: SocketAddr::new(ip, port),
                origin: format!("Workload {ns}/{wname}"),
                identity,
                workload: Some(Arc::new(crate::peer::Peer::new(ns, wname, &w.effective_labels()))),
            });
        }
        out
    }
}

fn group_prefix(group: &str) -> String {
    if group.is_empty() { String::new() } else { format!("{group}/") }
}

/// The upstream protocol a Service port asks for through `appProtocol`.
pub fn protocol_of(port: &ServicePort) -> UpstreamProtocol {
    match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c" | "h2c" | "grpc" | "http2") => UpstreamProtocol::H2c,
        _ => UpstreamProtocol::Http1,
    }
}
