//! HTTPRoute rules compiled for the request path: matches, filters (header modifiers,
//! redirects, rewrites, mirrors, extension filters), weighted backends and timeouts; each route
//! compiled once, its entries placed wherever it attaches (gateway listeners, Service ports).

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use meshgate_api::gw::HttpRoute;
use meshgate_api::gw::httproutes::{
    HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType as HeaderMatchType, HttpRouteRulesMatchesMethod as M,
    HttpRouteRulesMatchesPathType as PathType, HttpRouteRulesMatchesQueryParamsType as QueryMatchType,
};
use meshgate_api::validate::{backend_filter_as_rule_filter, filter_name};
use meshgate_api::{GATEWAY_GROUP, Object};

use crate::host::HostPattern;
use crate::matching::{HeaderMatch, PathMatch, Pattern, QueryMatch, RouteMatch, ValueMatch};
use crate::resolve::{Discovery, Referrer};
use crate::rule::{
    Backend, HeaderModifier, Mirror, PathModifier, Redirect, RegexReplace, Rewrite, Rule, SourceRange, WeightedBackend,
};
use crate::status::age;
use crate::table::Entry;

/// An HTTPRoute's rules, compiled once for every parent (listener or Service port) it attaches
/// to.
pub(crate) struct CompiledRoute {
    key: Arc<str>,
    age: i64,
    rules: Vec<(Arc<Rule>, Vec<RouteMatch>)>,
}

impl CompiledRoute {
    /// Compiles `route` (object `o`); references that do not resolve are added to `unresolved`.
    pub(crate) fn new(
        o: &Object,
        route: &HttpRoute,
        disc: &Discovery<'_>,
        unresolved: &mut Vec<(String, &'static str, String)>,
    ) -> Self {
        Self::of_kind(o, "HTTPRoute", route, disc, unresolved)
    }

    /// As [`CompiledRoute::new`] for a route of `kind` (a GRPCRoute served as its HTTPRoute:
    /// references are checked as the GRPCRoute's).
    pub(crate) fn of_kind(
        o: &Object,
        kind: &'static str,
        route: &HttpRoute,
        disc: &Discovery<'_>,
        unresolved: &mut Vec<(String, &'static str, String)>,
    ) -> Self {
        let key: Arc<str> = match kind {
            "HTTPRoute" => format!("{}/{}", o.id.ns(), o.id.name).into(),
            kind => format!("{kind} {}/{}", o.id.ns(), o.id.name).into(),
        };
        let referrer = Referrer { group: GATEWAY_GROUP, kind, namespace: o.id.ns() };
        let rules = route
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| compile_rule(&key, i, r, disc, referrer, unresolved))
            .collect();
        CompiledRoute { key, age: age(o), rules }
    }

    /// Its match entries, answering for `hostnames` (empty: any host).
    pub(crate) fn entries<'a>(&'a self, hostnames: &'a [HostPattern]) -> impl Iterator<Item = Entry> + 'a {
        self.rules.iter().flat_map(move |(rule, matches)| {
            matches.iter().enumerate().map(move |(k, m)| Entry {
                hostnames: hostnames.to_vec(),
                matcher: m.clone(),
                rule: rule.clone(),
                order: (self.age, self.key.clone(), rule.index, k),
            })
        })
    }
}

fn compile_rule(
    route: &Arc<str>,
    index: usize,
    r: &HttpRouteRules,
    disc: &Discovery<'_>,
    referrer: Referrer<'_>,
    unresolved: &mut Vec<(String, &'static str, String)>,
) -> (Arc<Rule>, Vec<RouteMatch>) {
    let at = format!("spec.rules[{index}]");
    let mut rule = Rule {
        route: route.clone(),
        index,
        name: r.name.clone(),
        policy: crate::policy::RoutePolicy::from_rule(r),
        ..Rule::default()
    };
    let matches: Vec<RouteMatch> = match r.matches.as_deref() {
        None | Some([]) => vec![RouteMatch::any()],
        Some(ms) => ms.iter().filter_map(|m| compile_match(m).map_err(|e| rule.failure = Some(e)).ok()).collect(),
    };
    for (k, f) in r.filters.iter().flatten().enumerate() {
        apply_filter(&mut rule, f, disc, referrer, &format!("{at}.filters[{k}]"), unresolved);
    }
    let http2 = wants_http2(r, disc, referrer.namespace);
    for (j, b) in r.backend_refs.iter().flatten().enumerate() {
        let resolve =
            || disc.backend(referrer, b.group.as_deref(), b.kind.as_deref(), b.namespace.as_deref(), &b.name, b.port);
        let backend = if http2 { disc.over_h2c(resolve) } else { resolve() };
        if let Backend::Invalid { reason, message } = &backend {
            unresolved.push((format!("{at}.backendRefs[{j}]"), reason, message.clone()));
        }
        let mut wb = WeightedBackend::new(u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0), backend);
        for (k, f) in b.filters.iter().flatten().enumerate() {
            let Some(f) = backend_filter_as_rule_filter(f) else { continue };
            let field = format!("{at}.backendRefs[{j}].filters[{k}]");
            match f.r#type {
                FilterType::RequestHeaderModifier | FilterType::ResponseHeaderModifier | FilterType::RequestMirror => {
                    let mut scratch = Rule { route: route.clone(), index, ..Rule::default() };
                    apply_filter(&mut scratch, &f, disc, referrer, &field, unresolved);
                    wb.request_headers.extend(scratch.request_headers);
                    wb.response_headers.extend(scratch.response_headers);
                    rule.mirrors.extend(scratch.mirrors);
                }
                other => {
                    rule.failure =
                        Some(format!("{field}: filter {} on a backendRef is not supported", filter_name(&other)))
                }
            }
        }
        rule.total_weight += u64::from(wb.weight);
        rule.backends.push(wb);
    }
    (Arc::new(rule), matches)
}

