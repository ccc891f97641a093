//! HTTPRoute checks: the CRD schema's limits and CEL rules, plus what meshgate can compile.

use std::collections::HashSet;

use super::{Report, syntax};
use crate::gw::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersType as FilterType, HttpRouteRulesFiltersUrlRewritePathType as RewritePathType,
    HttpRouteRulesMatchesHeadersType as HeaderMatchType, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryMatchType,
};

/// Converts a backendRef-level filter into the rule-level type: the two are generated
/// separately from one schema, so a serde round trip is exact.
pub fn backend_filter_as_rule_filter<T: serde::Serialize>(filter: &T) -> Option<HttpRouteRulesFilters> {
    serde_json::to_value(filter).ok().and_then(|v| serde_json::from_value(v).ok())
}

pub(super) fn http_route(route: &HttpRoute, r: &mut Report) {
    let spec = &route.spec;
    let hostnames = spec.hostnames.as_deref().unwrap_or_default();
    if hostnames.len() > 16 {
        r.add("spec.hostnames", format!("at most 16 hostnames, got {}", hostnames.len()));
    }
    for (i, h) in hostnames.iter().enumerate() {
        if let Err(msg) = syntax::hostname(h, true) {
            r.add(format!("spec.hostnames[{i}]"), msg);
        }
    }
    let parents = spec.parent_refs.as_deref().unwrap_or_default();
    if parents.len() > 32 {
        r.add("spec.parentRefs", format!("at most 32 parentRefs, got {}", parents.len()));
    }
    for (i, p) in parents.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        if p.name.is_empty() {
            r.add(format!("{at}.name"), "required");
        }
        if let Some(port) = p.port {
            r.range(format!("{at}.port"), i64::from(port), 1, 65535);
        }
        if let Some(section) = &p.section_name
            && let Err(msg) = syntax::dns_label(section)
        {
            r.add(format!("{at}.sectionName"), msg);
        }
    }
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.len() > 16 {
        r.add("spec.rules", format!("at most 16 rules, got {}", rules.len()));
    }
    let mut rule_names = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name
            && !rule_names.insert(name.as_str())
        {
            r.add(format!("{at}.name"), format!("duplicate rule name {name:?}"));
        }
        rule_checks(rule, &at, r);
    }
}

fn rule_checks(rule: &HttpRouteRules, at: &str, r: &mut Report) {
    let matches = rule.matches.as_deref().unwrap_or_default();
    if matches.len() > 64 {
        r.add(format!("{at}.matches"), format!("at most 64 matches, got {}", matches.len()));
    }
    let mut all_prefix = !matches.is_empty();
    for (j, m) in matches.iter().enumerate() {
        let mat = format!("{at}.matches[{j}]");
        let path_type = m.path.as_ref().and_then(|p| p.r#type.clone()).unwrap_or(PathType::PathPrefix);
        if path_type != PathType::PathPrefix {
            all_prefix = false;
        }
        if let Some(value) = m.path.as_ref().and_then(|p| p.value.as_deref()) {
            let checked = match path_type {
                PathType::RegularExpression => syntax::regex(value),
                _ => syntax::http_path(value),
            };
            if let Err(msg) = checked {
                r.add(format!("{mat}.path.value"), msg);
            }
        }
        let headers = m.headers.as_deref().unwrap_or_default();
        if headers.len() > 16 {
            r.add(format!("{mat}.headers"), format!("at most 16 header matches, got {}", headers.len()));
        }
        for (k, h) in headers.iter().enumerate() {
            let hat = format!("{mat}.headers[{k}]");
            if let Err(msg) = syntax::header_name(&h.name) {
                r.add(format!("{hat}.name"), msg);
            }
            if h.r#type == Some(HeaderMatchType::RegularExpression) {
                if let Err(msg) = syntax::regex(&h.value) {
                    r.add(format!("{hat}.value"), msg);
                }
            } else if let Err(msg) = syntax::header_value(&h.value) {
                r.add(format!("{hat}.value"), msg);
            }
        }
        let queries = m.query_params.as_deref().unwrap_or_default();
        if queries.len() > 16 {
            r.add(format!("{mat}.queryParams"), format!("at most 16 query matches, got {}", queries.len()));
        }
        for (k, q) in queries.iter().enumerate() {
            let qat = format!("{mat}.queryParams[{k}]");
            if q.name.is_empty() || q.name.len() > 256 {
                r.add(format!("{qat}.name"), "must be 1..256 characters");
            }
            if q.r#type == Some(QueryMatchType::RegularExpression)
                && let Err(msg) = syntax::regex(&q.value)
            {
                r.add(format!("{qat}.value"), msg);
            }
        }
    }

    let backends = rule.backend_refs.as_deref().unwrap_or_default();
    for (j, b) in backends.iter().enumerate() {
        let bat = format!("{at}.backendRefs[{j}]");
        backend_ref_checks(b.group.as_deref(), b.kind.as_deref(), &b.name, b.port, r, &bat);
        if let Some(w) = b.weight {
            r.range(format!("{bat}.weight"), i64::from(w), 0, 1_000_000);
        }
        let filters: Vec<HttpRouteRulesFilters> =
            b.filters.iter().flatten().filter_map(backend_filter_as_rule_filter).collect();
        filter_checks(&filters, &format!("{bat}.filters"), all_prefix, r);
    }

    let filters = rule.filters.as_deref().unwrap_or_default();
    filter_checks(filters, &format!("{at}.filters"), all_prefix, r);

    if let Some(t) = &rule.timeouts {
        let request = t.request.as_deref().map(|v| (v, syntax::gateway_duration(v)));
        let backend = t.backend_request.as_deref().map(|v| (v, syntax::gateway_duration(v)));
        if let Some((_, Err(msg))) = &request {
            r.add(format!("{at}.timeouts.request"), msg.clone());
        }
        if let Some((_, Err(msg))) = &backend {
            r.add(format!("{at}.timeouts.backendRequest"), msg.clone());
        }
        if let (Some((_, Ok(req))), Some((b, Ok(back)))) = (&request, &backend)
            && !req.is_zero()
            && back > req
        {
            r.add(format!("{at}.timeouts.backendRequest"), format!("{b} must not exceed timeouts.request"));
        }
    }
    if let Some(retry) = &rule.retry {
        if let Some(n) = retry.attempts {
            r.range(format!("{at}.retry.attempts"), n, 0, 100);
        }
        for (k, code) in retry.codes.iter().flatten().enumerate() {
            r.range(format!("{at}.retry.codes[{k}]"), *code, 400, 599);
        }
        if let Some(b) = &retry.backoff
            && let Err(msg) = syntax::gateway_duration(b)
        {
            r.add(format!("{at}.retry.backoff"), msg);
        }
    }
}

