//! Kubernetes Ingress (`networking.k8s.io/v1`), served through the Gateway API route model:
//! the Ingresses of meshgate's IngressClasses become one Gateway (`meshgate-system/meshgate-ingress`:
//! an HTTP listener on the ingress HTTP port, an HTTPS listener per TLS host on the HTTPS port),
//! the ReferenceGrants that let it read the Ingresses' TLS Secrets, and an HTTPRoute per Ingress
//! rule (and one for the default backend). The gateway compiler then serves them as it serves
//! any Gateway API resource; `meshgate migrate ingress` prints the same resources.
//!
//! Path types: `Exact` is Gateway API's Exact; `Prefix` is PathPrefix (both match whole path
//! elements); `ImplementationSpecific` is read as Prefix, as ingress-nginx reads it without
//! `use-regex`. A path that cannot be served (another type, no leading `/`, a resource backend,
//! a Service port name the Service does not have) is reported and left out; the rest is served.

use std::collections::BTreeMap;

use meshgate_api::{GATEWAY_GROUP, Kind, Object, ObjectRef, ResourceSet};
use serde_json::{Value, json};

use crate::status::{Condition, age, cond};

/// The controller meshgate answers to in `IngressClass.spec.controller`.
pub const INGRESS_CONTROLLER: &str = "meshgate.io/ingress-controller";
/// The namespace of the Gateway that serves Ingresses.
pub const INGRESS_NAMESPACE: &str = "meshgate-system";
/// Its name.
pub const INGRESS_GATEWAY: &str = "meshgate-ingress";
/// The annotation that makes an IngressClass the default.
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation older Ingresses name their class with.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

pub use crate::settings::IngressPorts;

/// Gateway API resources equivalent to the Ingresses meshgate serves.
#[derive(Debug, Default)]
pub struct Translation {
    /// The resources, as JSON objects, each with the file it comes from (an Ingress's).
    pub docs: Vec<(std::sync::Arc<str>, Value)>,
    /// Comments for `meshgate migrate`: per resource (index into `docs`), what did not carry over.
    pub comments: BTreeMap<usize, Vec<String>>,
    /// What could not be served, on the Ingress it concerns.
    pub conditions: Vec<Condition>,
    /// The Ingresses served.
    pub handled: Vec<ObjectRef>,
}

impl Translation {
    /// The resources as objects, to compile with the rest.
    pub fn objects(&self) -> Vec<Object> {
        let mut out = Vec::new();
        for (file, doc) in &self.docs {
            let loaded = meshgate_api::load_str(file, &doc.to_string());
            out.extend(loaded.objects);
        }
        out
    }
}

/// The IngressClasses of meshgate's controller: their names, and the default one's.
fn classes(set: &ResourceSet) -> (Vec<String>, Option<String>) {
    let mut ours = Vec::new();
    let mut default = None;
    for (o, c) in set.ingress_classes() {
        if c.spec.as_ref().and_then(|s| s.controller.as_deref()) != Some(INGRESS_CONTROLLER) {
            continue;
        }
        ours.push(o.id.name.to_string());
        let annotations = c.metadata.annotations.as_ref();
        if annotations.and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).is_some_and(|v| v == "true") {
            default = Some(o.id.name.to_string());
        }
    }
    (ours, default)
}

/// Whether meshgate serves `ingress`: its class (`spec.ingressClassName`, else the older
/// annotation) is one of meshgate's, or it names none and meshgate's class is the default.
fn served(
    o: &Object,
    ingress: &meshgate_api::core::Ingress,
    ours: &[String],
    default: Option<&str>,
) -> Result<(), String> {
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| ingress.metadata.annotations.as_ref().and_then(|a| a.get(CLASS_ANNOTATION)).cloned());
    match (named, default) {
        (Some(c), _) if ours.contains(&c) => Ok(()),
        (Some(c), _) => Err(format!("IngressClass {c:?} is not meshgate's (controller {INGRESS_CONTROLLER})")),
        (None, Some(_)) => Ok(()),
        (None, None) => Err(format!(
            "no IngressClass named and no default one of controller {INGRESS_CONTROLLER} (annotation {DEFAULT_CLASS_ANNOTATION}: \"true\")"
        )),
    }
    .map_err(|e| format!("{}: not served: {e}", o.id))
}

