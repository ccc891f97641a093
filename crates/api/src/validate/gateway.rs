//! Gateway, GatewayClass and ReferenceGrant checks.

use std::collections::HashMap;

use super::{Report, syntax};
use crate::gw::gateways::GatewayListenersAllowedRoutesNamespacesFrom as From;
use crate::gw::{Gateway, GatewayClass, ReferenceGrant};

/// Listener protocols that can share a port: they must speak the same thing on the wire.
fn port_family(protocol: &str) -> &str {
    match protocol {
        "HTTPS" | "TLS" => "TLS",
        other => other,
    }
}

pub(super) fn gateway(g: &Gateway, r: &mut Report) {
    if g.spec.gateway_class_name.is_empty() {
        r.add("spec.gatewayClassName", "required");
    }
    let listeners = &g.spec.listeners;
    if listeners.is_empty() {
        r.add("spec.listeners", "at least one listener is required");
    }
    if listeners.len() > 64 {
        r.add("spec.listeners", format!("at most 64 listeners, got {}", listeners.len()));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut by_port: HashMap<i32, (usize, &str)> = HashMap::new();
    let mut bindings: HashMap<(i32, &str), usize> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        if let Err(msg) = syntax::dns_label(&l.name) {
            r.add(format!("{at}.name"), msg);
        }
        if let Some(first) = names.insert(&l.name, i) {
            r.add(format!("{at}.name"), format!("duplicate listener name {:?} (also spec.listeners[{first}])", l.name));
        }
        r.range(format!("{at}.port"), i64::from(l.port), 1, 65535);
        // The schema's pattern: a name, or a domain-prefixed one. A protocol meshgate does not
        // serve is valid here and reported in the listener's status (UnsupportedProtocol), as
        // the spec has it: the rest of the Gateway is served.
        let p = l.protocol.as_bytes();
        let name = |b: &[u8]| {
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        };
        let prefixed = l.protocol.split_once('/').is_some_and(|(d, n)| {
            syntax::hostname(d, false).is_ok() && !n.is_empty() && n.bytes().all(|c| c.is_ascii_alphanumeric())
        });
        if !name(p) && !prefixed {
            r.add(
                format!("{at}.protocol"),
                format!(
                    "invalid protocol {:?}: a name (HTTP, HTTPS, TLS, TCP, UDP) or a domain-prefixed one",
                    l.protocol
                ),
            );
        }
        if let Some(host) = &l.hostname {
            if matches!(l.protocol.as_str(), "TCP" | "UDP") {
                r.add(format!("{at}.hostname"), format!("must not be set for protocol {}", l.protocol));
            } else if let Err(msg) = syntax::hostname(host, true) {
                r.add(format!("{at}.hostname"), msg);
            }
        }
        match (&l.tls, l.protocol.as_str()) {
            (Some(_), "HTTP" | "TCP" | "UDP") => {
                r.add(format!("{at}.tls"), format!("must not be set for protocol {}", l.protocol))
            }
            (None, "HTTPS" | "TLS") => r.add(format!("{at}.tls"), format!("required for protocol {}", l.protocol)),
            _ => {}
        }
        match by_port.get(&l.port) {
            Some(&(j, other)) if port_family(other) != port_family(&l.protocol) => r.add(
                format!("{at}.protocol"),
                format!(
                    "{} conflicts with listener {:?} (spec.listeners[{j}]) on port {}, which is {other}",
                    l.protocol, listeners[j].name, l.port
                ),
            ),
            Some(_) => {}
            None => {
                by_port.insert(l.port, (i, &l.protocol));
            }
        }
        let host = l.hostname.as_deref().unwrap_or("");
        if let Some(first) = bindings.insert((l.port, host), i) {
            r.add(
                format!("{at}.hostname"),
                format!(
                    "listener {:?} has the same port {} and hostname {:?} as {:?} (spec.listeners[{first}])",
                    l.name,
                    l.port,
                    if host.is_empty() { "<any>" } else { host },
                    listeners[first].name
                ),
            );
        }
        if let Some(ns) = l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref())
            && matches!(ns.from, Some(From::Selector))
            && ns.selector.is_none()
        {
            r.add(format!("{at}.allowedRoutes.namespaces.selector"), "required when from is Selector");
        }
    }
}

pub(super) fn gateway_class(c: &GatewayClass, r: &mut Report) {
    let name = &c.spec.controller_name;
    if name.is_empty() || !name.contains('/') {
        r.add(
            "spec.controllerName",
            format!("{name:?} must be a domain-prefixed path, e.g. meshgate.io/gateway-controller"),
        );
    }
}

pub(super) fn reference_grant(g: &ReferenceGrant, r: &mut Report) {
    if g.spec.from.is_empty() {
        r.add("spec.from", "at least one entry is required");
    }
    if g.spec.to.is_empty() {
        r.add("spec.to", "at least one entry is required");
    }
    for (i, f) in g.spec.from.iter().enumerate() {
        if f.kind.is_empty() {
            r.add(format!("spec.from[{i}].kind"), "required");
        }
        if let Err(msg) = syntax::dns_label(&f.namespace) {
            r.add(format!("spec.from[{i}].namespace"), msg);
        }
    }
    for (i, t) in g.spec.to.iter().enumerate() {
        if t.kind.is_empty() {
            r.add(format!("spec.to[{i}].kind"), "required");
        }
    }
}
