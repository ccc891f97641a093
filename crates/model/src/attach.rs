//! Route attachment, the second step of the gateway compiler, one call per route: each
//! `parentRef` of the route is resolved to the placed listeners it names (by Gateway,
//! `sectionName` and `port`), each listener is checked for whether it admits the route
//! (`allowedRoutes` kinds and namespaces) and for a hostname the two share; the route's
//! `Accepted` condition per parent says where it attached or, with the Gateway API reason, why
//! it did not. HTTPRoute uses it now; GRPCRoute, TLSRoute and TCPRoute are further kinds of
//! [`RouteRef`], not copies of this.

use meshgate_api::{GATEWAY_GROUP, Kind, Object, ResourceSet};

use crate::host::HostPattern;
use crate::listeners::{NamespaceLabels, Placement, allowed};
use crate::status::{Condition, cond};

/// One `parentRef` of a route, whatever its kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParentRef<'a> {
    /// API group (default the Gateway API's).
    pub(crate) group: &'a str,
    /// Kind (default `Gateway`).
    pub(crate) kind: &'a str,
    /// Namespace (default the route's).
    pub(crate) namespace: Option<&'a str>,
    /// Name.
    pub(crate) name: &'a str,
    /// A listener name.
    pub(crate) section_name: Option<&'a str>,
    /// A listener port.
    pub(crate) port: Option<i32>,
}

/// The `parentRefs` of a route of any kind (each kind has its own generated type with the same
/// fields), as [`ParentRef`]s.
macro_rules! parent_refs {
    ($refs:expr) => {
        $refs
            .iter()
            .flatten()
            .map(|p| $crate::attach::ParentRef {
                group: p.group.as_deref().unwrap_or(meshgate_api::GATEWAY_GROUP),
                kind: p.kind.as_deref().unwrap_or("Gateway"),
                namespace: p.namespace.as_deref(),
                name: &p.name,
                section_name: p.section_name.as_deref(),
                port: p.port,
            })
            .collect()
    };
}
pub(crate) use parent_refs;

/// A route of some kind, as attachment sees it.
pub(crate) struct RouteRef<'a> {
    /// The route object.
    pub(crate) object: &'a Object,
    /// `HTTPRoute`, `GRPCRoute`, `TLSRoute`, `TCPRoute`.
    pub(crate) kind: &'static str,
    /// Listener protocols that carry this kind.
    pub(crate) protocols: &'static [&'static str],
    /// Its parents, in order.
    pub(crate) parents: Vec<ParentRef<'a>>,
    /// Its hostnames (empty: any).
    pub(crate) hostnames: Vec<HostPattern>,
}

/// Where a route attached: a listener slot and the hostnames the route answers for there
/// (empty: any host).
pub(crate) type Attached = (usize, Vec<HostPattern>);

/// The hostnames a route answers for on a listener: the listener's when the route has none,
/// the route's when the listener has none, else their intersection; `None` when they share no
/// hostname.
pub(crate) fn effective_hostnames(listener: Option<&HostPattern>, route: &[HostPattern]) -> Option<Vec<HostPattern>> {
    match (listener, route.is_empty()) {
        (None, _) => Some(route.to_vec()),
        (Some(l), true) => Some(vec![l.clone()]),
        (Some(l), false) => {
            let both: Vec<HostPattern> = route.iter().filter_map(|r| HostPattern::intersect(l, r)).collect();
            (!both.is_empty()).then_some(both)
        }
    }
}

/// Attaches `route` to the placed listeners its parents name; pushes one `Accepted` condition
/// per parent (parents of kind `Service` are the mesh's, GAMMA style, and left to sidecars).
pub(crate) fn attach(
    set: &ResourceSet,
    placement: &Placement<'_>,
    route: &RouteRef<'_>,
    ns_labels: &NamespaceLabels<'_>,
    conditions: &mut Vec<Condition>,
) -> Vec<Attached> {
    let o = route.object;
    let mut out = Vec::new();
    for (j, parent) in route.parents.iter().enumerate() {
        let field = format!("spec.parentRefs[{j}]");
        if parent.group.is_empty() && parent.kind == "Service" {
            continue; // A mesh (GAMMA) route: served by sidecars, not gateways.
        }
        if parent.group != GATEWAY_GROUP || parent.kind != "Gateway" {
            let message = format!("parent kind {}/{} is not supported", parent.group, parent.kind);
            conditions.push(cond(o, field, "Accepted", false, "NoMatchingParent", message));
            continue;
        }
        let ns = parent.namespace.unwrap_or(o.id.ns());
        let Some(slots) = placement.by_gateway.get(&(ns, parent.name)) else {
            let message = if set.lookup(Kind::Gateway, ns, parent.name).is_some() {
                format!("Gateway {ns}/{} is not served by meshgate", parent.name)
            } else {
                format!("Gateway {ns}/{} not found", parent.name)
            };
            conditions.push(cond(o, field, "Accepted", false, "NoMatchingParent", message));
            continue;
        };
        let mut attached = 0;
        let mut why: Option<(&'static str, String)> = None;
        for &slot in slots {
            let p = &placement.placed[slot];
            if parent.section_name.is_some_and(|s| s != p.listener.name) {
                continue;
            }
            if parent.port.is_some_and(|port| port != p.listener.port) {
                continue;
            }
            if !route.protocols.contains(&p.listener.protocol.as_str()) {
                why.get_or_insert((
                    "NotAllowedByListeners",
                    format!(
                        "listener {:?} speaks {}, which does not carry {}",
                        p.listener.name, p.listener.protocol, route.kind
                    ),
                ));
                continue;
            }
            if let Err(reason) = allowed(p, route.kind, o.id.ns(), ns_labels) {
                why.get_or_insert(("NotAllowedByListeners", reason));
                continue;
            }
            let Some(effective) = effective_hostnames(p.hostname.as_ref(), &route.hostnames) else {
                why.get_or_insert((
                    "NoMatchingListenerHostname",
                    format!(
                        "no hostname of the route intersects listener {:?} hostname {}",
                        p.listener.name,
                        p.hostname.as_ref().map_or(String::new(), ToString::to_string)
                    ),
                ));
                continue;
            };
            attached += 1;
            out.push((slot, effective));
        }
        if attached > 0 {
            let message = format!("attached to {attached} listener(s) of Gateway {ns}/{}", parent.name);
            conditions.push(cond(o, field, "Accepted", true, "Accepted", message));
        } else {
            let (reason, message) = why.unwrap_or((
                "NoMatchingParent",
                format!(
                    "Gateway {ns}/{} has no {} listener{}{}",
                    parent.name,
                    route.protocols.first().copied().unwrap_or("matching"),
                    parent.section_name.map_or(String::new(), |s| format!(" named {s:?}")),
                    parent.port.map_or(String::new(), |p| format!(" on port {p}"))
                ),
            ));
            conditions.push(cond(o, field, "Accepted", false, reason, message));
        }
    }
    // `attachedRoutes` counts routes, not parentRefs: two parentRefs reaching one listener
    // attach the route there once.
    let mut slots: Vec<usize> = out.iter().map(|(slot, _)| *slot).collect();
    slots.sort_unstable();
    slots.dedup();
    for slot in slots {
        let c = &placement.attached[slot];
        c.set(c.get() + 1);
    }
    out
}