/// A backendRef for an Ingress backend, or why there is none.
fn backend_ref(
    set: &ResourceSet,
    ns: &str,
    b: &meshgate_api::core::IngressBackend,
) -> Result<Value, (&'static str, String)> {
    if let Some(r) = &b.resource {
        return Err((
            "InvalidKind",
            format!("resource backend {} {}: meshgate serves Service backends only", r.kind, r.name),
        ));
    }
    let Some(s) = &b.service else {
        return Err(("BackendNotFound", "backend names no Service".into()));
    };
    let port = s.port.as_ref();
    let number = match (port.and_then(|p| p.number), port.and_then(|p| p.name.as_deref())) {
        (Some(n), _) => n,
        (None, Some(name)) => {
            let svc = set.lookup(Kind::Service, ns, &s.name).map(|o| &o.resource);
            let found = match svc {
                Some(meshgate_api::Resource::Service(svc)) => svc
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(name)))
                    .map(|p| p.port),
                _ => None,
            };
            found.ok_or_else(|| ("BackendNotFound", format!("Service {ns}/{} has no port named {name:?}", s.name)))?
        }
        (None, None) => return Err(("BackendNotFound", format!("backend Service {}: no port", s.name))),
    };
    Ok(json!({"name": s.name, "port": number}))
}

/// The ingress-nginx annotations on `o`, each reported: meshgate does not apply them yet.
fn annotations(o: &Object, meta: &meshgate_api::core::ObjectMeta, conditions: &mut Vec<Condition>) -> Vec<String> {
    let mut notes = Vec::new();
    for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
        if let Some(name) = k.strip_prefix("nginx.ingress.kubernetes.io/") {
            let message =
                format!("annotation {k} is not applied: meshgate has no equivalent of ingress-nginx's {name:?} yet");
            conditions.push(cond(
                o,
                format!("metadata.annotations[{k}]"),
                "Accepted",
                false,
                "UnsupportedValue",
                message.clone(),
            ));
            notes.push(message);
        }
    }
    notes
}

