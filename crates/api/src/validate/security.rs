//! PeerAuthentication, AuthorizationPolicy and MeshConfig checks.

use super::{Report, syntax};
use crate::resource::Object;
use crate::security::{AuthorizationPolicy, MeshConfig, MtlsMode, PeerAuthentication};

pub(super) fn peer_authentication(p: &PeerAuthentication, r: &mut Report) {
    if !p.spec.port_level_mtls.is_empty() && p.spec.selector.is_none() {
        r.add("spec.portLevelMtls", "only allowed together with a selector (as in Istio)");
    }
    for (port, mtls) in &p.spec.port_level_mtls {
        match port.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => r.add(format!("spec.portLevelMtls.{port}"), "must be a port number 1..65535"),
        }
        if mtls.mode == MtlsMode::Unset {
            r.add(format!("spec.portLevelMtls.{port}.mode"), "UNSET makes no sense for a port; remove the entry");
        }
    }
}

fn check_values(r: &mut Report, field: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        let stars = v.matches('*').count();
        let ok = !v.is_empty() && (stars == 0 || v == "*" || (stars == 1 && (v.starts_with('*') || v.ends_with('*'))));
        if !ok {
            r.add(format!("{field}[{i}]"), format!("{v:?}: use an exact value, \"prefix*\", \"*suffix\" or \"*\""));
        }
    }
}

pub(super) fn authorization_policy(a: &AuthorizationPolicy, r: &mut Report) {
    for (i, rule) in a.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, f) in rule.from.iter().enumerate() {
            let s = &f.source;
            let sat = format!("{at}.from[{j}].source");
            check_values(r, &format!("{sat}.principals"), &s.principals);
            check_values(r, &format!("{sat}.notPrincipals"), &s.not_principals);
            check_values(r, &format!("{sat}.namespaces"), &s.namespaces);
            check_values(r, &format!("{sat}.notNamespaces"), &s.not_namespaces);
        }
        for (j, t) in rule.to.iter().enumerate() {
            let o = &t.operation;
            let oat = format!("{at}.to[{j}].operation");
            for (k, m) in o.methods.iter().chain(&o.not_methods).enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'*') {
                    r.add(format!("{oat}.methods[{k}]"), format!("{m:?} is not an HTTP method (upper case)"));
                }
            }
            check_values(r, &format!("{oat}.paths"), &o.paths);
            check_values(r, &format!("{oat}.notPaths"), &o.not_paths);
            for (k, p) in o.ports.iter().chain(&o.not_ports).enumerate() {
                if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
                    r.add(format!("{oat}.ports[{k}]"), format!("{p:?} is not a port number"));
                }
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let cat = format!("{at}.when[{j}]");
            let known = c.key == "source.principal"
                || c.key == "source.namespace"
                || c.key
                    .strip_prefix("request.headers[")
                    .and_then(|h| h.strip_suffix(']'))
                    .is_some_and(|h| syntax::header_name(h).is_ok());
            if !known {
                r.add(
                    format!("{cat}.key"),
                    format!(
                        "{:?}: supported keys are request.headers[NAME], source.principal, source.namespace",
                        c.key
                    ),
                );
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                r.add(cat.clone(), "set values or notValues");
            }
            check_values(r, &format!("{cat}.values"), &c.values);
            check_values(r, &format!("{cat}.notValues"), &c.not_values);
        }
    }
}

pub(super) fn mesh_config(o: &Object, m: &MeshConfig, r: &mut Report) {
    if o.id.name.as_ref() != "default" {
        r.add("metadata.name", "the MeshConfig must be named \"default\"");
    }
    if let Some(td) = &m.spec.trust_domain {
        let ok = !td.is_empty()
            && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            r.add(
                "spec.trustDomain",
                format!("{td:?} is not a SPIFFE trust domain (lower case letters, digits, '.', '-', '_')"),
            );
        }
    }
    if let Some(ns) = &m.spec.root_namespace
        && let Err(msg) = syntax::dns_label(ns)
    {
        r.add("spec.rootNamespace", msg);
    }
    if let Some(ttl) = m.spec.certificates.as_ref().and_then(|c| c.workload_ttl.as_ref()) {
        match syntax::gateway_duration(ttl) {
            Ok(d) if d < std::time::Duration::from_secs(60) => {
                r.add("spec.certificates.workloadTTL", "must be at least 1m")
            }
            Ok(d) if d > std::time::Duration::from_secs(365 * 24 * 3600) => {
                r.add("spec.certificates.workloadTTL", "must be at most 8760h")
            }
            Ok(_) => {}
            Err(msg) => r.add("spec.certificates.workloadTTL", msg),
        }
    }
    if let Some(p) = &m.spec.outbound_traffic_policy
        && p.mode != "ALLOW_ANY"
        && p.mode != "REGISTRY_ONLY"
    {
        r.add("spec.outboundTrafficPolicy.mode", format!("{:?}: ALLOW_ANY or REGISTRY_ONLY", p.mode));
    }
    if let Some(t) = &m.spec.tracing {
        if let Some(p) = t.sampling_percent
            && !(0.0..=100.0).contains(&p)
        {
            r.add("spec.tracing.samplingPercent", format!("{p}: between 0 and 100"));
        }
        if let Some(z) = &t.zipkin
            && let Err(msg) = collector_url(&z.endpoint)
        {
            r.add("spec.tracing.zipkin.endpoint", msg);
        }
        if let Some(o) = &t.otlp {
            if let Err(msg) = collector_url(&o.endpoint) {
                r.add("spec.tracing.otlp.endpoint", msg);
            }
            if let Some(p) = o.protocol.as_deref().filter(|p| !matches!(*p, "grpc" | "http")) {
                r.add("spec.tracing.otlp.protocol", format!("{p:?}: grpc or http"));
            }
        }
    }
    if let Some(t) = m.spec.downstream.as_ref().and_then(|d| d.header_timeout.as_ref())
        && let Err(msg) = syntax::gateway_duration(t)
    {
        r.add("spec.downstream.headerTimeout", msg);
    }
}

/// A trace collector's URL: `http://HOST:PORT[/PATH]`.
fn collector_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: TLS to collectors is not supported yet; use http:// (a collector or agent beside the proxy)"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?}: an http:// URL (http://HOST:PORT[/PATH])"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("{url:?}: the URL needs a host and a port (http://HOST:PORT[/PATH])")),
    }
}