/// Checks a reference to a backend (a Service unless group/kind say otherwise).
pub(super) fn backend_ref_checks(
    group: Option<&str>,
    kind: Option<&str>,
    name: &str,
    port: Option<i32>,
    r: &mut Report,
    at: &str,
) {
    if name.is_empty() {
        r.add(format!("{at}.name"), "required");
    }
    let is_service = group.unwrap_or("").is_empty() && kind.unwrap_or("Service") == "Service";
    match port {
        Some(p) => r.range(format!("{at}.port"), i64::from(p), 1, 65535),
        None if is_service => r.add(format!("{at}.port"), "required when referring to a Service"),
        None => {}
    }
}

fn filter_checks(filters: &[HttpRouteRulesFilters], at: &str, all_prefix: bool, r: &mut Report) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut redirect = false;
    let mut rewrite = false;
    for (k, f) in filters.iter().enumerate() {
        let fat = format!("{at}[{k}]");
        let type_name = format!("{:?}", f.r#type);
        let repeatable = matches!(f.r#type, FilterType::RequestMirror | FilterType::ExtensionRef);
        if !repeatable && !seen.insert(type_name.clone()) {
            r.add(format!("{fat}.type"), format!("{} may appear only once per rule", filter_name(&f.r#type)));
        }
        let present = [
            (FilterType::RequestHeaderModifier, f.request_header_modifier.is_some()),
            (FilterType::ResponseHeaderModifier, f.response_header_modifier.is_some()),
            (FilterType::RequestMirror, f.request_mirror.is_some()),
            (FilterType::RequestRedirect, f.request_redirect.is_some()),
            (FilterType::UrlRewrite, f.url_rewrite.is_some()),
            (FilterType::ExtensionRef, f.extension_ref.is_some()),
            (FilterType::Cors, f.cors.is_some()),
            (FilterType::ExternalAuth, f.external_auth.is_some()),
        ];
        for (t, set) in present {
            if t == f.r#type && !set {
                r.add(format!("{fat}.{}", field_name(&t)), format!("required when type is {}", filter_name(&t)));
            } else if t != f.r#type && set {
                r.add(
                    format!("{fat}.{}", field_name(&t)),
                    format!("must not be set when type is {}", filter_name(&f.r#type)),
                );
            }
        }
        if let Some(m) = &f.request_header_modifier {
            header_modifier(
                m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                m.remove.as_deref().unwrap_or_default(),
                &format!("{fat}.requestHeaderModifier"),
                r,
            );
        }
        if let Some(m) = &f.response_header_modifier {
            header_modifier(
                m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                m.remove.as_deref().unwrap_or_default(),
                &format!("{fat}.responseHeaderModifier"),
                r,
            );
        }
        if let Some(red) = &f.request_redirect {
            redirect = true;
            let rat = format!("{fat}.requestRedirect");
            if let Some(code) = red.status_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                r.add(format!("{rat}.statusCode"), format!("must be one of 301, 302, 303, 307, 308, got {code}"));
            }
            if let Some(h) = &red.hostname
                && let Err(msg) = syntax::hostname(h, false)
            {
                r.add(format!("{rat}.hostname"), msg);
            }
            if let Some(p) = red.port {
                r.range(format!("{rat}.port"), i64::from(p), 1, 65535);
            }
            if let Some(p) = &red.path {
                let full = p.r#type == RedirectPathType::ReplaceFullPath;
                path_modifier(
                    full,
                    p.replace_full_path.as_deref(),
                    p.replace_prefix_match.as_deref(),
                    all_prefix,
                    &format!("{rat}.path"),
                    r,
                );
            }
        }
        if let Some(rw) = &f.url_rewrite {
            rewrite = true;
            let wat = format!("{fat}.urlRewrite");
            if let Some(h) = &rw.hostname
                && let Err(msg) = syntax::hostname(h, false)
            {
                r.add(format!("{wat}.hostname"), msg);
            }
            if let Some(p) = &rw.path {
                let full = p.r#type == RewritePathType::ReplaceFullPath;
                path_modifier(
                    full,
                    p.replace_full_path.as_deref(),
                    p.replace_prefix_match.as_deref(),
                    all_prefix,
                    &format!("{wat}.path"),
                    r,
                );
            }
        }
        if let Some(m) = &f.request_mirror {
            let mat = format!("{fat}.requestMirror");
            let b = &m.backend_ref;
            backend_ref_checks(b.group.as_deref(), b.kind.as_deref(), &b.name, b.port, r, &format!("{mat}.backendRef"));
            if let Some(p) = m.percent {
                r.range(format!("{mat}.percent"), i64::from(p), 0, 100);
            }
            if let Some(fr) = &m.fraction {
                let d = fr.denominator.unwrap_or(100);
                if d <= 0 {
                    r.add(format!("{mat}.fraction.denominator"), format!("must be positive, got {d}"));
                }
                if fr.numerator < 0 || fr.numerator > d.max(0) {
                    r.add(
                        format!("{mat}.fraction.numerator"),
                        format!("must be 0..denominator ({d}), got {}", fr.numerator),
                    );
                }
            }
            if m.percent.is_some() && m.fraction.is_some() {
                r.add(mat, "only one of percent and fraction may be set");
            }
        }
    }
    if redirect && rewrite {
        r.add(at, "RequestRedirect and URLRewrite cannot be used in the same rule");
    }
}

fn path_modifier(
    full: bool,
    full_path: Option<&str>,
    prefix: Option<&str>,
    all_prefix: bool,
    at: &str,
    r: &mut Report,
) {
    match (full, full_path, prefix) {
        (true, Some(p), None) => {
            if let Err(msg) = syntax::http_path(p) {
                r.add(format!("{at}.replaceFullPath"), msg);
            }
        }
        (false, None, Some(p)) => {
            if let Err(msg) = syntax::http_path(p) {
                r.add(format!("{at}.replacePrefixMatch"), msg);
            }
            if !all_prefix {
                r.add(
                    format!("{at}.replacePrefixMatch"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                );
            }
        }
        (true, _, _) => {
            r.add(format!("{at}.replaceFullPath"), "exactly replaceFullPath must be set when type is ReplaceFullPath")
        }
        (false, _, _) => r.add(
            format!("{at}.replacePrefixMatch"),
            "exactly replacePrefixMatch must be set when type is ReplacePrefixMatch",
        ),
    }
}

fn header_modifier<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: &[String],
    at: &str,
    r: &mut Report,
) {
    for (list, entries) in [("set", set.collect::<Vec<_>>()), ("add", add.collect::<Vec<_>>())] {
        let mut names = HashSet::new();
        if entries.len() > 16 {
            r.add(format!("{at}.{list}"), format!("at most 16 entries, got {}", entries.len()));
        }
        for (i, (name, value)) in entries.into_iter().enumerate() {
            if let Err(msg) = syntax::header_name(name) {
                r.add(format!("{at}.{list}[{i}].name"), msg);
            } else if !names.insert(name.to_ascii_lowercase()) {
                r.add(format!("{at}.{list}[{i}].name"), format!("duplicate header name {name:?}"));
            }
            if let Err(msg) = syntax::header_value(value) {
                r.add(format!("{at}.{list}[{i}].value"), msg);
            }
        }
    }
    let mut names = HashSet::new();
    for (i, name) in remove.iter().enumerate() {
        if let Err(msg) = syntax::header_name(name) {
            r.add(format!("{at}.remove[{i}]"), msg);
        } else if !names.insert(name.to_ascii_lowercase()) {
            r.add(format!("{at}.remove[{i}]"), format!("duplicate header name {name:?}"));
        }
    }
}

/// The `type:` spelling of a filter type.
pub fn filter_name(t: &FilterType) -> &'static str {
    match t {
        FilterType::RequestHeaderModifier => "RequestHeaderModifier",
        FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
        FilterType::RequestMirror => "RequestMirror",
        FilterType::RequestRedirect => "RequestRedirect",
        FilterType::UrlRewrite => "URLRewrite",
        FilterType::ExtensionRef => "ExtensionRef",
        FilterType::Cors => "CORS",
        FilterType::ExternalAuth => "ExternalAuth",
    }
}

fn field_name(t: &FilterType) -> &'static str {
    match t {
        FilterType::RequestHeaderModifier => "requestHeaderModifier",
        FilterType::ResponseHeaderModifier => "responseHeaderModifier",
        FilterType::RequestMirror => "requestMirror",
        FilterType::RequestRedirect => "requestRedirect",
        FilterType::UrlRewrite => "urlRewrite",
        FilterType::ExtensionRef => "extensionRef",
        FilterType::Cors => "cors",
        FilterType::ExternalAuth => "externalAuth",
    }
}

/// A parentRef's fields, whatever the route kind.
fn parent_checks<'a>(parents: impl ExactSizeIterator<Item = (&'a str, Option<i32>, Option<&'a str>)>, r: &mut Report) {
    if parents.len() > 32 {
        r.add("spec.parentRefs", format!("at most 32 parentRefs, got {}", parents.len()));
    }
    for (i, (name, port, section)) in parents.enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        if name.is_empty() {
            r.add(format!("{at}.name"), "required");
        }
        if let Some(port) = port {
            r.range(format!("{at}.port"), i64::from(port), 1, 65535);
        }
        if let Some(section) = section
            && let Err(msg) = syntax::dns_label(section)
        {
            r.add(format!("{at}.sectionName"), msg);
        }
    }
}

