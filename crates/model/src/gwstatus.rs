//! Gateway API status as the spec writes it, from the gateway compiler's conditions and the
//! routes each listener took: `status` of every GatewayClass of meshgate's controller, every
//! Gateway of such a class (conditions, listeners with `supportedKinds` and `attachedRoutes`,
//! addresses) and every route with a parent meshgate answers for (`parents`, one entry per
//! parentRef, with `controllerName`). Resources of other controllers get none: their status is
//! not ours to write. [`stamp`] adds each condition's `lastTransitionTime` against the status
//! written before, so a condition that did not change keeps its time.

use std::collections::HashMap;

use meshgate_api::gw::gateways::GatewayListeners;
use meshgate_api::{GATEWAY_GROUP, Kind, Object, ObjectRef, Resource, ResourceSet};
use serde_json::{Map, Value, json};

use crate::listeners::{CONTROLLER_NAME, DEFAULT_CLASS};
use crate::status::Condition;

/// The status of one resource, as its `status` field.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStatus {
    /// The resource.
    pub object: ObjectRef,
    /// Its `status` (conditions without `lastTransitionTime` until [`stamp`] adds it).
    pub status: Value,
}

/// One condition as the spec writes it.
fn condition(kind: &str, status: bool, reason: &str, message: &str, generation: Option<i64>) -> Value {
    let mut c = json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

fn generation(o: &Object) -> Option<i64> {
    o.resource.metadata().generation
}

/// Whether a condition's field is `prefix` or inside it (`spec.listeners[1]` is inside
/// `spec.listeners[1]` and `spec.listeners[1].tls`, not `spec.listeners[10]`).
fn within(field: &str, prefix: &str) -> bool {
    field.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Whether meshgate serves Gateways of class `name` (declared with its controller, or its
/// default class undeclared).
fn ours(set: &ResourceSet, name: &str) -> bool {
    match set.lookup(Kind::GatewayClass, "", name).map(|o| &o.resource) {
        Some(Resource::GatewayClass(c)) => c.spec.controller_name == CONTROLLER_NAME,
        _ => name == DEFAULT_CLASS,
    }
}

/// The route kinds a listener of `protocol` carries.
fn kinds_for(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        _ => &[],
    }
}

/// A listener's `supportedKinds`, and the kinds of its `allowedRoutes` it cannot carry.
fn supported_kinds(l: &GatewayListeners) -> (Vec<Value>, Vec<String>) {
    let carried = kinds_for(&l.protocol);
    let asked = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty());
    let Some(asked) = asked else {
        return (carried.iter().map(|k| json!({"group": GATEWAY_GROUP, "kind": k})).collect(), Vec::new());
    };
    let mut kinds = Vec::new();
    let mut invalid = Vec::new();
    for k in asked {
        let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
        if group == GATEWAY_GROUP && carried.contains(&k.kind.as_str()) {
            kinds.push(json!({"group": group, "kind": k.kind}));
        } else {
            invalid.push(format!("{group}/{}", k.kind));
        }
    }
    (kinds, invalid)
}

/// The name of another TLS-terminating listener on the port of `listeners[i]` whose hostname
/// overlaps its own (one matches names the other does), if any: HTTP/2 connection reuse can then
/// carry requests for one to the other (the spec's `OverlappingTLSConfig`).
fn overlapping(listeners: &[GatewayListeners], i: usize) -> Option<&str> {
    let tls = |l: &GatewayListeners| matches!(l.protocol.as_str(), "HTTPS" | "TLS");
    let me = &listeners[i];
    let mine = crate::host::HostPattern::parse(me.hostname.as_deref()?);
    if !tls(me) {
        return None;
    }
    listeners.iter().enumerate().find_map(|(j, l)| {
        let theirs = crate::host::HostPattern::parse(l.hostname.as_deref()?);
        (j != i && tls(l) && l.port == me.port && crate::host::HostPattern::intersect(&mine, &theirs).is_some())
            .then_some(l.name.as_str())
    })
}

/// The first problem among `conds` of type `kind`, as (reason, message).
fn problem<'a>(conds: &[&'a Condition], kind: &str) -> Option<(&'a str, &'a str)> {
    conds.iter().find(|c| c.kind == kind && c.is_problem()).map(|c| (c.reason, c.message.as_str()))
}

