//! `meshgate analyze`, after `istioctl analyze`: configuration that is valid resource by
//! resource but wrong together.

use std::collections::HashMap;

use meshgate_api::{Kind, Object, ResourceSet, TlsMode, selector_matches};
use meshgate_model::security::{Mode, WorkloadRef, compile_inbound};
use meshgate_model::settings::MeshSettings;
use meshgate_model::{Condition, compile_gateway};
use serde::Serialize;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `Error` or `Warning`.
    pub severity: &'static str,
    /// `Kind namespace/name`.
    pub object: String,
    /// Where it was read from.
    pub source: String,
    /// What is wrong.
    pub message: String,
}

fn finding(severity: &'static str, o: &Object, message: String) -> Finding {
    Finding { severity, object: o.id.to_string(), source: o.source.to_string(), message }
}

/// Analyzes a resource set (with the status conditions computed for it).
pub fn analyze(set: &ResourceSet, settings: &MeshSettings, conditions: &[Condition]) -> Vec<Finding> {
    let mut out = Vec::new();
    // 1. Dangling references and anything else the compiler reports.
    for c in conditions.iter().filter(|c| c.is_problem()) {
        out.push(Finding {
            severity: if c.severity == meshgate_model::Severity::Error { "Error" } else { "Warning" },
            object: c.object.to_string(),
            source: c.file.to_string(),
            message: format!(
                "{}{}={} ({}): {}",
                if c.field.is_empty() { String::new() } else { format!("{}: ", c.field) },
                c.kind,
                if c.status { "True" } else { "False" },
                c.reason,
                c.message
            ),
        });
    }
    // 2. Conflicting routes: the same match on the same listener from two routes.
    let compiled = compile_gateway(set);
    for (port, listeners) in &compiled.config.ports {
        for l in &listeners.listeners {
            let mut seen: HashMap<String, String> = HashMap::new();
            for e in &l.routes.entries {
                let key = format!(
                    "{}|{}",
                    serde_json::to_string(&e.hostnames).unwrap_or_default(),
                    serde_json::to_string(&e.matcher).unwrap_or_default()
                );
                let who = format!("HTTPRoute {} rule {}", e.rule.route, e.rule.index);
                match seen.get(&key) {
                    Some(first) if !first.starts_with(&format!("HTTPRoute {} ", e.rule.route)) => {
                        if let Some((ns, name)) = e.rule.route.split_once('/')
                            && let Some(o) = set.lookup(Kind::HttpRoute, ns, name)
                        {
                            out.push(finding(
                                    "Warning",
                                    o,
                                    format!(
                                        "{who} has the same match as {first} on Gateway {} listener {:?} (port {port}); {first} wins",
                                        l.gateway, l.name
                                    ),
                                ));
                        }
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(key, who);
                    }
                }
            }
        }
    }
    // 3. Listeners no route can attach to, ReferenceGrants that grant nothing, hostnames an
    // Ingress and a Gateway API route both claim.
    listeners_nobody_attaches_to(set, &compiled, &mut out);
    grants_that_grant_nothing(set, &mut out);
    hosts_claimed_twice(set, &mut out);
    // 4. Services without endpoints.
    let slices: Vec<(&str, &str)> = set
        .endpoint_slices()
        .filter(|(_, s)| s.endpoints.as_ref().is_some_and(|e| !e.is_empty()))
        .filter_map(|(o, s)| {
            s.metadata
                .labels
                .as_ref()?
                .get(meshgate_model::resolve::SERVICE_NAME_LABEL)
                .map(|n| (o.id.ns(), n.as_str()))
        })
        .collect();
    for (o, svc) in set.services() {
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let selector = spec.and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty());
        let by_workload = selector.is_some_and(|sel| {
            set.workloads().any(|(wo, w)| wo.id.ns() == o.id.ns() && selector_matches(sel, &w.effective_labels()))
        });
        let by_slice = slices.contains(&(o.id.ns(), o.id.name.as_ref()));
        if !by_workload && !by_slice {
            out.push(finding(
                "Warning",
                o,
                "the Service has no endpoints (no EndpointSlice, no selected Workload)".into(),
            ));
        }
    }
    // 5. STRICT mTLS towards workloads without a proxy.
    for (o, w) in set.workloads() {
        let labels = w.effective_labels();
        let policy = compile_inbound(set, settings, &WorkloadRef { namespace: o.id.ns(), labels });
        if w.spec.tls_mode != Some(TlsMode::Mutual) && policy.mode == Mode::Strict {
            out.push(finding(
                "Warning",
                o,
                "mTLS is STRICT for this workload but it has no meshgate proxy (tlsMode is not Mutual): nothing will accept mTLS for it".into(),
            ));
        }
    }
    // 6. Policies that match nothing.
    let root = settings.root_namespace.as_str();
    let selects_any = |ns: &str, sel: &std::collections::BTreeMap<String, String>| {
        set.workloads().any(|(wo, w)| (ns == root || wo.id.ns() == ns) && selector_matches(sel, &w.effective_labels()))
    };
    for (o, a) in set.authorization_policies() {
        if let Some(sel) = &a.spec.selector
            && !selects_any(o.id.ns(), &sel.match_labels)
        {
            out.push(finding("Warning", o, "the selector matches no workload".into()));
        }
    }
    for (o, p) in set.peer_authentications() {
        if let Some(sel) = &p.spec.selector
            && !selects_any(o.id.ns(), &sel.match_labels)
        {
            out.push(finding("Warning", o, "the selector matches no workload".into()));
        }
    }
    let extension_used =
        |o: &meshgate_api::Object, kind: &str| {
            set.http_routes().any(|(ro, r)| {
                ro.id.ns() == o.id.ns()
                    && r.spec.rules.iter().flatten().flat_map(|rule| rule.filters.iter().flatten()).any(|f| {
                        f.extension_ref.as_ref().is_some_and(|e| e.kind == kind && e.name == o.id.name.as_ref())
                    })
            })
        };
    let extensions = set.fault_injections().map(|(o, _)| (o, "FaultInjection"));
    for (o, kind) in extensions.chain(set.http_route_filters().map(|(o, _)| (o, "HTTPRouteFilter"))) {
        if !extension_used(o, kind) {
            out.push(finding("Warning", o, format!("no HTTPRoute rule refers to this {kind}")));
        }
    }
    out
}