/// An L4 backendRef: a Service needs a port; weights in 0..=1,000,000.
fn l4_backend_checks<'a>(
    refs: impl ExactSizeIterator<Item = (&'a str, Option<&'a str>, Option<i32>, Option<i32>)>,
    at: &str,
    r: &mut Report,
) {
    if refs.len() == 0 {
        r.add(format!("{at}.backendRefs"), "at least one backendRef");
    }
    if refs.len() > 16 {
        r.add(format!("{at}.backendRefs"), format!("at most 16 backendRefs, got {}", refs.len()));
    }
    for (j, (name, kind, port, weight)) in refs.enumerate() {
        let at = format!("{at}.backendRefs[{j}]");
        if name.is_empty() {
            r.add(format!("{at}.name"), "required");
        }
        if kind.unwrap_or("Service") == "Service" && port.is_none() {
            r.add(format!("{at}.port"), "required when the backend is a Service");
        }
        if let Some(port) = port {
            r.range(format!("{at}.port"), i64::from(port), 1, 65535);
        }
        if let Some(w) = weight {
            r.range(format!("{at}.weight"), i64::from(w), 0, 1_000_000);
        }
    }
}

/// The parentRefs, rules and backendRefs of a TLSRoute or TCPRoute (different generated types,
/// the same fields).
macro_rules! l4_route_checks {
    ($spec:expr, $r:expr) => {
        let parents = $spec.parent_refs.as_deref().unwrap_or_default();
        parent_checks(parents.iter().map(|p| (p.name.as_str(), p.port, p.section_name.as_deref())), $r);
        if $spec.rules.is_empty() || $spec.rules.len() > 16 {
            $r.add("spec.rules", format!("1 to 16 rules, got {}", $spec.rules.len()));
        }
        for (i, rule) in $spec.rules.iter().enumerate() {
            let refs = rule.backend_refs.iter().map(|b| (b.name.as_str(), b.kind.as_deref(), b.port, b.weight));
            l4_backend_checks(refs, &format!("spec.rules[{i}]"), $r);
        }
    };
}