/// What an HTTPRouteFilter sets on a rule (its backend protocol is read where the backends
/// resolve: [`wants_http2`]).
fn route_filter(rule: &mut Rule, spec: &meshgate_api::policy::HttpRouteFilterSpec) -> Result<(), String> {
    if let Some(m) = spec.url_rewrite.as_ref().and_then(|u| u.path.replace_regex_match.as_ref()) {
        let pattern = regex::Regex::new(&m.pattern).map_err(|e| format!("urlRewrite pattern: {e}"))?;
        let path = PathModifier::ReplaceRegexMatch(RegexReplace { pattern, substitution: m.substitution.clone() });
        match &mut rule.rewrite {
            Some(r) => r.path = Some(path),
            None => rule.rewrite = Some(Rewrite { hostname: None, path: Some(path) }),
        }
    }
    if let Some(limit) = spec.max_request_body_bytes.filter(|&l| l > 0) {
        rule.max_request_body = Some(limit);
    }
    for range in spec.allowed_source_ranges.iter().flatten() {
        let (addr, bits) = meshgate_api::validate::syntax::cidr(range)?;
        rule.source_ranges.push(SourceRange { addr, bits });
    }
    Ok(())
}

/// Whether an HTTPRouteFilter of the rule asks for its backends to be spoken to over HTTP/2.
fn wants_http2(r: &HttpRouteRules, disc: &Discovery<'_>, ns: &str) -> bool {
    r.filters.iter().flatten().filter_map(|f| f.extension_ref.as_ref()).any(|e| {
        e.group == meshgate_api::MESHGATE_GROUP
            && e.kind == "HTTPRouteFilter"
            && disc.route_filter(ns, &e.name).and_then(|s| s.backend_protocol.as_deref()) == Some("HTTP2")
    })
}

fn compile_match(m: &HttpRouteRulesMatches) -> Result<RouteMatch, String> {
    let path = match &m.path {
        None => PathMatch::prefix("/"),
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            match p.r#type.clone().unwrap_or(PathType::PathPrefix) {
                PathType::Exact => PathMatch::Exact(value.to_string()),
                PathType::PathPrefix => PathMatch::prefix(value),
                PathType::RegularExpression => {
                    PathMatch::RegularExpression(Pattern::new(value).map_err(|e| format!("path regex: {e}"))?)
                }
            }
        }
    };
    let method = m.method.as_ref().map(|m| match m {
        M::Get => Method::GET,
        M::Head => Method::HEAD,
        M::Post => Method::POST,
        M::Put => Method::PUT,
        M::Delete => Method::DELETE,
        M::Connect => Method::CONNECT,
        M::Options => Method::OPTIONS,
        M::Trace => Method::TRACE,
        M::Patch => Method::PATCH,
    });
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|e| e.to_string())?;
        if headers.iter().any(|x| x.name == name) {
            continue; // Only the first entry for a name counts (spec).
        }
        let value = match h.r#type.clone().unwrap_or(HeaderMatchType::Exact) {
            HeaderMatchType::Exact => ValueMatch::Exact(h.value.clone()),
            HeaderMatchType::RegularExpression => {
                ValueMatch::RegularExpression(Pattern::new(&h.value).map_err(|e| e.to_string())?)
            }
        };
        headers.push(HeaderMatch { name, value });
    }
    let mut query: Vec<QueryMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        if query.iter().any(|x| x.name == q.name) {
            continue;
        }
        let value = match q.r#type.clone().unwrap_or(QueryMatchType::Exact) {
            QueryMatchType::Exact => ValueMatch::Exact(q.value.clone()),
            QueryMatchType::RegularExpression => {
                ValueMatch::RegularExpression(Pattern::new(&q.value).map_err(|e| e.to_string())?)
            }
        };
        query.push(QueryMatch { name: q.name.clone(), value });
    }
    Ok(RouteMatch { path, method, headers, query })
}

