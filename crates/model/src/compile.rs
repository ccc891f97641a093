//! The gateway compiler: Gateways, HTTPRoutes, Services and friends in; per-port listener sets
//! with sorted route tables and status conditions out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use meshgate_api::gw::HttpRoute;
use meshgate_api::gw::gateways::{GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From};
use meshgate_api::gw::httproutes::{
    HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType as HeaderMatchType, HttpRouteRulesMatchesMethod as M,
    HttpRouteRulesMatchesPathType as PathType, HttpRouteRulesMatchesQueryParamsType as QueryMatchType,
};
use meshgate_api::validate::{backend_filter_as_rule_filter, filter_name};
use meshgate_api::{GATEWAY_GROUP, Kind, Object, ResourceSet};
use serde::Serialize;

use crate::host::HostPattern;
use crate::matching::{HeaderMatch, PathMatch, Pattern, QueryMatch, RouteMatch, ValueMatch};
use crate::resolve::{Discovery, Referrer};
use crate::rule::{
    Backend, HeaderModifier, Mirror, PathModifier, Redirect, Rewrite, Rule, ServiceBackend, WeightedBackend,
};
use crate::status::{Condition, Severity};
use crate::table::{Entry, Listener, ListenerSet, RouteTable};

/// The controller name meshgate answers to in `GatewayClass.spec.controllerName`.
pub const CONTROLLER_NAME: &str = "meshgate.io/gateway-controller";
/// The GatewayClass meshgate serves without it being declared.
pub const DEFAULT_CLASS: &str = "meshgate";

/// What a gateway serves: HTTP listeners grouped by port.
#[derive(Debug, Default, Serialize)]
pub struct GatewayConfig {
    /// Port → listeners on it.
    pub ports: BTreeMap<u16, ListenerSet>,
    /// Every Service backend referenced, indexed by [`ServiceBackend::slot`].
    pub backends: Vec<Arc<ServiceBackend>>,
    /// For sidecars: the mesh as seen from this workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<crate::mesh::MeshOutbound>,
    /// How clients' connections are treated (MeshConfig `spec.downstream`).
    pub downstream: crate::security::Downstream,
}

/// The compiler's output.
#[derive(Debug, Default)]
pub struct Compiled {
    /// What to serve.
    pub config: GatewayConfig,
    /// Status conditions for every Gateway and HTTPRoute (problems and successes).
    pub conditions: Vec<Condition>,
}

impl Compiled {
    /// The conditions that report problems.
    pub fn problems(&self) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(|c| c.is_problem())
    }
}

struct Placed<'a> {
    gateway: Arc<str>,
    gw_ns: &'a str,
    listener: &'a GatewayListeners,
    hostname: Option<HostPattern>,
    entries: Vec<Entry>,
}

