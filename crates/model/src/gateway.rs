//! The gateway compiler: Gateways, their routes, Services and friends in; per-port listener
//! sets with sorted route tables and status conditions out. Listener placement
//! (`crate::listeners`) comes first, then one attachment step per route kind
//! (`crate::attach`), each route compiled once for every listener it attaches to
//! (`crate::route`).

use std::collections::{BTreeMap, HashMap};

use meshgate_api::{ObjectRef, ResourceSet};

use crate::attach::{RouteRef, attach, parent_refs};
use crate::certs::CompileInputs;
use crate::config::{Compiled, ProxyConfig};
use crate::host::HostPattern;
use crate::listeners::{NamespaceLabels, place};
use crate::resolve::Discovery;
use crate::route::CompiledRoute;
use crate::status::{Condition, age, cond, report_refs};
use crate::table::{Entry, Listener, ListenerSet, RouteTable};

/// Compiles the gateway view of `set`, as a first load would (no certificate from before).
pub fn compile_gateway(set: &ResourceSet) -> Compiled {
    compile_gateway_with(set, &crate::certs::fresh())
}

/// Compiles the gateway view of `set` over the configuration in force (`inputs`); Ingresses
/// of meshgate's classes are served as the Gateway API resources `crate::ingress` makes of them.
pub fn compile_gateway_with(set: &ResourceSet, inputs: &CompileInputs<'_>) -> Compiled {
    let mut compiled = compile_with_ingresses(set, inputs);
    // A Gateway that asks for no address gets those this gateway is reached on, when known.
    let addresses = &inputs.ingress.addresses;
    if !addresses.is_empty() {
        let list: Vec<serde_json::Value> =
            addresses.iter().map(|a| serde_json::json!({"type": "IPAddress", "value": a.to_string()})).collect();
        for s in compiled.status.iter_mut().filter(|s| s.object.kind == meshgate_api::Kind::Gateway) {
            if let Some(status) = s.status.as_object_mut() {
                status.entry("addresses").or_insert_with(|| serde_json::Value::Array(list.clone()));
            }
        }
    }
    compiled
}

fn compile_with_ingresses(set: &ResourceSet, inputs: &CompileInputs<'_>) -> Compiled {
    let translation = crate::ingress::translate(set, &inputs.ingress);
    if translation.docs.is_empty() && translation.conditions.is_empty() {
        return compile_set(set, inputs);
    }
    let mut objects: Vec<meshgate_api::Object> = set.iter().cloned().collect();
    objects.extend(translation.objects());
    let (with, duplicates) = ResourceSet::from_objects(objects);
    let mut compiled = compile_set(&with, inputs);
    // What the Ingresses became is reported on the Ingresses, not on resources nobody wrote.
    let synthetic = |id: &ObjectRef| set.get(id).is_none();
    let owner = |id: &ObjectRef| -> Option<ObjectRef> {
        let o = with.get(id)?;
        let name = o.resource.metadata().labels.as_ref()?.get("meshgate.io/ingress")?;
        Some(ObjectRef::namespaced(meshgate_api::Kind::Ingress, id.ns(), name))
    };
    for c in &mut compiled.conditions {
        if synthetic(&c.object)
            && let Some(ingress) = owner(&c.object)
        {
            c.message = format!("(as {} {}) {}", c.object.kind, c.object.name, c.message);
            c.object = ingress;
        }
    }
    compiled.status.retain(|s| !synthetic(&s.object));
    compiled.status.extend(crate::ingress::status(&translation, &inputs.ingress.addresses));
    compiled.conditions.extend(translation.conditions);
    for e in duplicates.iter() {
        if let Some(id) = &e.object {
            compiled.conditions.push(Condition {
                object: id.clone(),
                file: e.file.clone(),
                field: String::new(),
                kind: "Accepted",
                status: false,
                reason: "Conflicted",
                message: format!("{}: an Ingress is served as a resource of this name too", e.message),
                severity: crate::status::Severity::Error,
            });
        }
    }
    compiled
}