fn header_modifier<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: &[String],
) -> Result<HeaderModifier, String> {
    let pair = |(n, v): (&str, &str)| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|e| format!("{n:?}: {e}"))?,
            HeaderValue::from_str(v).map_err(|e| format!("{v:?}: {e}"))?,
        ))
    };
    Ok(HeaderModifier {
        set: set.map(pair).collect::<Result<_, _>>()?,
        add: add.map(pair).collect::<Result<_, _>>()?,
        remove: remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|e| format!("{n:?}: {e}")))
            .collect::<Result<_, _>>()?,
    })
}

fn apply_filter(
    rule: &mut Rule,
    f: &HttpRouteRulesFilters,
    disc: &Discovery<'_>,
    referrer: Referrer<'_>,
    field: &str,
    unresolved: &mut Vec<(String, &'static str, String)>,
) {
    let result: Result<(), String> = (|| {
        match &f.r#type {
            FilterType::RequestHeaderModifier => {
                if let Some(m) = &f.request_header_modifier {
                    rule.request_headers.extend(header_modifier(
                        m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                        m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                        m.remove.as_deref().unwrap_or_default(),
                    )?);
                }
            }
            FilterType::ResponseHeaderModifier => {
                if let Some(m) = &f.response_header_modifier {
                    rule.response_headers.extend(header_modifier(
                        m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                        m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                        m.remove.as_deref().unwrap_or_default(),
                    )?);
                }
            }
            FilterType::RequestRedirect => {
                if let Some(r) = &f.request_redirect {
                    rule.redirect = Some(Redirect {
                        scheme: r.scheme.as_ref().map(|s| match s {
                            Scheme::Http => "http".to_string(),
                            Scheme::Https => "https".to_string(),
                        }),
                        hostname: r.hostname.clone(),
                        port: r.port.and_then(|p| u16::try_from(p).ok()),
                        path: r.path.as_ref().map(|p| match p.r#type {
                            RedirectPathType::ReplaceFullPath => {
                                PathModifier::ReplaceFullPath(p.replace_full_path.clone().unwrap_or_default())
                            }
                            RedirectPathType::ReplacePrefixMatch => {
                                PathModifier::ReplacePrefixMatch(p.replace_prefix_match.clone().unwrap_or_default())
                            }
                        }),
                        status_code: r.status_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(302),
                    });
                }
            }
            FilterType::UrlRewrite => {
                if let Some(r) = &f.url_rewrite {
                    rule.rewrite = Some(Rewrite {
                        hostname: r.hostname.clone(),
                        path: r.path.as_ref().map(|p| match p.r#type {
                            RewritePathType::ReplaceFullPath => {
                                PathModifier::ReplaceFullPath(p.replace_full_path.clone().unwrap_or_default())
                            }
                            RewritePathType::ReplacePrefixMatch => {
                                PathModifier::ReplacePrefixMatch(p.replace_prefix_match.clone().unwrap_or_default())
                            }
                        }),
                    });
                }
            }
            FilterType::RequestMirror => {
                if let Some(m) = &f.request_mirror {
                    let b = &m.backend_ref;
                    let backend = disc.backend(
                        referrer,
                        b.group.as_deref(),
                        b.kind.as_deref(),
                        b.namespace.as_deref(),
                        &b.name,
                        b.port,
                    );
                    if let Backend::Invalid { reason, message } = &backend {
                        unresolved.push((format!("{field}.requestMirror.backendRef"), reason, message.clone()));
                    }
                    let (numerator, denominator) = match (&m.fraction, m.percent) {
                        (Some(fr), _) => (fr.numerator, fr.denominator.unwrap_or(100)),
                        (None, Some(p)) => (p, 100),
                        (None, None) => (100, 100),
                    };
                    rule.mirrors.push(Mirror {
                        backend,
                        numerator: u32::try_from(numerator).unwrap_or(0),
                        denominator: u32::try_from(denominator).unwrap_or(100).max(1),
                    });
                }
            }
            FilterType::ExtensionRef => {
                let Some(ext) = &f.extension_ref else { return Ok(()) };
                let ns = referrer.namespace;
                match (ext.group.as_str(), ext.kind.as_str()) {
                    (meshgate_api::MESHGATE_GROUP, "FaultInjection") => match disc.fault(ns, &ext.name) {
                        Some(spec) => rule.fault = Some(crate::policy::Fault::from_spec(spec)),
                        None => return Err(format!("FaultInjection {ns}/{} not found", ext.name)),
                    },
                    (meshgate_api::MESHGATE_GROUP, "HTTPRouteFilter") => match disc.route_filter(ns, &ext.name) {
                        Some(spec) => route_filter(rule, spec)?,
                        None => return Err(format!("HTTPRouteFilter {ns}/{} not found", ext.name)),
                    },
                    (group, kind) => {
                        return Err(format!(
                            "extensionRef {group}/{kind} is not supported; meshgate understands {g}/FaultInjection and {g}/HTTPRouteFilter",
                            g = meshgate_api::MESHGATE_GROUP
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "filter {} is not supported by meshgate; requests to this rule get 500",
                    filter_name(other)
                ));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        unresolved.push((field.to_string(), "UnsupportedValue", e.clone()));
        rule.failure = Some(format!("{field}: {e}"));
    }
}