pub(crate) fn age(o: &Object) -> i64 {
    o.resource.metadata().creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

pub(crate) fn cond(
    o: &Object,
    field: String,
    kind: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
) -> Condition {
    Condition {
        object: o.id.clone(),
        file: o.source.file.clone(),
        field,
        kind,
        status,
        reason,
        message,
        severity: Severity::Warning,
    }
}

/// Compiles the gateway view of `set`.
pub fn compile_gateway(set: &ResourceSet) -> Compiled {
    let mut disc = Discovery::new(set);
    let mut conditions = Vec::new();
    let ns_labels: HashMap<&str, BTreeMap<String, String>> =
        set.namespaces().map(|(o, n)| (&*o.id.name, n.metadata.labels.clone().unwrap_or_default())).collect();

    // Gateways, oldest first: earlier listeners win conflicts.
    let mut gateways: Vec<_> = set.gateways().collect();
    gateways.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    let mut placed: Vec<Placed<'_>> = Vec::new();
    let mut by_gateway: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut port_family: HashMap<i32, (&str, Arc<str>)> = HashMap::new();
    for (o, gw) in gateways {
        let key: Arc<str> = format!("{}/{}", o.id.ns(), o.id.name).into();
        let class = &gw.spec.gateway_class_name;
        match set.lookup(Kind::GatewayClass, "", class).map(|c| &c.resource) {
            Some(meshgate_api::Resource::GatewayClass(c)) if c.spec.controller_name != CONTROLLER_NAME => {
                conditions.push(cond(
                    o,
                    "spec.gatewayClassName".into(),
                    "Accepted",
                    false,
                    "NotHandled",
                    format!(
                        "GatewayClass {class} belongs to controller {}, not {CONTROLLER_NAME}; not served here",
                        c.spec.controller_name
                    ),
                ));
                continue;
            }
            None if class != DEFAULT_CLASS => {
                conditions.push(cond(
                    o,
                    "spec.gatewayClassName".into(),
                    "Accepted",
                    false,
                    "InvalidParameters",
                    format!(
                        "GatewayClass {class:?} not found; declare it with controllerName {CONTROLLER_NAME}, or use {DEFAULT_CLASS:?}"
                    ),
                ));
                continue;
            }
            _ => {}
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
            if l.protocol != "HTTP" {
                conditions.push(cond(
                    o,
                    field,
                    "Programmed",
                    false,
                    "UnsupportedProtocol",
                    format!(
                        "listener {:?}: protocol {} is not served yet; only HTTP listeners are",
                        l.name, l.protocol
                    ),
                ));
                continue;
            }
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
            slots.push(placed.len());
            placed.push(Placed { gateway: key.clone(), gw_ns: o.id.ns(), listener: l, hostname, entries: Vec::new() });
        }
    }

    // Routes, oldest first.
    let mut routes: Vec<_> = set.http_routes().collect();
    routes.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    for (o, route) in routes {
        let mut unresolved: Vec<(String, &'static str, String)> = Vec::new();
        let compiled = CompiledRoute::new(o, route, &disc, &mut unresolved);
        let route_hosts: Vec<HostPattern> =
            route.spec.hostnames.iter().flatten().map(|h| HostPattern::parse(h)).collect();
        for (j, parent) in route.spec.parent_refs.iter().flatten().enumerate() {
            let field = format!("spec.parentRefs[{j}]");
            let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if group.is_empty() && kind == "Service" {
                continue; // A mesh (GAMMA) route: served by sidecars, not gateways.
            }
            if group != GATEWAY_GROUP || kind != "Gateway" {
                conditions.push(cond(
                    o,
                    field,
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("parent kind {group}/{kind} is not supported"),
                ));
                continue;
            }
            let ns = parent.namespace.as_deref().unwrap_or(o.id.ns());
            let Some(slots) = by_gateway.get(&(ns, parent.name.as_str())) else {
                let exists = set.lookup(Kind::Gateway, ns, &parent.name).is_some();
                let message = if exists {
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
                let p = &placed[slot];
                if parent.section_name.as_deref().is_some_and(|s| s != p.listener.name) {
                    continue;
                }
                if parent.port.is_some_and(|port| port != p.listener.port) {
                    continue;
                }
                if let Err(reason) = allowed(p, o.id.ns(), &ns_labels) {
                    why.get_or_insert(("NotAllowedByListeners", reason));
                    continue;
                }
                // Empty means any host; `None` means the route and listener share no hostname.
                let effective: Option<Vec<HostPattern>> = match (&p.hostname, route_hosts.is_empty()) {
                    (None, _) => Some(route_hosts.clone()),
                    (Some(l), true) => Some(vec![l.clone()]),
                    (Some(l), false) => {
                        let both: Vec<HostPattern> =
                            route_hosts.iter().filter_map(|r| HostPattern::intersect(l, r)).collect();
                        (!both.is_empty()).then_some(both)
                    }
                };
                let Some(effective) = effective else {
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
                placed[slot].entries.extend(compiled.entries(&effective));
            }
            if attached > 0 {
                conditions.push(cond(
                    o,
                    field,
                    "Accepted",
                    true,
                    "Accepted",
                    format!("attached to {attached} listener(s) of Gateway {ns}/{}", parent.name),
                ));
            } else {
                let (reason, message) = why.unwrap_or((
                    "NoMatchingParent",
                    format!(
                        "Gateway {ns}/{} has no HTTP listener{}{}",
                        parent.name,
                        parent.section_name.as_ref().map_or(String::new(), |s| format!(" named {s:?}")),
                        parent.port.map_or(String::new(), |p| format!(" on port {p}"))
                    ),
                ));
                conditions.push(cond(o, field, "Accepted", false, reason, message));
            }
        }
        if unresolved.is_empty() {
            conditions.push(cond(
                o,
                String::new(),
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved".into(),
            ));
        }
        for (field, reason, message) in unresolved {
            conditions.push(cond(o, field, "ResolvedRefs", false, reason, message));
        }
    }

    let mut ports: BTreeMap<u16, Vec<Listener>> = BTreeMap::new();
    for p in placed {
        let Ok(port) = u16::try_from(p.listener.port) else { continue };
        ports.entry(port).or_default().push(Listener {
            gateway: p.gateway,
            name: p.listener.name.clone(),
            hostname: p.hostname,
            routes: RouteTable::new(p.entries),
        });
    }
    conditions.append(&mut disc.policy_conditions);
    let config = GatewayConfig {
        ports: ports.into_iter().map(|(k, v)| (k, ListenerSet::new(v))).collect(),
        backends: disc.into_backends(),
        mesh: None,
        downstream: crate::security::mesh_settings(set).downstream,
    };
    Compiled { config, conditions }
}

/// Whether a listener admits HTTPRoutes from `route_ns`.
fn allowed(p: &Placed<'_>, route_ns: &str, ns_labels: &HashMap<&str, BTreeMap<String, String>>) -> Result<(), String> {
    let allowed_routes = p.listener.allowed_routes.as_ref();
    if let Some(kinds) = allowed_routes.and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty()) {
        let ok =
            kinds.iter().any(|k| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP);
        if !ok {
            return Err(format!("listener {:?} does not allow HTTPRoute", p.listener.name));
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
        let key: Arc<str> = format!("{}/{}", o.id.ns(), o.id.name).into();
        let referrer = Referrer { group: GATEWAY_GROUP, kind: "HTTPRoute", namespace: o.id.ns() };
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
    for (j, b) in r.backend_refs.iter().flatten().enumerate() {
        let backend =
            disc.backend(referrer, b.group.as_deref(), b.kind.as_deref(), b.namespace.as_deref(), &b.name, b.port);
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
                if ext.group != meshgate_api::MESHGATE_GROUP || ext.kind != "FaultInjection" {
                    return Err(format!(
                        "extensionRef {}/{} is not supported; meshgate understands {}/FaultInjection",
                        ext.group,
                        ext.kind,
                        meshgate_api::MESHGATE_GROUP
                    ));
                }
                match disc.fault(referrer.namespace, &ext.name) {
                    Some(spec) => rule.fault = Some(crate::policy::Fault::from_spec(spec)),
                    None => return Err(format!("FaultInjection {}/{} not found", referrer.namespace, ext.name)),
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
