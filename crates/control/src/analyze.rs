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
    // 3. Services without endpoints.
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
    // 4. STRICT mTLS towards workloads without a proxy.
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
    // 5. Policies that match nothing.
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
    for (o, _) in set.fault_injections() {
        let used = set.http_routes().any(|(ro, r)| {
            ro.id.ns() == o.id.ns()
                && r.spec.rules.iter().flatten().flat_map(|rule| rule.filters.iter().flatten()).any(|f| {
                    f.extension_ref.as_ref().is_some_and(|e| e.kind == "FaultInjection" && e.name == o.id.name.as_ref())
                })
        });
        if !used {
            out.push(finding("Warning", o, "no HTTPRoute rule refers to this FaultInjection".into()));
        }
    }
    out
}