/// The Gateway API resources for the Ingresses in `set` that meshgate serves.
pub fn translate(set: &ResourceSet, ports: IngressPorts) -> Translation {
    let mut t = Translation::default();
    let (ours, default) = classes(set);
    let mut ingresses: Vec<_> = set.ingresses().collect();
    if ingresses.is_empty() {
        return t;
    }
    ingresses.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    let mut listeners = vec![json!({
        "name": "http",
        "port": ports.http,
        "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]},
    })];
    // Secrets each namespace lets the Gateway read.
    let mut grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut tls_hosts: BTreeMap<String, String> = BTreeMap::new();
    let mut routes = Vec::new();
    for (o, ing) in ingresses {
        if let Err(message) = served(o, ing, &ours, default.as_deref()) {
            t.conditions.push(cond(o, "spec.ingressClassName".into(), "Accepted", false, "NotHandled", message));
            continue;
        }
        t.handled.push(o.id.clone());
        let ns = o.id.ns();
        let notes = annotations(o, &ing.metadata, &mut t.conditions);
        let Some(spec) = &ing.spec else { continue };
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let field = format!("spec.tls[{i}]");
            let Some(secret) = &tls.secret_name else {
                let message = "no secretName: TLS for these hosts needs a kubernetes.io/tls Secret".to_string();
                t.conditions.push(cond(o, field, "ResolvedRefs", false, "InvalidCertificateRef", message));
                continue;
            };
            let hosts: Vec<String> = tls.hosts.clone().unwrap_or_default();
            let hosts = if hosts.is_empty() { vec![String::new()] } else { hosts };
            for host in hosts {
                if let Some(owner) = tls_hosts.get(&host) {
                    let shown = if host.is_empty() { "<any>" } else { &host };
                    let message = format!("TLS host {shown} is already served with the Secret of {owner}");
                    t.conditions.push(cond(o, field.clone(), "Accepted", false, "HostnameConflict", message));
                    continue;
                }
                tls_hosts.insert(host.clone(), format!("{}", o.id));
                let mut l = json!({
                    "name": format!("https-{}", listeners.len()),
                    "port": ports.https,
                    "protocol": "HTTPS",
                    "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": secret, "namespace": ns}]},
                    "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]},
                });
                if !host.is_empty() {
                    l["hostname"] = json!(host);
                }
                listeners.push(l);
                let names = grants.entry(ns.to_string()).or_default();
                if !names.contains(secret) {
                    names.push(secret.clone());
                }
            }
        }
        let parent = json!([{"name": INGRESS_GATEWAY, "namespace": INGRESS_NAMESPACE}]);
        let mut route = |name: String, hostnames: Vec<String>, rules: Vec<Value>, field: String| {
            if rules.is_empty() {
                return;
            }
            let mut spec = json!({"parentRefs": parent, "rules": rules});
            if !hostnames.is_empty() {
                spec["hostnames"] = json!(hostnames);
            }
            let doc = json!({
                "apiVersion": format!("{GATEWAY_GROUP}/v1"),
                "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": ns, "labels": {"meshgate.io/ingress": o.id.name.to_string()}},
                "spec": spec,
            });
            routes.push((o.source.file.clone(), doc, notes.clone(), field));
        };
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let mut rules = Vec::new();
            for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                let kind = match p.path_type.as_str() {
                    "Exact" => "Exact",
                    "Prefix" | "ImplementationSpecific" => "PathPrefix",
                    other => {
                        let message =
                            format!("pathType {other:?} is not Exact, Prefix or ImplementationSpecific: not served");
                        t.conditions.push(cond(
                            o,
                            format!("{field}.pathType"),
                            "Accepted",
                            false,
                            "UnsupportedValue",
                            message,
                        ));
                        continue;
                    }
                };
                if !path.starts_with('/') {
                    let message = format!("path {path:?} does not start with /: not served");
                    t.conditions.push(cond(o, format!("{field}.path"), "Accepted", false, "UnsupportedValue", message));
                    continue;
                }
                match backend_ref(set, ns, &p.backend) {
                    Ok(b) => {
                        rules.push(json!({"matches": [{"path": {"type": kind, "value": path}}], "backendRefs": [b]}))
                    }
                    Err((reason, message)) => {
                        t.conditions.push(cond(o, format!("{field}.backend"), "ResolvedRefs", false, reason, message));
                    }
                }
            }
            let hostnames = rule.host.iter().cloned().collect();
            route(format!("{}-{i}", o.id.name), hostnames, rules, format!("spec.rules[{i}]"));
        }
        if let Some(b) = &spec.default_backend {
            match backend_ref(set, ns, b) {
                Ok(b) => route(
                    format!("{}-default", o.id.name),
                    Vec::new(),
                    vec![json!({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [b]})],
                    "spec.defaultBackend".into(),
                ),
                Err((reason, message)) => {
                    t.conditions.push(cond(o, "spec.defaultBackend".into(), "ResolvedRefs", false, reason, message));
                }
            }
        }
    }
    if t.handled.is_empty() {
        return t;
    }
    let gateway_file: std::sync::Arc<str> = "<ingress>".into();
    t.docs.push((
        gateway_file.clone(),
        json!({
            "apiVersion": format!("{GATEWAY_GROUP}/v1"),
            "kind": "Gateway",
            "metadata": {"name": INGRESS_GATEWAY, "namespace": INGRESS_NAMESPACE},
            "spec": {"gatewayClassName": crate::listeners::DEFAULT_CLASS, "listeners": listeners},
        }),
    ));
    for (ns, secrets) in grants {
        let to: Vec<Value> = secrets.iter().map(|s| json!({"group": "", "kind": "Secret", "name": s})).collect();
        t.docs.push((
            gateway_file.clone(),
            json!({
                "apiVersion": format!("{GATEWAY_GROUP}/v1beta1"),
                "kind": "ReferenceGrant",
                "metadata": {"name": INGRESS_GATEWAY, "namespace": ns},
                "spec": {"from": [{"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": INGRESS_NAMESPACE}], "to": to},
            }),
        ));
    }
    for (file, doc, notes, _) in routes {
        if !notes.is_empty() {
            t.comments.insert(t.docs.len(), notes);
        }
        t.docs.push((file, doc));
    }
    t
}

/// Ingress `status.loadBalancer` for the Ingresses served, with the gateway's `address`.
pub fn status(t: &Translation, address: Option<std::net::IpAddr>) -> Vec<crate::gwstatus::ResourceStatus> {
    let ingress: Vec<Value> = address.iter().map(|a| json!({"ip": a.to_string()})).collect();
    t.handled
        .iter()
        .map(|id| crate::gwstatus::ResourceStatus {
            object: id.clone(),
            status: if ingress.is_empty() {
                json!({"loadBalancer": {}})
            } else {
                json!({"loadBalancer": {"ingress": ingress}})
            },
        })
        .collect()
}