pub(super) fn tls_route(route: &crate::gw::TlsRoute, r: &mut Report) {
    let spec = &route.spec;
    if spec.hostnames.is_empty() {
        r.add("spec.hostnames", "at least one hostname: a TLSRoute is chosen by the ClientHello's SNI");
    }
    if spec.hostnames.len() > 16 {
        r.add("spec.hostnames", format!("at most 16 hostnames, got {}", spec.hostnames.len()));
    }
    for (i, h) in spec.hostnames.iter().enumerate() {
        if let Err(msg) = syntax::hostname(h, true) {
            r.add(format!("spec.hostnames[{i}]"), msg);
        }
    }
    l4_route_checks!(spec, r);
}

pub(super) fn tcp_route(route: &crate::gw::TcpRoute, r: &mut Report) {
    let spec = &route.spec;
    l4_route_checks!(spec, r);
}

pub(super) fn grpc_route(route: &crate::gw::GrpcRoute, r: &mut Report) {
    let spec = &route.spec;
    for (i, h) in spec.hostnames.iter().flatten().enumerate() {
        if let Err(msg) = syntax::hostname(h, true) {
            r.add(format!("spec.hostnames[{i}]"), msg);
        }
    }
    let parents = spec.parent_refs.as_deref().unwrap_or_default();
    parent_checks(parents.iter().map(|p| (p.name.as_str(), p.port, p.section_name.as_deref())), r);
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.len() > 16 {
        r.add("spec.rules", format!("at most 16 rules, got {}", rules.len()));
    }
    for (i, rule) in rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].matches[{j}]");
            if let Some(method) = &m.method {
                let regex = matches!(
                    method.r#type,
                    Some(crate::gw::grpcroutes::GrpcRouteRulesMatchesMethodType::RegularExpression)
                );
                if method.service.is_none() && method.method.is_none() {
                    r.add(format!("{at}.method"), "one of service or method is required");
                }
                for (field, value) in [("service", &method.service), ("method", &method.method)] {
                    let Some(v) = value else { continue };
                    if regex {
                        if let Err(e) = syntax::regex(v) {
                            r.add(format!("{at}.method.{field}"), e);
                        }
                    } else if v.contains('/') || v.is_empty() {
                        r.add(format!("{at}.method.{field}"), format!("{v:?} is not a gRPC {field} name"));
                    }
                }
            }
        }
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].backendRefs[{j}]");
            if b.kind.as_deref().unwrap_or("Service") == "Service" && b.port.is_none() {
                r.add(format!("{at}.port"), "required when the backend is a Service");
            }
            if let Some(w) = b.weight {
                r.range(format!("{at}.weight"), i64::from(w), 0, 1_000_000);
            }
        }
    }
}

