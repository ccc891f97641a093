//! Listener placement, the first step of the gateway compiler: every Gateway of meshgate's
//! class, oldest first, places its listeners by port and hostname; listeners that conflict with
//! one placed earlier (another protocol on the port, or the same hostname) or that speak a
//! protocol not served are reported and left out. Routes attach to what is placed
//! (`crate::attach`), one step per route kind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use meshgate_api::gw::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From, GatewayListenersTlsMode,
};
use meshgate_api::{GATEWAY_GROUP, Kind, Object, ResourceSet};

use crate::certs::{CompileInputs, listener_tls};
use crate::host::HostPattern;
use crate::resolve::Discovery;
use crate::status::{Condition, age, cond};
use crate::table::{ListenerProtocol, ListenerTls};

/// The controller name meshgate answers to in `GatewayClass.spec.controllerName`.
pub const CONTROLLER_NAME: &str = "meshgate.io/gateway-controller";
/// The GatewayClass meshgate serves without it being declared.
pub const DEFAULT_CLASS: &str = "meshgate";

/// Labels of each namespace, for `allowedRoutes.namespaces.selector`.
pub type NamespaceLabels<'a> = HashMap<&'a str, BTreeMap<String, String>>;

/// The labels of every Namespace in `set`, with `kubernetes.io/metadata.name` as the API server
/// sets it on each.
pub fn namespace_labels(set: &ResourceSet) -> NamespaceLabels<'_> {
    set.namespaces()
        .map(|(o, n)| {
            let mut labels = n.metadata.labels.clone().unwrap_or_default();
            labels.insert("kubernetes.io/metadata.name".into(), o.id.name.to_string());
            (&*o.id.name, labels)
        })
        .collect()
}

/// One listener placed on its port.
pub(crate) struct Placed<'a> {
    /// `namespace/name` of its Gateway.
    pub(crate) gateway: Arc<str>,
    /// Its Gateway's namespace.
    pub(crate) gw_ns: &'a str,
    /// The listener as written.
    pub(crate) listener: &'a GatewayListeners,
    /// Its hostname (`None`: any).
    pub(crate) hostname: Option<HostPattern>,
    /// An HTTPS listener's certificates.
    pub(crate) tls: Option<ListenerTls>,
    /// What it carries.
    pub(crate) protocol: ListenerProtocol,
    /// Its Gateway.
    pub(crate) object: &'a Object,
    /// `spec.listeners[i]`.
    pub(crate) field: String,
    /// `i`.
    pub(crate) index: usize,
    /// Served (false: its certificates did not resolve; routes still attach, for status).
    pub(crate) programmed: bool,
}

/// Every listener placed, and where each Gateway's are.
pub(crate) struct Placement<'a> {
    /// Listeners, by slot.
    pub(crate) placed: Vec<Placed<'a>>,
    /// `(namespace, name)` of a Gateway → the slots of its placed listeners.
    pub(crate) by_gateway: HashMap<(&'a str, &'a str), Vec<usize>>,
    /// Routes attached to each slot so far (a listener's `attachedRoutes`).
    pub(crate) attached: Vec<std::cell::Cell<u32>>,
}