/// The status of every resource meshgate answers for in `set`, from the compiler's
/// `conditions` and `attached` (routes per placed listener: Gateway, listener index).
pub(crate) fn of(
    set: &ResourceSet,
    conditions: &[Condition],
    attached: &HashMap<(ObjectRef, usize), (u32, bool)>,
) -> Vec<ResourceStatus> {
    let mut by_object: HashMap<&ObjectRef, Vec<&Condition>> = HashMap::new();
    for c in conditions {
        by_object.entry(&c.object).or_default().push(c);
    }
    let none = Vec::new();
    let conds_of = |o: &Object| by_object.get(&o.id).unwrap_or(&none);
    let mut out = Vec::new();

    for o in set.of_kind(Kind::GatewayClass) {
        let Resource::GatewayClass(c) = &o.resource else { continue };
        if c.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let g = generation(o);
        let accepted = match &c.spec.parameters_ref {
            Some(p) => condition(
                "Accepted",
                false,
                "InvalidParameters",
                &format!(
                    "parametersRef {}/{} {}: meshgate takes no parameters; remove spec.parametersRef",
                    p.group, p.kind, p.name
                ),
                g,
            ),
            None => condition("Accepted", true, "Accepted", "handled by meshgate", g),
        };
        let version = condition(
            "SupportedVersion",
            true,
            "SupportedVersion",
            "the Gateway API version of these resources is supported",
            g,
        );
        out.push(ResourceStatus { object: o.id.clone(), status: json!({ "conditions": [accepted, version] }) });
    }

    for (o, gw) in set.gateways() {
        if !ours(set, &gw.spec.gateway_class_name) {
            continue;
        }
        let g = generation(o);
        let conds = conds_of(o);
        let gateway_level: Vec<&Condition> =
            conds.iter().copied().filter(|c| !c.field.starts_with("spec.listeners")).collect();
        let mut listeners = Vec::new();
        let (mut programmed, mut invalid) = (0, 0);
        for (i, l) in gw.spec.listeners.iter().enumerate() {
            let prefix = format!("spec.listeners[{i}]");
            let mine: Vec<&Condition> = conds.iter().copied().filter(|c| within(&c.field, &prefix)).collect();
            let (kinds, invalid_kinds) = supported_kinds(l);
            let placed = attached.get(&(o.id.clone(), i));
            let conflicted = mine.iter().find(|c| c.kind == "Conflicted" && c.status);
            let unsupported = kinds_for(&l.protocol).is_empty();
            let accepted = match (problem(&mine, "Accepted"), unsupported) {
                (_, true) => condition(
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    &format!("protocol {} is not served; HTTP, HTTPS, TLS and TCP listeners are", l.protocol),
                    g,
                ),
                (Some((reason, message)), false) => condition("Accepted", false, reason, message, g),
                (None, false) => condition("Accepted", true, "Accepted", "listener accepted", g),
            };
            let resolved = match (problem(&mine, "ResolvedRefs"), invalid_kinds.is_empty()) {
                (Some((reason, message)), _) => condition("ResolvedRefs", false, reason, message, g),
                (None, false) => condition(
                    "ResolvedRefs",
                    false,
                    "InvalidRouteKinds",
                    &format!(
                        "allowedRoutes.kinds: {} cannot attach to a {} listener",
                        invalid_kinds.join(", "),
                        l.protocol
                    ),
                    g,
                ),
                (None, true) => condition("ResolvedRefs", true, "ResolvedRefs", "all references resolved", g),
            };
            let conflict = match conflicted {
                Some(c) => condition("Conflicted", true, c.reason, &c.message, g),
                None => condition("Conflicted", false, "NoConflicts", "no conflict", g),
            };
            let programmed_cond = match placed.filter(|(_, programmed)| *programmed) {
                Some(_) => {
                    programmed += 1;
                    condition("Programmed", true, "Programmed", "listener served", g)
                }
                None => {
                    let why = conflicted
                        .map(|c| c.message.as_str())
                        .or_else(|| mine.iter().find(|c| c.is_problem()).map(|c| c.message.as_str()))
                        .unwrap_or("listener not served");
                    condition("Programmed", false, "Invalid", why, g)
                }
            };
            if placed.is_none_or(|(_, programmed)| !programmed) || !invalid_kinds.is_empty() {
                invalid += 1;
            }
            let mut conditions = vec![accepted, programmed_cond, resolved, conflict];
            if let Some(other) = overlapping(&gw.spec.listeners, i) {
                conditions.push(condition(
                    "OverlappingTLSConfig",
                    true,
                    "OverlappingHostnames",
                    &format!("hostname overlaps listener {other:?} on the same port: a client may reuse a connection across them"),
                    g,
                ));
            }
            listeners.push(json!({
                "name": l.name,
                "supportedKinds": kinds,
                "attachedRoutes": placed.map_or(0, |(n, _)| *n),
                "conditions": conditions,
            }));
        }
        let accepted = match problem(&gateway_level, "Accepted") {
            Some((reason, message)) => condition("Accepted", false, reason, message, g),
            None if invalid > 0 && programmed == 0 => {
                condition("Accepted", false, "ListenersNotValid", "no listener of this Gateway can be served", g)
            }
            None if invalid > 0 => condition(
                "Accepted",
                true,
                "ListenersNotValid",
                &format!("{invalid} listener(s) not valid; the others are served"),
                g,
            ),
            None => condition("Accepted", true, "Accepted", "handled by meshgate", g),
        };
        let programmed = if programmed > 0 || gw.spec.listeners.is_empty() {
            condition("Programmed", true, "Programmed", &format!("{programmed} listener(s) served"), g)
        } else {
            condition("Programmed", false, "Invalid", "no listener is served", g)
        };
        let addresses: Vec<Value> = gw
            .spec
            .addresses
            .iter()
            .flatten()
            .filter_map(|a| {
                let value = a.value.as_deref()?;
                Some(json!({"type": a.r#type.as_deref().unwrap_or("IPAddress"), "value": value}))
            })
            .collect();
        let mut status = Map::new();
        if !addresses.is_empty() {
            status.insert("addresses".into(), Value::Array(addresses));
        }
        status.insert("conditions".into(), json!([accepted, programmed]));
        status.insert("listeners".into(), Value::Array(listeners));
        out.push(ResourceStatus { object: o.id.clone(), status: Value::Object(status) });
    }

    for o in set.iter() {
        let parents = match &o.resource {
            Resource::HttpRoute(r) => crate::attach::parent_refs!(r.spec.parent_refs),
            Resource::GrpcRoute(r) => crate::attach::parent_refs!(r.spec.parent_refs),
            Resource::TlsRoute(r) => crate::attach::parent_refs!(r.spec.parent_refs),
            Resource::TcpRoute(r) => crate::attach::parent_refs!(r.spec.parent_refs),
            _ => continue,
        };
        let parents: Vec<crate::attach::ParentRef<'_>> = parents;
        let g = generation(o);
        let conds = conds_of(o);
        let route_level: Vec<&Condition> =
            conds.iter().copied().filter(|c| !c.field.starts_with("spec.parentRefs[")).collect();
        let resolved =
            match route_level.iter().filter(|c| c.kind == "ResolvedRefs" && c.is_problem()).collect::<Vec<_>>() {
                bad if bad.is_empty() => condition("ResolvedRefs", true, "ResolvedRefs", "all references resolved", g),
                bad => {
                    let message: Vec<String> = bad.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
                    condition("ResolvedRefs", false, bad[0].reason, &message.join("; "), g)
                }
            };
        let refused = problem(&route_level, "Accepted");
        let mut entries = Vec::new();
        for (j, p) in parents.iter().enumerate() {
            let ns = p.namespace.unwrap_or(o.id.ns());
            let accepted = if p.group.is_empty() && p.kind == "Service" {
                match set.lookup(Kind::Service, ns, p.name) {
                    Some(_) => condition(
                        "Accepted",
                        true,
                        "Accepted",
                        &format!("attached to Service {ns}/{}: the sidecars of its callers serve it", p.name),
                        g,
                    ),
                    None => condition(
                        "Accepted",
                        false,
                        "NoMatchingParent",
                        &format!("Service {ns}/{} not found", p.name),
                        g,
                    ),
                }
            } else {
                if p.group == GATEWAY_GROUP
                    && p.kind == "Gateway"
                    && let Some(Resource::Gateway(gw)) = set.lookup(Kind::Gateway, ns, p.name).map(|o| &o.resource)
                    && !ours(set, &gw.spec.gateway_class_name)
                {
                    continue; // Another controller's Gateway: its status is theirs to write.
                }
                let field = format!("spec.parentRefs[{j}]");
                match (refused, conds.iter().find(|c| c.kind == "Accepted" && c.field == field)) {
                    (Some((reason, message)), _) => condition("Accepted", false, reason, message, g),
                    (None, Some(c)) => condition("Accepted", c.status, c.reason, &c.message, g),
                    (None, None) => condition("Accepted", false, "NoMatchingParent", "not attached", g),
                }
            };
            let mut parent_ref = json!({"group": p.group, "kind": p.kind, "name": p.name});
            if let Some(n) = p.namespace {
                parent_ref["namespace"] = json!(n);
            }
            if let Some(s) = p.section_name {
                parent_ref["sectionName"] = json!(s);
            }
            if let Some(port) = p.port {
                parent_ref["port"] = json!(port);
            }
            entries.push(json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": [accepted, resolved.clone()],
            }));
        }
        if !entries.is_empty() {
            out.push(ResourceStatus { object: o.id.clone(), status: json!({ "parents": entries }) });
        }
    }
    out
}

/// Adds `lastTransitionTime` to every condition of `status`: the time `previous` (the status
/// written before) gave the same condition when its status is unchanged, else `now` (RFC 3339).
/// Listeners are matched by name, route parents by parentRef.
pub fn stamp(status: &mut Value, previous: Option<&Value>, now: &str) {
    stamp_conditions(status, previous, now);
    for (list, key) in [("listeners", "name"), ("parents", "parentRef")] {
        let Some(items) = status.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for item in items {
            let before = previous
                .and_then(|p| p.get(list))
                .and_then(Value::as_array)
                .and_then(|old| old.iter().find(|o| o.get(key) == item.get(key)));
            stamp_conditions(item, before, now);
        }
    }
}

fn stamp_conditions(holder: &mut Value, previous: Option<&Value>, now: &str) {
    let Some(conds) = holder.get_mut("conditions").and_then(Value::as_array_mut) else { return };
    let old = previous.and_then(|p| p.get("conditions")).and_then(Value::as_array);
    for c in conds {
        let kept = old
            .into_iter()
            .flatten()
            .find(|o| o.get("type") == c.get("type") && o.get("status") == c.get("status"))
            .and_then(|o| o.get("lastTransitionTime"))
            .cloned();
        c["lastTransitionTime"] = kept.unwrap_or_else(|| json!(now));
    }
}

/// The status of `id` in `all`.
pub fn find<'a>(all: &'a [ResourceStatus], id: &ObjectRef) -> Option<&'a Value> {
    all.iter().find(|s| &s.object == id).map(|s| &s.status)
}