pub(super) fn backend_tls_policy(p: &crate::gw::BackendTlsPolicy, r: &mut Report) {
    let spec = &p.spec;
    if spec.target_refs.is_empty() {
        r.add("spec.targetRefs", "at least one Service");
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        if !(t.group.is_empty() && t.kind == "Service") {
            r.add(format!("spec.targetRefs[{i}]"), format!("must be a core Service, got {}/{}", t.group, t.kind));
        }
    }
    let v = &spec.validation;
    if let Err(msg) = syntax::hostname(&v.hostname, false) {
        r.add("spec.validation.hostname", msg);
    }
    let refs = v.ca_certificate_refs.as_deref().unwrap_or_default();
    match (refs.is_empty(), v.well_known_ca_certificates.as_deref()) {
        (true, None) => r.add("spec.validation", "set caCertificateRefs or wellKnownCACertificates"),
        (false, Some(_)) => {
            r.add("spec.validation", "caCertificateRefs and wellKnownCACertificates exclude each other")
        }
        (_, Some(w)) if w != "System" => {
            r.add("spec.validation.wellKnownCACertificates", format!("must be System, got {w:?}"))
        }
        _ => {}
    }
    for (i, c) in refs.iter().enumerate() {
        if !(c.group.is_empty() && matches!(c.kind.as_str(), "ConfigMap" | "Secret")) {
            r.add(
                format!("spec.validation.caCertificateRefs[{i}]"),
                format!("must be a ConfigMap or Secret, got {}/{}", c.group, c.kind),
            );
        }
    }
}
