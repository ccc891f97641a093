//! TLSRoutes and TCPRoutes: routes that carry connections, not requests. A TLSRoute attaches
//! to `protocol: TLS` listeners in `Passthrough` mode and is chosen by the ClientHello's SNI
//! (the bytes go on unterminated); a TCPRoute attaches to `protocol: TCP` listeners and takes
//! every connection of its listener. Both split connections over weighted backendRefs.

use std::sync::Arc;

use meshgate_api::{GATEWAY_GROUP, Object, ResourceSet};

use crate::attach::{RouteRef, attach, parent_refs};

/// A rule's backendRefs as [`RefFields`] (TLSRoute's and TCPRoute's types differ, not their fields).
macro_rules! l4_refs {
    ($refs:expr) => {
        $refs
            .iter()
            .map(|b| (b.group.as_deref(), b.kind.as_deref(), b.namespace.as_deref(), b.name.as_str(), b.port, b.weight))
            .collect::<Vec<RefFields<'_>>>()
    };
}
use crate::host::HostPattern;
use crate::listeners::{NamespaceLabels, Placement};
use crate::resolve::{Discovery, Referrer};
use crate::rule::{Backend, WeightedBackend};
use crate::status::{Condition, age, cond, report_refs};
use crate::table::L4Route;

/// A route's rules with their backends resolved, before attachment.
struct Rules {
    rules: Vec<(Arc<str>, Vec<WeightedBackend>)>,
}

/// Compiles every TLSRoute and TCPRoute in `set` and attaches them; returns the rules per
/// listener slot.
pub(crate) fn attach_l4(
    set: &ResourceSet,
    disc: &Discovery<'_>,
    placement: &Placement<'_>,
    ns_labels: &NamespaceLabels<'_>,
    conditions: &mut Vec<Condition>,
) -> Vec<Vec<L4Route>> {
    let mut per_slot: Vec<Vec<L4Route>> = placement.placed.iter().map(|_| Vec::new()).collect();
    let mut routes: Vec<(&Object, RouteRef<'_>, Rules)> = Vec::new();
    for (o, r) in set.tls_routes() {
        let mut unresolved = Vec::new();
        let refs = r.spec.rules.iter().map(|rule| l4_refs!(rule.backend_refs));
        let rules = resolve(o, "TLSRoute", refs, disc, &mut unresolved);
        let hostnames = r.spec.hostnames.iter().map(|h| HostPattern::parse(h)).collect();
        let route = RouteRef {
            object: o,
            kind: "TLSRoute",
            protocols: &["TLS"],
            parents: parent_refs!(r.spec.parent_refs),
            hostnames,
        };
        report_refs(o, unresolved, conditions);
        routes.push((o, route, rules));
    }
    for (o, r) in set.tcp_routes() {
        let mut unresolved = Vec::new();
        let refs = r.spec.rules.iter().map(|rule| l4_refs!(rule.backend_refs));
        let rules = resolve(o, "TCPRoute", refs, disc, &mut unresolved);
        let route = RouteRef {
            object: o,
            kind: "TCPRoute",
            protocols: &["TCP"],
            parents: parent_refs!(r.spec.parent_refs),
            hostnames: Vec::new(),
        };
        report_refs(o, unresolved, conditions);
        routes.push((o, route, rules));
    }
    // Oldest first: an older route wins a name both claim.
    routes.sort_by_key(|(o, r, _)| (age(o), r.kind, o.id.clone()));
    for (_, route, rules) in &routes {
        for (slot, hostnames) in attach(set, placement, route, ns_labels, conditions) {
            for (name, backends) in &rules.rules {
                per_slot[slot].push(L4Route::new(name.clone(), hostnames.clone(), backends.clone()));
            }
        }
    }
    // A TCP listener takes every connection: its first route serves it, later ones are reported.
    for (slot, rules) in per_slot.iter_mut().enumerate() {
        let p = &placement.placed[slot];
        if p.listener.protocol == "TCP" && rules.len() > 1 {
            let ignored: Vec<String> = rules[1..].iter().map(|r| r.route.to_string()).collect();
            conditions.push(cond(
                p.object,
                p.field.clone(),
                "Accepted",
                true,
                "Accepted",
                format!(
                    "listener {:?}: TCP listeners serve one route; {} serves it, {} do(es) not",
                    p.listener.name,
                    rules[0].route,
                    ignored.join(", ")
                ),
            ));
            rules.truncate(1);
        }
    }
    per_slot
}

type RefFields<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str, Option<i32>, Option<i32>);

fn resolve<'a>(
    o: &Object,
    kind: &'static str,
    rules: impl Iterator<Item = Vec<RefFields<'a>>>,
    disc: &Discovery<'_>,
    unresolved: &mut Vec<(String, &'static str, String)>,
) -> Rules {
    let from = Referrer { group: GATEWAY_GROUP, kind, namespace: o.id.ns() };
    let mut out = Vec::new();
    for (i, refs) in rules.enumerate() {
        let mut backends = Vec::new();
        for (j, (group, bkind, ns, name, port, weight)) in refs.into_iter().enumerate() {
            let backend = disc.backend(from, group, bkind, ns, name, port);
            if let Backend::Invalid { reason, message } = &backend {
                unresolved.push((format!("spec.rules[{i}].backendRefs[{j}]"), *reason, message.clone()));
            }
            let weight = weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1);
            backends.push(WeightedBackend::new(weight, backend));
        }
        out.push((Arc::from(format!("{kind} {}/{}#{i}", o.id.ns(), o.id.name)), backends));
    }
    Rules { rules: out }
}