/// Places the listeners of every Gateway in `set`, oldest Gateway first (earlier listeners
/// win conflicts); reports each Gateway and each listener left out.
pub(crate) fn place<'a>(
    set: &'a ResourceSet,
    disc: &Discovery<'_>,
    inputs: &CompileInputs<'_>,
    conditions: &mut Vec<Condition>,
) -> Placement<'a> {
    // Gateways, oldest first: earlier listeners win conflicts.
    let mut gateways: Vec<_> = set.gateways().collect();
    gateways.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    let mut placed: Vec<Placed<'_>> = Vec::new();
    let mut by_gateway: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut port_family: HashMap<i32, (&str, Arc<str>)> = HashMap::new();
    for (o, gw) in gateways {
        let key: Arc<str> = format!("{}/{}", o.id.ns(), o.id.name).into();
        let class = &gw.spec.gateway_class_name;
        let refused = match set.lookup(Kind::GatewayClass, "", class).map(|c| &c.resource) {
            Some(meshgate_api::Resource::GatewayClass(c)) if c.spec.controller_name != CONTROLLER_NAME => Some((
                "NotHandled",
                format!(
                    "GatewayClass {class} belongs to controller {}, not {CONTROLLER_NAME}; not served here",
                    c.spec.controller_name
                ),
            )),
            Some(meshgate_api::Resource::GatewayClass(c)) if c.spec.parameters_ref.is_some() => Some((
                "InvalidParameters",
                format!(
                    "GatewayClass {class} is not accepted: it has a parametersRef, and meshgate takes no parameters"
                ),
            )),
            None if class != DEFAULT_CLASS => Some((
                "InvalidParameters",
                format!(
                    "GatewayClass {class:?} not found; declare it with controllerName {CONTROLLER_NAME}, or use {DEFAULT_CLASS:?}"
                ),
            )),
            _ => None,
        };
        let refused = refused.or_else(|| {
            let p = gw.spec.infrastructure.as_ref()?.parameters_ref.as_ref()?;
            Some((
                "InvalidParameters",
                format!(
                    "spec.infrastructure.parametersRef {}/{} {}: meshgate takes no parameters; remove it",
                    p.group, p.kind, p.name
                ),
            ))
        });
        if let Some((reason, message)) = refused {
            conditions.push(cond(o, "spec.gatewayClassName".into(), "Accepted", false, reason, message));
            continue;
        }
        conditions.push(cond(o, String::new(), "Accepted", true, "Accepted", "handled by meshgate".into()));
        let slots = by_gateway.entry((o.id.ns(), &o.id.name)).or_default();
        for (i, l) in gw.spec.listeners.iter().enumerate() {
            let field = format!("spec.listeners[{i}]");
            let family = if matches!(l.protocol.as_str(), "HTTPS" | "TLS") { "TLS" } else { l.protocol.as_str() };
            match port_family.get(&l.port) {
                Some((other, owner)) if *other != family => {
                    conditions.push(cond(
                        o,
                        field,
                        "Conflicted",
                        true,
                        "ProtocolConflict",
                        format!("port {} is already used for {other} by Gateway {owner}", l.port),
                    ));
                    continue;
                }
                Some(_) => {}
                None => {
                    port_family.insert(l.port, (family, key.clone()));
                }
            }
            let (tls, protocol) = match l.protocol.as_str() {
                "HTTP" => (None, ListenerProtocol::Http),
                // A listener whose certificates do not resolve is placed unprogrammed: routes
                // attach to it (its `attachedRoutes` counts them), nothing is served on it.
                "HTTPS" => (listener_tls(set, disc, o, l, &field, inputs, conditions), ListenerProtocol::Https),
                "TLS" => match l.tls.as_ref().and_then(|t| t.mode.clone()) {
                    Some(GatewayListenersTlsMode::Passthrough) => (None, ListenerProtocol::TlsPassthrough),
                    // Terminate (the default): the gateway's certificate, then the decrypted
                    // bytes to the TLSRoute's backends.
                    _ => (listener_tls(set, disc, o, l, &field, inputs, conditions), ListenerProtocol::TlsTerminate),
                },
                "TCP" => (None, ListenerProtocol::Tcp),
                other => {
                    conditions.push(cond(
                        o,
                        field,
                        "Programmed",
                        false,
                        "UnsupportedProtocol",
                        format!(
                            "listener {:?}: protocol {other} is not served; HTTP, HTTPS, TLS and TCP listeners are",
                            l.name
                        ),
                    ));
                    continue;
                }
            };
            let hostname = l.hostname.as_deref().map(HostPattern::parse);
            if let Some(other) = placed.iter().find(|p| p.listener.port == l.port && p.hostname == hostname) {
                conditions.push(cond(
                    o,
                    field,
                    "Conflicted",
                    true,
                    "HostnameConflict",
                    format!(
                        "listener {:?}: port {} with hostname {} is already served by Gateway {} listener {:?}",
                        l.name,
                        l.port,
                        hostname.as_ref().map_or("<any>".to_string(), ToString::to_string),
                        other.gateway,
                        other.listener.name
                    ),
                ));
                continue;
            }
            let programmed =
                tls.is_some() || !matches!(protocol, ListenerProtocol::Https | ListenerProtocol::TlsTerminate);
            slots.push(placed.len());
            placed.push(Placed {
                gateway: key.clone(),
                gw_ns: o.id.ns(),
                listener: l,
                hostname,
                tls,
                protocol,
                object: o,
                field,
                index: i,
                programmed,
            });
        }
    }

    let attached = placed.iter().map(|_| std::cell::Cell::new(0)).collect();
    Placement { placed, by_gateway, attached }
}

/// Whether listener `p` admits routes of `kind` from namespace `route_ns` (its
/// `allowedRoutes`: kinds, and namespaces Same / All / Selector).
pub(crate) fn allowed(
    p: &Placed<'_>,
    kind: &str,
    route_ns: &str,
    ns_labels: &NamespaceLabels<'_>,
) -> Result<(), String> {
    let allowed_routes = p.listener.allowed_routes.as_ref();
    if let Some(kinds) = allowed_routes.and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty()) {
        let ok = kinds.iter().any(|k| k.kind == kind && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP);
        if !ok {
            return Err(format!("listener {:?} does not allow {kind}", p.listener.name));
        }
    }
    let namespaces = allowed_routes.and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.clone()).unwrap_or(From::Same) {
        From::All => Ok(()),
        From::Same if route_ns == p.gw_ns => Ok(()),
        From::Same => Err(format!(
            "listener {:?} of Gateway {} admits routes from its own namespace only (allowedRoutes.namespaces.from: Same)",
            p.listener.name, p.gateway
        )),
        From::Selector => {
            let default_labels;
            let labels = match ns_labels.get(route_ns) {
                Some(l) => l,
                None => {
                    default_labels =
                        BTreeMap::from([("kubernetes.io/metadata.name".to_string(), route_ns.to_string())]);
                    &default_labels
                }
            };
            let selector = namespaces.and_then(|n| n.selector.as_ref());
            let match_labels = selector.and_then(|s| s.match_labels.as_ref());
            let mut ok = match_labels.into_iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
            for e in selector.and_then(|s| s.match_expressions.as_ref()).into_iter().flatten() {
                let have = labels.get(&e.key);
                let values = e.values.as_deref().unwrap_or_default();
                ok &= match e.operator.as_str() {
                    "In" => have.is_some_and(|v| values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                };
            }
            if ok {
                Ok(())
            } else {
                Err(format!("namespace {route_ns} does not match the selector of listener {:?}", p.listener.name))
            }
        }
    }
}