fn compile_set(set: &ResourceSet, inputs: &CompileInputs<'_>) -> Compiled {
    let mut disc = Discovery::new(set);
    let mut conditions = Vec::new();
    let ns_labels: NamespaceLabels<'_> = crate::listeners::namespace_labels(set);
    let placement = place(set, &disc, inputs, &mut conditions);
    let mut entries: Vec<Vec<Entry>> = placement.placed.iter().map(|_| Vec::new()).collect();

    // HTTPRoutes and GRPCRoutes (served as the HTTP/2 requests they are), oldest first of
    // each kind, into the same route tables.
    let mut routes: Vec<_> = set.http_routes().collect();
    routes.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    let mut grpc: Vec<_> = set.grpc_routes().collect();
    grpc.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    let mut compiled = Vec::new();
    for (o, route) in routes {
        let mut unresolved: Vec<(String, &'static str, String)> = Vec::new();
        let c = CompiledRoute::new(o, route, &disc, &mut unresolved);
        let r = RouteRef {
            object: o,
            kind: "HTTPRoute",
            protocols: &["HTTP", "HTTPS"],
            parents: parent_refs!(route.spec.parent_refs),
            hostnames: route.spec.hostnames.iter().flatten().map(|h| HostPattern::parse(h)).collect(),
        };
        compiled.push((c, r, unresolved));
    }
    for (o, route) in grpc {
        let http = match crate::grpc::as_http_route(route) {
            Ok(h) => h,
            Err((field, message)) => {
                conditions.push(cond(o, field, "Accepted", false, "UnsupportedValue", message));
                continue;
            }
        };
        let mut unresolved: Vec<(String, &'static str, String)> = Vec::new();
        let c = disc.over_h2c(|| CompiledRoute::of_kind(o, "GRPCRoute", &http, &disc, &mut unresolved));
        let r = RouteRef {
            object: o,
            kind: "GRPCRoute",
            protocols: &["HTTP", "HTTPS"],
            parents: parent_refs!(route.spec.parent_refs),
            hostnames: route.spec.hostnames.iter().flatten().map(|h| HostPattern::parse(h)).collect(),
        };
        compiled.push((c, r, unresolved));
    }
    for (c, r, unresolved) in compiled {
        for (slot, hostnames) in attach(set, &placement, &r, &ns_labels, &mut conditions) {
            entries[slot].extend(c.entries(&hostnames));
        }
        report_refs(r.object, unresolved, &mut conditions);
    }

    let mut port_settings = crate::listener_policy::port_settings(set, &placement, &mut conditions);
    let l4 = crate::l4::attach_l4(set, &disc, &placement, &ns_labels, &mut conditions);
    let attached: HashMap<(ObjectRef, usize), (u32, bool)> = placement
        .placed
        .iter()
        .zip(&placement.attached)
        .map(|(p, n)| ((p.object.id.clone(), p.index), (n.get(), p.programmed)))
        .collect();
    let mut ports: BTreeMap<u16, Vec<Listener>> = BTreeMap::new();
    for ((p, entries), l4) in placement.placed.into_iter().zip(entries).zip(l4) {
        let Ok(port) = u16::try_from(p.listener.port) else { continue };
        if !p.programmed {
            continue;
        }
        ports.entry(port).or_default().push(Listener {
            gateway: p.gateway,
            name: p.listener.name.clone(),
            hostname: p.hostname,
            routes: RouteTable::new(entries),
            tls: p.tls,
            protocol: p.protocol,
            l4: crate::table::L4Table { routes: l4 },
        });
    }
    conditions.append(&mut disc.policy_conditions);
    let settings = crate::settings::mesh_settings(set);
    let config = ProxyConfig {
        ports: ports
            .into_iter()
            .map(|(k, v)| {
                let mut set = ListenerSet::new(v);
                set.settings = port_settings.remove(&k).unwrap_or_default();
                (k, set)
            })
            .collect(),
        backends: disc.into_backends(),
        mesh: None,
        downstream: settings.downstream,
        telemetry: settings.telemetry,
    };
    let status = crate::gwstatus::of(set, &conditions, &attached);
    Compiled { config, conditions, status }
}

#[cfg(test)]
mod tests;