/// Listeners of meshgate's Gateways that admit no route at all: no route kind they can carry,
/// or an `allowedRoutes` selector no namespace matches.
fn listeners_nobody_attaches_to(set: &ResourceSet, compiled: &meshgate_model::Compiled, out: &mut Vec<Finding>) {
    let namespaces = meshgate_model::namespace_labels(set);
    for s in compiled.status.iter().filter(|s| s.object.kind == Kind::Gateway) {
        let Some(o) = set.get(&s.object) else { continue };
        let meshgate_api::Resource::Gateway(gw) = &o.resource else { continue };
        for (i, l) in s.status["listeners"].as_array().into_iter().flatten().enumerate() {
            let name = l["name"].as_str().unwrap_or("?");
            if l["supportedKinds"].as_array().is_some_and(Vec::is_empty) {
                out.push(finding(
                    "Warning",
                    o,
                    format!("listener {name:?} can carry no route kind: no route can attach to it"),
                ));
                continue;
            }
            let selector =
                gw.spec.listeners.get(i).and_then(|l| l.allowed_routes.as_ref()).and_then(|a| a.namespaces.as_ref());
            if let Some(ns) = selector
                && ns.from.as_ref().is_some_and(|f| format!("{f:?}") == "Selector")
                && let Some(labels) = ns.selector.as_ref().and_then(|s| s.match_labels.as_ref())
                && !namespaces.values().any(|n| labels.iter().all(|(k, v)| n.get(k) == Some(v)))
            {
                out.push(finding(
                    "Warning",
                    o,
                    format!(
                        "listener {name:?}: its allowedRoutes selector matches no Namespace: no route can attach to it"
                    ),
                ));
            }
        }
    }
}

