//! ListenerPolicy: how a Gateway's listeners take connections (PROXY protocol, header and idle
//! timeouts, a connection limit). These apply before any request or SNI is read, so they are
//! the port's: listeners sharing a port share them, and two policies that disagree about a port
//! are reported (the older one stays in force).

use std::collections::BTreeMap;

use meshgate_api::ResourceSet;
use meshgate_api::validate::syntax::gateway_duration;

use crate::listeners::Placement;
use crate::status::{Condition, age, cond};
use crate::table::PortSettings;

/// The settings of every port a ListenerPolicy reaches, oldest policy first.
pub(crate) fn port_settings(
    set: &ResourceSet,
    placement: &Placement<'_>,
    conditions: &mut Vec<Condition>,
) -> BTreeMap<u16, PortSettings> {
    let mut policies: Vec<_> = set.listener_policies().collect();
    policies.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    let mut out: BTreeMap<u16, PortSettings> = BTreeMap::new();
    for (o, p) in policies {
        let key = format!("{}/{}", o.id.ns(), o.id.name);
        let spec = &p.spec;
        let parse = |t: &Option<String>| t.as_deref().and_then(|t| gateway_duration(t).ok());
        let wanted = PortSettings {
            proxy_protocol: spec.proxy_protocol.as_ref().is_some_and(|p| p.enabled),
            header_timeout: parse(&spec.header_timeout),
            idle_timeout: parse(&spec.idle_timeout),
            max_connections: spec.max_connections,
            policy: Some(key.clone()),
        };
        let mut reached = 0;
        for (i, t) in spec.target_refs.iter().enumerate() {
            let field = format!("spec.targetRefs[{i}]");
            let Some(slots) = placement.by_gateway.get(&(o.id.ns(), t.name.as_str())) else {
                let msg = format!("Gateway {}/{} is not served here (not found, or not meshgate's)", o.id.ns(), t.name);
                conditions.push(cond(o, field, "Accepted", false, "TargetNotFound", msg));
                continue;
            };
            let listeners: Vec<_> = slots
                .iter()
                .map(|&s| &placement.placed[s])
                .filter(|pl| t.section_name.as_deref().is_none_or(|s| s == pl.listener.name))
                .collect();
            if listeners.is_empty() {
                let msg = format!(
                    "Gateway {}/{} has no listener {:?} in service",
                    o.id.ns(),
                    t.name,
                    t.section_name.as_deref().unwrap_or_default()
                );
                conditions.push(cond(o, field, "Accepted", false, "TargetNotFound", msg));
                continue;
            }
            for pl in listeners {
                let Ok(port) = u16::try_from(pl.listener.port) else { continue };
                match out.get(&port) {
                    Some(have)
                        if PortSettings { policy: None, ..have.clone() }
                            != PortSettings { policy: None, ..wanted.clone() } =>
                    {
                        let msg = format!(
                            "port {port} (listener {:?}) already takes its connection settings from ListenerPolicy {}; listeners sharing a port share them",
                            pl.listener.name,
                            have.policy.as_deref().unwrap_or("?")
                        );
                        conditions.push(cond(o, field.clone(), "Accepted", false, "Conflicted", msg));
                    }
                    Some(_) => reached += 1,
                    None => {
                        out.insert(port, wanted.clone());
                        reached += 1;
                    }
                }
            }
        }
        if reached > 0 {
            conditions.push(cond(
                o,
                String::new(),
                "Accepted",
                true,
                "Accepted",
                format!("in force on {reached} listener(s)"),
            ));
        }
    }
    out
}
