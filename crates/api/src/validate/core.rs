//! Service, EndpointSlice, Secret and Workload checks (what the API server refuses).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Report, syntax};
use crate::core::{EndpointSlice, Endpoints, IntOrString, Secret, Service};
use crate::workload::Workload;

pub(super) fn service(s: &Service, r: &mut Report) {
    let Some(spec) = &s.spec else { return };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        r.range(format!("{at}.port"), i64::from(p.port), 1, 65535);
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            r.add(format!("{at}.protocol"), format!("must be TCP, UDP or SCTP, got {protocol:?}"));
        }
        match p.name.as_deref() {
            Some(name) if !name.is_empty() => {
                if let Err(msg) = syntax::dns_label(name) {
                    r.add(format!("{at}.name"), msg);
                } else if !names.insert(name) {
                    r.add(format!("{at}.name"), format!("duplicate port name {name:?}"));
                }
            }
            _ if ports.len() > 1 => r.add(format!("{at}.name"), "required when the Service has more than one port"),
            _ => {}
        }
        if !numbers.insert((p.port, protocol)) {
            r.add(format!("{at}.port"), format!("duplicate port {}/{protocol}", p.port));
        }
        match &p.target_port {
            Some(IntOrString::Int(n)) => r.range(format!("{at}.targetPort"), i64::from(*n), 1, 65535),
            Some(IntOrString::String(name)) => {
                if let Err(msg) = syntax::port_name(name) {
                    r.add(format!("{at}.targetPort"), msg);
                }
            }
            None => {}
        }
    }
    if spec.type_.as_deref() == Some("ExternalName") && spec.external_name.as_deref().unwrap_or("").is_empty() {
        r.add("spec.externalName", "required when type is ExternalName");
    }
}

pub(super) fn endpoints(e: &Endpoints, r: &mut Report) {
    for (i, s) in e.subsets.iter().flatten().enumerate() {
        for (field, list) in [("addresses", &s.addresses), ("notReadyAddresses", &s.not_ready_addresses)] {
            for (j, a) in list.iter().flatten().enumerate() {
                if a.ip.parse::<std::net::IpAddr>().is_err() {
                    r.add(format!("subsets[{i}].{field}[{j}].ip"), format!("{:?} is not an IP address", a.ip));
                }
            }
        }
        for (j, p) in s.ports.iter().flatten().enumerate() {
            r.range(format!("subsets[{i}].ports[{j}].port"), i64::from(p.port), 1, 65535);
        }
    }
}

pub(super) fn endpoint_slice(s: &EndpointSlice, r: &mut Report) {
    let family = s.address_type.as_str();
    if !matches!(family, "IPv4" | "IPv6" | "FQDN") {
        r.add("addressType", format!("must be IPv4, IPv6 or FQDN, got {family:?}"));
    }
    for (i, e) in s.endpoints.iter().flatten().enumerate() {
        if e.addresses.is_empty() {
            r.add(format!("endpoints[{i}].addresses"), "at least one address is required");
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let ok = match family {
                "IPv4" => a.parse::<Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<Ipv6Addr>().is_ok(),
                _ => syntax::hostname(a, false).is_ok(),
            };
            if !ok {
                r.add(format!("endpoints[{i}].addresses[{j}]"), format!("{a:?} is not a valid {family} address"));
            }
        }
    }
    for (i, p) in s.ports.iter().flatten().enumerate() {
        if let Some(port) = p.port {
            r.range(format!("ports[{i}].port"), i64::from(port), 0, 65535);
        }
    }
}

pub(super) fn secret(s: &Secret, r: &mut Report) {
    if s.type_.as_deref() == Some("kubernetes.io/tls") {
        for key in ["tls.crt", "tls.key"] {
            let in_data = s.data.as_ref().is_some_and(|d| d.contains_key(key));
            let in_string = s.string_data.as_ref().is_some_and(|d| d.contains_key(key));
            if !in_data && !in_string {
                r.add(format!("data[{key}]"), "required for type kubernetes.io/tls");
            }
        }
    }
}

pub(super) fn workload(w: &Workload, r: &mut Report) {
    if w.spec.address.parse::<IpAddr>().is_err() {
        r.add("spec.address", format!("{:?} is not an IP address", w.spec.address));
    }
    for (name, port) in &w.spec.ports {
        if let Err(msg) = syntax::port_name(name) {
            r.add(format!("spec.ports.{name}"), msg);
        }
        r.range(format!("spec.ports.{name}"), i64::from(*port), 1, 65535);
    }
    if let Some(sa) = &w.spec.service_account
        && let Err(msg) = syntax::dns_subdomain(sa)
    {
        r.add("spec.serviceAccount", msg);
    }
}