/// ReferenceGrants no reference needs: no route (of a `from` kind, in a `from` namespace) points
/// at a `to` of theirs, and no Gateway reads a Secret of theirs.
fn grants_that_grant_nothing(set: &ResourceSet, out: &mut Vec<Finding>) {
    // (from kind, from namespace, to kind, to namespace, to name) of every cross-namespace reference.
    let mut refs: Vec<(String, String, String, String, String)> = Vec::new();
    for o in set.iter() {
        let ns = o.id.ns();
        let mut push = |kind: &str, to_kind: &str, to_ns: Option<&str>, name: &str| {
            if let Some(to_ns) = to_ns.filter(|t| *t != ns) {
                refs.push((kind.into(), ns.into(), to_kind.into(), to_ns.into(), name.into()));
            }
        };
        match &o.resource {
            meshgate_api::Resource::HttpRoute(r) => {
                for b in r.spec.rules.iter().flatten().flat_map(|r| r.backend_refs.iter().flatten()) {
                    push("HTTPRoute", b.kind.as_deref().unwrap_or("Service"), b.namespace.as_deref(), &b.name);
                }
            }
            meshgate_api::Resource::GrpcRoute(r) => {
                for b in r.spec.rules.iter().flatten().flat_map(|r| r.backend_refs.iter().flatten()) {
                    push("GRPCRoute", b.kind.as_deref().unwrap_or("Service"), b.namespace.as_deref(), &b.name);
                }
            }
            meshgate_api::Resource::TlsRoute(r) => {
                for b in r.spec.rules.iter().flat_map(|r| r.backend_refs.iter()) {
                    push("TLSRoute", b.kind.as_deref().unwrap_or("Service"), b.namespace.as_deref(), &b.name);
                }
            }
            meshgate_api::Resource::TcpRoute(r) => {
                for b in r.spec.rules.iter().flat_map(|r| r.backend_refs.iter()) {
                    push("TCPRoute", b.kind.as_deref().unwrap_or("Service"), b.namespace.as_deref(), &b.name);
                }
            }
            meshgate_api::Resource::Gateway(g) => {
                for l in &g.spec.listeners {
                    for c in l.tls.as_ref().and_then(|t| t.certificate_refs.as_ref()).into_iter().flatten() {
                        push("Gateway", c.kind.as_deref().unwrap_or("Secret"), c.namespace.as_deref(), &c.name);
                    }
                }
            }
            _ => {}
        }
    }
    for (o, g) in set.reference_grants() {
        let used = refs.iter().any(|(fk, fns, tk, tns, tname)| {
            tns == o.id.ns()
                && g.spec.from.iter().any(|f| &f.kind == fk && &f.namespace == fns)
                && g.spec.to.iter().any(|t| &t.kind == tk && t.name.as_ref().is_none_or(|n| n == tname))
        });
        if !used {
            out.push(finding("Warning", o, "no reference needs this ReferenceGrant: it grants nothing in use".into()));
        }
    }
}

/// Hostnames an Ingress of meshgate's and an HTTPRoute of a Gateway both serve: which answers
/// depends on ports and precedence, rarely what either owner meant.
fn hosts_claimed_twice(set: &ResourceSet, out: &mut Vec<Finding>) {
    let translation = meshgate_model::ingress::translate(set, &Default::default());
    let served: Vec<&meshgate_api::ObjectRef> = translation.handled.iter().collect();
    for (o, ing) in set.ingresses().filter(|(o, _)| served.contains(&&o.id)) {
        for host in ing.spec.iter().flat_map(|s| s.rules.iter().flatten()).filter_map(|r| r.host.as_deref()) {
            for (ro, r) in set.http_routes() {
                if r.spec.hostnames.iter().flatten().any(|h| h == host) {
                    out.push(finding(
                        "Warning",
                        o,
                        format!("host {host} is served by this Ingress and by {}: which one answers depends on the port and route precedence", ro.id),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(yaml: &str) -> Vec<String> {
        let loaded = meshgate_api::load_str(&"t.yaml".into(), yaml);
        assert!(loaded.errors.is_empty(), "{}", loaded.errors);
        let set = ResourceSet::from_objects(loaded.objects).0;
        let settings = meshgate_model::settings::mesh_settings(&set);
        analyze(&set, &settings, &[]).into_iter().map(|f| format!("{}: {}", f.object, f.message)).collect()
    }

    #[test]
    fn listeners_grants_and_hosts() {
        let out = findings(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: kinds, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: TCPRoute}]}}
  - {name: nobody, port: 81, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: ghost}}}}}
  - {name: fine, port: 82, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: infra}}}}}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: unused, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service, name: api}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: used, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service, name: web}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: fine}]
  hostnames: [shop.example.com]
  rules: [{backendRefs: [{name: web, namespace: apps, port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: meshgate, annotations: {ingressclass.kubernetes.io/is-default-class: "true"}}
spec: {controller: meshgate.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: apps}
spec:
  rules: [{host: shop.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
"#,
        );
        let has = |what: &str| out.iter().any(|f| f.contains(what));
        assert!(has("Gateway infra/gw: listener \"kinds\" can carry no route kind"), "{out:#?}");
        assert!(
            has("Gateway infra/gw: listener \"nobody\": its allowedRoutes selector matches no Namespace"),
            "{out:#?}"
        );
        assert!(!has("listener \"fine\""), "{out:#?}");
        assert!(has("ReferenceGrant apps/unused: no reference needs this ReferenceGrant"), "{out:#?}");
        assert!(!has("ReferenceGrant apps/used"), "{out:#?}");
        assert!(
            has("Ingress apps/shop: host shop.example.com is served by this Ingress and by HTTPRoute infra/r"),
            "{out:#?}"
        );
    }
}
