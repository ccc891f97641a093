//! Kubernetes Ingress (`networking.k8s.io/v1`), served through the Gateway API route model:
//! the Ingresses of meshgate's IngressClasses become one Gateway (`meshgate-system/meshgate-ingress`:
//! an HTTP listener on the ingress HTTP port, an HTTPS listener per TLS host on the HTTPS port),
//! the ReferenceGrants that let it read the Ingresses' TLS Secrets, and an HTTPRoute per Ingress
//! rule (and one for the default backend). The gateway compiler then serves them as it serves
//! any Gateway API resource; `meshgate migrate ingress` prints the same resources.
//!
//! Path types: `Exact` is Gateway API's Exact; `Prefix` is PathPrefix (both match whole path
//! elements); `ImplementationSpecific` is read as Prefix, as ingress-nginx reads it without
//! `use-regex`. With `use-regex` (implied by `rewrite-target`, as in ingress-nginx) a Prefix or
//! ImplementationSpecific path is a regular expression matched case-insensitively from the
//! start of the path (nginx's `location ~* ^PATH`), and `rewrite-target` replaces the whole
//! path with the target, capture groups filled in (nginx's `rewrite (?i)PATH TARGET`): a
//! target without groups is a Gateway API ReplaceFullPath, one with groups an HTTPRouteFilter
//! ReplaceRegexMatch. `proxy-body-size`, `whitelist-source-range` and `backend-protocol`
//! (GRPC/H2C: HTTP/2 to the backend) go into an HTTPRouteFilter per Ingress; HTTPS and GRPCS
//! need a BackendTLSPolicy for the Service, since meshgate verifies what ingress-nginx by
//! default does not. `proxy-connect-timeout` becomes a TrafficPolicy for the backends'
//! Services (a connect timeout is a Service's in meshgate: connections are pooled per endpoint
//! and shared by every route), unless one already sets their policy. A path that cannot be served (another type, no leading `/`, a regex that
//! does not compile, a resource backend, a Service port name the Service does not have) is
//! reported and left out; the rest is served.

use std::collections::BTreeMap;

use meshgate_api::{GATEWAY_GROUP, Kind, Object, ObjectRef, ResourceSet};
use serde_json::{Value, json};

use crate::status::{Condition, age, cond};

/// The controller meshgate answers to in `IngressClass.spec.controller`.
pub const INGRESS_CONTROLLER: &str = "meshgate.io/ingress-controller";
/// The namespace of the Gateway that serves Ingresses.
pub const INGRESS_NAMESPACE: &str = "meshgate-system";
/// Its name.
pub const INGRESS_GATEWAY: &str = "meshgate-ingress";
/// The annotation that makes an IngressClass the default.
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation older Ingresses name their class with.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

pub use crate::settings::IngressPorts;

/// Gateway API resources equivalent to the Ingresses meshgate serves.
#[derive(Debug, Default)]
pub struct Translation {
    /// The resources, as JSON objects, each with the file it comes from (an Ingress's).
    pub docs: Vec<(std::sync::Arc<str>, Value)>,
    /// Comments for `meshgate migrate`: per resource (index into `docs`), what did not carry over.
    pub comments: BTreeMap<usize, Vec<String>>,
    /// What could not be served, on the Ingress it concerns.
    pub conditions: Vec<Condition>,
    /// The Ingresses served.
    pub handled: Vec<ObjectRef>,
}

impl Translation {
    /// The resources as objects, to compile with the rest.
    pub fn objects(&self) -> Vec<Object> {
        let mut out = Vec::new();
        for (file, doc) in &self.docs {
            let loaded = meshgate_api::load_str(file, &doc.to_string());
            out.extend(loaded.objects);
        }
        out
    }
}

/// The IngressClasses of meshgate's controller: their names, and the default one's.
fn classes(set: &ResourceSet) -> (Vec<String>, Option<String>) {
    let mut ours = Vec::new();
    let mut default = None;
    for (o, c) in set.ingress_classes() {
        if c.spec.as_ref().and_then(|s| s.controller.as_deref()) != Some(INGRESS_CONTROLLER) {
            continue;
        }
        ours.push(o.id.name.to_string());
        let annotations = c.metadata.annotations.as_ref();
        if annotations.and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).is_some_and(|v| v == "true") {
            default = Some(o.id.name.to_string());
        }
    }
    (ours, default)
}

/// Whether meshgate serves `ingress`: its class (`spec.ingressClassName`, else the older
/// annotation) is one of meshgate's, or it names none and meshgate's class is the default.
fn served(
    o: &Object,
    ingress: &meshgate_api::core::Ingress,
    ours: &[String],
    default: Option<&str>,
) -> Result<(), String> {
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| ingress.metadata.annotations.as_ref().and_then(|a| a.get(CLASS_ANNOTATION)).cloned());
    match (named, default) {
        (Some(c), _) if ours.contains(&c) => Ok(()),
        (Some(c), _) => Err(format!("IngressClass {c:?} is not meshgate's (controller {INGRESS_CONTROLLER})")),
        (None, Some(_)) => Ok(()),
        (None, None) => Err(format!(
            "no IngressClass named and no default one of controller {INGRESS_CONTROLLER} (annotation {DEFAULT_CLASS_ANNOTATION}: \"true\")"
        )),
    }
    .map_err(|e| format!("{}: not served: {e}", o.id))
}

/// A backendRef for an Ingress backend, or why there is none.
fn backend_ref(
    set: &ResourceSet,
    ns: &str,
    b: &meshgate_api::core::IngressBackend,
) -> Result<Value, (&'static str, String)> {
    if let Some(r) = &b.resource {
        return Err((
            "InvalidKind",
            format!("resource backend {} {}: meshgate serves Service backends only", r.kind, r.name),
        ));
    }
    let Some(s) = &b.service else {
        return Err(("BackendNotFound", "backend names no Service".into()));
    };
    let port = s.port.as_ref();
    let number = match (port.and_then(|p| p.number), port.and_then(|p| p.name.as_deref())) {
        (Some(n), _) => n,
        (None, Some(name)) => {
            let svc = set.lookup(Kind::Service, ns, &s.name).map(|o| &o.resource);
            let found = match svc {
                Some(meshgate_api::Resource::Service(svc)) => svc
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(name)))
                    .map(|p| p.port),
                _ => None,
            };
            found.ok_or_else(|| ("BackendNotFound", format!("Service {ns}/{} has no port named {name:?}", s.name)))?
        }
        (None, None) => return Err(("BackendNotFound", format!("backend Service {}: no port", s.name))),
    };
    Ok(json!({"name": s.name, "port": number}))
}

/// The ingress-nginx annotations meshgate maps (`nginx.ingress.kubernetes.io/NAME`).
const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// What an Ingress's ingress-nginx annotations ask for, as far as meshgate maps them.
#[derive(Debug, Default)]
struct Nginx {
    /// `rewrite-target`, as the prefix (or whole path, for Exact) a path is rewritten to.
    rewrite: Option<String>,
    /// `ssl-redirect` (true by default when the Ingress has TLS) or `force-ssl-redirect`.
    ssl_redirect: Option<bool>,
    force_ssl_redirect: bool,
    /// `permanent-redirect` (and `permanent-redirect-code`): every path answers with it.
    permanent_redirect: Option<(http::Uri, u16)>,
    /// `canary: "true"`, with `canary-weight` and `canary-by-header` (`canary-by-header-value`).
    canary: bool,
    canary_weight: Option<u32>,
    canary_header: Option<(String, Option<String>)>,
    /// `proxy-read-timeout` / `proxy-send-timeout` (seconds): the rule's backend timeout.
    backend_timeout: Option<u64>,
    /// `use-regex: "true"`, or implied by `rewrite-target` (as ingress-nginx implies it):
    /// Prefix and ImplementationSpecific paths are regular expressions, matched
    /// case-insensitively from the start of the path.
    regex: bool,
    /// `proxy-body-size` in bytes (`0`: no limit).
    body_size: Option<u64>,
    /// `whitelist-source-range`: the client ranges served.
    source_ranges: Vec<String>,
    /// `backend-protocol`: HTTP/2 to the backends (GRPC, GRPCS, H2C), and TLS (HTTPS, GRPCS).
    backend_http2: bool,
    backend_tls: bool,
    /// `proxy-connect-timeout` (seconds): a TrafficPolicy for the backends' Services.
    connect_timeout: Option<u64>,
    /// What is reported, for `migrate`'s comments.
    notes: Vec<String>,
}

/// Reads the ingress-nginx annotations of `o`; each one that is not mapped (or malformed) is
/// reported by name, never silently ignored.
fn nginx(o: &Object, meta: &meshgate_api::core::ObjectMeta, conditions: &mut Vec<Condition>) -> Nginx {
    let mut n = Nginx::default();
    let all = meta.annotations.clone().unwrap_or_default();
    let get = |name: &str| all.get(&format!("{NGINX}{name}")).map(String::as_str);
    let mut report = |n: &mut Nginx, name: &str, why: String| {
        let key = format!("{NGINX}{name}");
        let message = format!("annotation {key} is not applied: {why}");
        conditions.push(cond(
            o,
            format!("metadata.annotations[{key}]"),
            "Accepted",
            false,
            "UnsupportedValue",
            message.clone(),
        ));
        n.notes.push(message);
    };
    let seconds = |v: &str| v.trim().trim_end_matches('s').parse::<u64>().ok();
    for (key, value) in &all {
        let Some(name) = key.strip_prefix(NGINX) else { continue };
        match name {
            "rewrite-target" => {
                // ingress-nginx: `rewrite "(?i)PATH" TARGET`, the whole path replaced by the
                // target with the path's capture groups in it.
                if !value.starts_with('/') {
                    report(&mut n, name, format!("{value:?} is not a path"));
                } else {
                    n.rewrite = Some(value.clone());
                    n.regex = true;
                }
            }
            "use-regex" => n.regex |= value == "true",
            "proxy-body-size" => match nginx_size(value) {
                Some(bytes) => n.body_size = Some(bytes),
                None => report(&mut n, name, format!("{value:?} is not a size (bytes, or with k, m or g)")),
            },
            "whitelist-source-range" => {
                let mut ranges = Vec::new();
                for r in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    match meshgate_api::validate::syntax::cidr(r) {
                        Ok(_) => ranges.push(r.to_string()),
                        Err(e) => {
                            report(&mut n, name, format!("{e}; no range of it is applied"));
                            ranges.clear();
                            break;
                        }
                    }
                }
                n.source_ranges = ranges;
            }
            "backend-protocol" => match value.to_ascii_uppercase().as_str() {
                "HTTP" => {}
                "H2C" | "GRPC" => n.backend_http2 = true,
                "HTTPS" => n.backend_tls = true,
                "GRPCS" => (n.backend_http2, n.backend_tls) = (true, true),
                _ => report(
                    &mut n,
                    name,
                    format!("{value:?}: meshgate speaks HTTP, HTTPS, H2C, GRPC or GRPCS to backends"),
                ),
            },
            "ssl-redirect" => n.ssl_redirect = Some(value == "true"),
            "force-ssl-redirect" => n.force_ssl_redirect = value == "true",
            "permanent-redirect" => match value.parse::<http::Uri>() {
                Ok(u) if u.scheme().is_some() && u.host().is_some() => {
                    let code = get("permanent-redirect-code").and_then(|c| c.parse().ok()).unwrap_or(301);
                    n.permanent_redirect = Some((u, code));
                }
                _ => report(&mut n, name, format!("{value:?} is not an absolute URL")),
            },
            "permanent-redirect-code" => {
                if !matches!(value.parse::<u16>(), Ok(301 | 302 | 303 | 307 | 308)) {
                    report(&mut n, name, format!("{value:?}: a redirect is 301, 302, 303, 307 or 308"));
                }
            }
            "canary" => n.canary = value == "true",
            "canary-weight" => match value.parse::<u32>() {
                Ok(w) if w <= 100 => n.canary_weight = Some(w),
                _ => report(&mut n, name, format!("{value:?} is not a weight from 0 to 100")),
            },
            "canary-by-header" => {
                n.canary_header = Some((value.clone(), get("canary-by-header-value").map(str::to_string)))
            }
            "canary-by-header-value" => {}
            "proxy-read-timeout" | "proxy-send-timeout" => match seconds(value) {
                Some(s) => n.backend_timeout = Some(n.backend_timeout.map_or(s, |t| t.max(s))),
                None => report(&mut n, name, format!("{value:?} is not a number of seconds")),
            },
            "proxy-connect-timeout" => match seconds(value) {
                Some(s) if s > 0 => n.connect_timeout = Some(s),
                _ => report(&mut n, name, format!("{value:?} is not a number of seconds")),
            },
            other => report(&mut n, other, format!("meshgate has no equivalent of ingress-nginx's {other:?} yet")),
        }
    }
    n
}

/// An nginx size (`client_max_body_size`): bytes, or with `k`, `m` or `g` (either case).
fn nginx_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 'b'),
    };
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The target of `rewrite-target` in the syntax of HTTPRouteFilter substitutions: nginx's `$1`
/// is capture 1 followed by what comes next (`$1abc`), which `${1}` says unambiguously.
fn substitution(target: &str) -> String {
    let mut out = String::with_capacity(target.len() + 4);
    let mut chars = target.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push_str("${");
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                out.push(d);
            }
            out.push('}');
        } else {
            out.push(c);
        }
    }
    out
}

/// The rule for `path` of type `kind` to `backend`, with what the annotations ask for;
/// `extensions` are the HTTPRouteFilters it refers to.
fn rule(kind: &str, path: &str, backend: Value, n: &Nginx, extensions: &[String]) -> Value {
    let mut r = json!({"matches": [{"path": {"type": kind, "value": path}}]});
    if let Some((u, code)) = &n.permanent_redirect {
        let mut redirect = json!({"statusCode": code, "scheme": u.scheme_str(), "hostname": u.host()});
        if let Some(port) = u.port_u16() {
            redirect["port"] = json!(port);
        }
        redirect["path"] = json!({"type": "ReplaceFullPath", "replaceFullPath": u.path()});
        r["filters"] = json!([{"type": "RequestRedirect", "requestRedirect": redirect}]);
        return r;
    }
    let mut filters = Vec::new();
    if let Some(target) = n.rewrite.as_ref().filter(|t| !t.contains('$')) {
        // Without capture groups the whole path becomes the target: Gateway API says that.
        filters.push(json!({"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": target}}}));
    }
    for name in extensions {
        filters.push(json!({"type": "ExtensionRef", "extensionRef": {"group": meshgate_api::MESHGATE_GROUP, "kind": "HTTPRouteFilter", "name": name}}));
    }
    if !filters.is_empty() {
        r["filters"] = Value::Array(filters);
    }
    if let Some(secs) = n.backend_timeout {
        r["timeouts"] = json!({"backendRequest": format!("{secs}s")});
    }
    r["backendRefs"] = json!([backend]);
    r
}

/// An HTTPRouteFilter named `name` in `ns` with `spec`.
fn route_filter(name: &str, ns: &str, spec: Value) -> Value {
    json!({
        "apiVersion": format!("{}/v1alpha1", meshgate_api::MESHGATE_GROUP),
        "kind": "HTTPRouteFilter",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// Whether a BackendTLSPolicy in `ns` targets Service `svc`.
fn has_backend_tls(set: &ResourceSet, ns: &str, svc: &str) -> bool {
    set.backend_tls_policies()
        .any(|(o, p)| o.id.ns() == ns && p.spec.target_refs.iter().any(|r| r.kind == "Service" && r.name == svc))
}

/// A route being built: where it goes in the output, and its rules by (host, type, path) for
/// canaries to join.
struct Building {
    file: std::sync::Arc<str>,
    doc: Value,
    notes: Vec<String>,
}

/// The Gateway API resources for the Ingresses in `set` that meshgate serves.
pub fn translate(set: &ResourceSet, ports: &IngressPorts) -> Translation {
    let mut t = Translation::default();
    let (ours, default) = classes(set);
    let mut ingresses: Vec<_> = set.ingresses().collect();
    if ingresses.is_empty() {
        return t;
    }
    // Oldest first; canaries after the Ingresses they join.
    let is_canary = |o: &Object| {
        o.resource
            .metadata()
            .annotations
            .as_ref()
            .and_then(|a| a.get(&format!("{NGINX}canary")))
            .is_some_and(|v| v == "true")
    };
    ingresses.sort_by_key(|(o, _)| (is_canary(o), age(o), o.id.clone()));
    let mut listeners = vec![json!({
        "name": "http",
        "port": ports.http,
        "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]},
    })];
    // Secrets each namespace lets the Gateway read.
    let mut grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // TLS host → (the Ingress whose Secret serves it, the listener).
    let mut tls_hosts: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut routes: Vec<Building> = Vec::new();
    // (namespace, host, path type, path) → (route, rule) of the Ingress that serves it.
    let mut served_paths: BTreeMap<(String, String, String, String), (usize, usize)> = BTreeMap::new();
    // The HTTPRouteFilters the routes refer to.
    let mut filters: Vec<(std::sync::Arc<str>, Value)> = Vec::new();
    // TrafficPolicies for `proxy-connect-timeout`.
    let mut connect_policies: Vec<(std::sync::Arc<str>, Value)> = Vec::new();
    for (o, ing) in ingresses {
        if let Err(message) = served(o, ing, &ours, default.as_deref()) {
            t.conditions.push(cond(o, "spec.ingressClassName".into(), "Accepted", false, "NotHandled", message));
            continue;
        }
        t.handled.push(o.id.clone());
        let ns = o.id.ns();
        let n = nginx(o, &ing.metadata, &mut t.conditions);
        let Some(spec) = &ing.spec else { continue };
        // The Services this Ingress sends to (whose connect timeout `proxy-connect-timeout` sets).
        let mut services: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        // The annotations Gateway API has no field for, in one HTTPRouteFilter per Ingress.
        let mut shared = Vec::new();
        let mut extra = serde_json::Map::new();
        if let Some(bytes) = n.body_size.filter(|&b| b > 0) {
            extra.insert("maxRequestBodyBytes".into(), json!(bytes));
        }
        if !n.source_ranges.is_empty() {
            extra.insert("allowedSourceRanges".into(), json!(n.source_ranges));
        }
        if n.backend_http2 {
            extra.insert("backendProtocol".into(), json!("HTTP2"));
        }
        if !extra.is_empty() {
            let name = format!("{}-nginx", o.id.name);
            filters.push((o.source.file.clone(), route_filter(&name, ns, Value::Object(extra))));
            shared.push(name);
        }
        let mut own_tls: Vec<String> = Vec::new();
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let field = format!("spec.tls[{i}]");
            let Some(secret) = &tls.secret_name else {
                let message = "no secretName: TLS for these hosts needs a kubernetes.io/tls Secret".to_string();
                t.conditions.push(cond(o, field, "ResolvedRefs", false, "InvalidCertificateRef", message));
                continue;
            };
            let hosts: Vec<String> = tls.hosts.clone().unwrap_or_default();
            let hosts = if hosts.is_empty() { vec![String::new()] } else { hosts };
            for host in hosts {
                own_tls.push(host.clone());
                if let Some((owner, _)) = tls_hosts.get(&host) {
                    if owner != &o.id.to_string() {
                        let shown = if host.is_empty() { "<any>" } else { &host };
                        let message = format!("TLS host {shown} is already served with the Secret of {owner}");
                        t.conditions.push(cond(o, field.clone(), "Accepted", false, "HostnameConflict", message));
                    }
                    continue;
                }
                let name = format!("https-{}", listeners.len());
                tls_hosts.insert(host.clone(), (o.id.to_string(), name.clone()));
                let mut l = json!({
                    "name": name,
                    "port": ports.https,
                    "protocol": "HTTPS",
                    "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": secret, "namespace": ns}]},
                    "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]},
                });
                if !host.is_empty() {
                    l["hostname"] = json!(host);
                }
                listeners.push(l);
                let names = grants.entry(ns.to_string()).or_default();
                if !names.contains(secret) {
                    names.push(secret.clone());
                }
            }
        }
        let gateway = |section: Option<&str>| {
            let mut p = json!({"name": INGRESS_GATEWAY, "namespace": INGRESS_NAMESPACE});
            if let Some(s) = section {
                p["sectionName"] = json!(s);
            }
            p
        };
        let add = |routes: &mut Vec<Building>, name: String, host: Option<&str>, parents: Value, rules: Vec<Value>| {
            let mut spec = json!({"parentRefs": parents, "rules": rules});
            if let Some(h) = host {
                spec["hostnames"] = json!([h]);
            }
            let doc = json!({
                "apiVersion": format!("{GATEWAY_GROUP}/v1"),
                "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": ns, "labels": {"meshgate.io/ingress": o.id.name.to_string()}},
                "spec": spec,
            });
            routes.push(Building { file: o.source.file.clone(), doc, notes: n.notes.clone() });
            routes.len() - 1
        };
        for (i, r) in spec.rules.iter().flatten().enumerate() {
            let host = r.host.as_deref();
            let mut rules = Vec::new();
            let mut keys = Vec::new();
            for (j, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                let kind = match p.path_type.as_str() {
                    "Exact" => "Exact",
                    "Prefix" | "ImplementationSpecific" => "PathPrefix",
                    other => {
                        let message =
                            format!("pathType {other:?} is not Exact, Prefix or ImplementationSpecific: not served");
                        t.conditions.push(cond(
                            o,
                            format!("{field}.pathType"),
                            "Accepted",
                            false,
                            "UnsupportedValue",
                            message,
                        ));
                        continue;
                    }
                };
                if !path.starts_with('/') {
                    let message = format!("path {path:?} does not start with /: not served");
                    t.conditions.push(cond(o, format!("{field}.path"), "Accepted", false, "UnsupportedValue", message));
                    continue;
                }
                let backend = match backend_ref(set, ns, &p.backend) {
                    Ok(b) => b,
                    Err((reason, message)) => {
                        t.conditions.push(cond(o, format!("{field}.backend"), "ResolvedRefs", false, reason, message));
                        continue;
                    }
                };
                services.extend(backend["name"].as_str().map(str::to_string));
                if n.backend_tls
                    && let Some(svc) = backend["name"].as_str()
                    && !has_backend_tls(set, ns, svc)
                {
                    let message = format!(
                        "backend-protocol {}: meshgate verifies the certificates of TLS backends (ingress-nginx by default does not): add a BackendTLSPolicy for Service {ns}/{svc} with its CA and hostname; not served until then",
                        if n.backend_http2 { "GRPCS" } else { "HTTPS" }
                    );
                    t.conditions.push(cond(
                        o,
                        format!("{field}.backend"),
                        "ResolvedRefs",
                        false,
                        "InvalidBackendTLSPolicy",
                        message,
                    ));
                    continue;
                }
                // With use-regex (or rewrite-target) a Prefix path is a regular expression
                // matched case-insensitively from the path's start, as ingress-nginx's `~*`.
                let (match_kind, match_value) = if n.regex && kind == "PathPrefix" {
                    ("RegularExpression", format!("(?i){path}.*"))
                } else {
                    (kind, path.clone())
                };
                if match_kind == "RegularExpression"
                    && let Err(e) = regex::Regex::new(&match_value)
                {
                    let message = format!("path {path:?} is not a regular expression: {e}; not served");
                    t.conditions.push(cond(o, format!("{field}.path"), "Accepted", false, "UnsupportedValue", message));
                    continue;
                }
                let mut extensions = shared.clone();
                if let Some(target) = n.rewrite.as_ref().filter(|t| t.contains('$')) {
                    // Capture groups: the whole path replaced by the target with the groups in it.
                    let name = format!("{}-{i}-{j}-rewrite", o.id.name);
                    let pattern =
                        if kind == "Exact" { format!("^{}$", regex::escape(&path)) } else { format!("(?i)^{path}.*") };
                    let spec = json!({"urlRewrite": {"path": {"type": "ReplaceRegexMatch", "replaceRegexMatch": {"pattern": pattern, "substitution": substitution(target)}}}});
                    filters.push((o.source.file.clone(), route_filter(&name, ns, spec)));
                    extensions.push(name);
                }
                let key = (ns.to_string(), host.unwrap_or("").to_string(), kind.to_string(), path.clone());
                if n.canary {
                    // A canary joins the rule of the Ingress that serves the same path.
                    let Some(&(ri, rj)) = served_paths.get(&key) else {
                        let message =
                            format!("canary for {}{path}: no Ingress serves that host and path", host.unwrap_or("*"));
                        t.conditions.push(cond(o, field, "Accepted", false, "NoMatchingParent", message));
                        continue;
                    };
                    let main = &mut routes[ri].doc["spec"]["rules"];
                    if let Some(w) = n.canary_weight {
                        let refs = &mut main[rj]["backendRefs"];
                        if let Some(first) = refs.get_mut(0) {
                            first["weight"] = json!(100 - w);
                        }
                        if let Some(list) = refs.as_array_mut() {
                            let mut canary = backend.clone();
                            canary["weight"] = json!(w);
                            list.push(canary);
                        }
                    }
                    if let Some((header, value)) = &n.canary_header {
                        // The main Ingress's rule (its rewrite, timeouts and filters: a
                        // canary's other annotations are ignored, as ingress-nginx ignores
                        // them), to the canary's backend.
                        let mut by_header = main[rj].clone();
                        by_header["backendRefs"] = json!([backend]);
                        by_header["matches"][0]["headers"] =
                            json!([{"name": header, "value": value.as_deref().unwrap_or("always")}]);
                        if let Some(list) = main.as_array_mut() {
                            list.push(by_header);
                        }
                    }
                    continue;
                }
                keys.push((key, rules.len()));
                rules.push(rule(match_kind, &match_value, backend, &n, &extensions));
            }
            if rules.is_empty() {
                continue;
            }
            let tls = host.is_some_and(|h| own_tls.iter().any(|t| t == h)) || own_tls.iter().any(String::is_empty);
            let redirect = n.force_ssl_redirect || (tls && n.ssl_redirect != Some(false));
            let name = format!("{}-{i}", o.id.name);
            let index = if redirect {
                // HTTPS serves; plain HTTP answers 308 to the same URL over HTTPS (ingress-nginx).
                let https: Vec<Value> = tls_hosts
                    .iter()
                    .filter(|(h, _)| host.is_none() || h.is_empty() || Some(h.as_str()) == host)
                    .map(|(_, (_, l))| gateway(Some(l)))
                    .collect();
                let to_https: Vec<Value> = rules
                    .iter()
                    .map(|r| {
                        json!({"matches": r["matches"], "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 308}}]})
                    })
                    .collect();
                add(&mut routes, format!("{name}-to-https"), host, json!([gateway(Some("http"))]), to_https);
                add(&mut routes, name, host, Value::Array(https), rules)
            } else {
                add(&mut routes, name, host, json!([gateway(None)]), rules)
            };
            for (key, j) in keys {
                served_paths.entry(key).or_insert((index, j));
            }
        }
        if let Some(b) = &spec.default_backend {
            match backend_ref(set, ns, b) {
                Ok(b) => {
                    services.extend(b["name"].as_str().map(str::to_string));
                    let rules = vec![rule("PathPrefix", "/", b, &n, &shared)];
                    add(&mut routes, format!("{}-default", o.id.name), None, json!([gateway(None)]), rules);
                }
                Err((reason, message)) => {
                    t.conditions.push(cond(o, "spec.defaultBackend".into(), "ResolvedRefs", false, reason, message));
                }
            }
        }
        // A connect timeout is the Service's in meshgate (connections are pooled per endpoint
        // and shared by every route): a TrafficPolicy, unless one already sets the Service's.
        let Some(secs) = n.connect_timeout else { continue };
        for svc in &services {
            let key = format!("{NGINX}proxy-connect-timeout");
            if let Some(other) = set.traffic_policies().find(|(po, p)| {
                po.id.ns() == ns && p.spec.target_refs.iter().any(|r| r.kind == "Service" && r.name == *svc)
            }) {
                let message = format!(
                    "annotation {key} is not applied to Service {ns}/{svc}: TrafficPolicy {} already sets its policy; set spec.timeouts.connect there",
                    other.0.id
                );
                t.conditions.push(cond(
                    o,
                    format!("metadata.annotations[{key}]"),
                    "Accepted",
                    false,
                    "Conflicted",
                    message,
                ));
                continue;
            }
            connect_policies.push((
                o.source.file.clone(),
                json!({
                    "apiVersion": format!("{}/v1alpha1", meshgate_api::MESHGATE_GROUP),
                    "kind": "TrafficPolicy",
                    "metadata": {"name": format!("{}-{svc}-connect", o.id.name), "namespace": ns},
                    "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": svc}], "timeouts": {"connect": format!("{secs}s")}},
                }),
            ));
        }
    }
    if t.handled.is_empty() {
        return t;
    }
    t.docs.extend(connect_policies);
    let gateway_file: std::sync::Arc<str> = "<ingress>".into();
    t.docs.push((
        gateway_file.clone(),
        json!({
            "apiVersion": format!("{GATEWAY_GROUP}/v1"),
            "kind": "Gateway",
            "metadata": {"name": INGRESS_GATEWAY, "namespace": INGRESS_NAMESPACE},
            "spec": {"gatewayClassName": crate::listeners::DEFAULT_CLASS, "listeners": listeners},
        }),
    ));
    for (ns, secrets) in grants {
        let to: Vec<Value> = secrets.iter().map(|s| json!({"group": "", "kind": "Secret", "name": s})).collect();
        t.docs.push((
            gateway_file.clone(),
            json!({
                "apiVersion": format!("{GATEWAY_GROUP}/v1beta1"),
                "kind": "ReferenceGrant",
                "metadata": {"name": INGRESS_GATEWAY, "namespace": ns},
                "spec": {"from": [{"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": INGRESS_NAMESPACE}], "to": to},
            }),
        ));
    }
    t.docs.extend(filters);
    for b in routes {
        if !b.notes.is_empty() {
            t.comments.insert(t.docs.len(), b.notes);
        }
        t.docs.push((b.file, b.doc));
    }
    t
}

/// Ingress `status.loadBalancer` for the Ingresses served, with the gateway's `address`.
pub fn status(t: &Translation, addresses: &[std::net::IpAddr]) -> Vec<crate::gwstatus::ResourceStatus> {
    let ingress: Vec<Value> = addresses.iter().map(|a| json!({"ip": a.to_string()})).collect();
    t.handled
        .iter()
        .map(|id| crate::gwstatus::ResourceStatus {
            object: id.clone(),
            status: if ingress.is_empty() {
                json!({"loadBalancer": {}})
            } else {
                json!({"loadBalancer": {"ingress": ingress}})
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(yaml: &str) -> Translation {
        let loaded = meshgate_api::load_str(&"t.yaml".into(), yaml);
        assert!(loaded.errors.is_empty(), "{}", loaded.errors);
        translate(&ResourceSet::from_objects(loaded.objects).0, &IngressPorts::default())
    }

    fn route<'a>(t: &'a Translation, name: &str) -> &'a Value {
        t.docs.iter().map(|(_, d)| d).find(|d| d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {name}"))
    }

    const CLASS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: mg}\nspec: {controller: meshgate.io/ingress-controller}\n";

    #[test]
    fn nginx_sizes_and_substitutions() {
        assert_eq!(nginx_size("1k"), Some(1024));
        assert_eq!(nginx_size("8M"), Some(8 << 20));
        assert_eq!(nginx_size("2g"), Some(2 << 30));
        assert_eq!(nginx_size("512"), Some(512));
        assert_eq!(nginx_size("0"), Some(0));
        assert_eq!(nginx_size("lots"), None);
        assert_eq!(nginx_size("1t"), None);
        assert_eq!(substitution("/$2"), "/${2}");
        assert_eq!(substitution("/v$1abc/$12"), "/v${1}abc/${12}");
        assert_eq!(substitution("/price$"), "/price$");
    }

    #[test]
    fn annotations_map_to_route_fields() {
        let t = translated(&format!(
            r#"{CLASS}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: a
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/proxy-read-timeout: "20"
    nginx.ingress.kubernetes.io/proxy-send-timeout: "45"
    nginx.ingress.kubernetes.io/proxy-connect-timeout: "7"
    nginx.ingress.kubernetes.io/permanent-redirect-code: "308"
spec:
  ingressClassName: mg
  rules: [{{host: a.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: a-canary
  namespace: web
  annotations: {{nginx.ingress.kubernetes.io/canary: "true", nginx.ingress.kubernetes.io/canary-weight: "25"}}
spec:
  ingressClassName: mg
  rules: [{{host: a.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web-v2, port: {{number: 80}}}}}}}}]}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: lonely-canary
  namespace: web
  annotations: {{nginx.ingress.kubernetes.io/canary: "true", nginx.ingress.kubernetes.io/canary-weight: "300"}}
spec:
  ingressClassName: mg
  rules: [{{host: b.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}}}]
"#
        ));
        let a = route(&t, "a-0");
        // The longer of the read and send timeouts bounds the backend request.
        assert_eq!(a["spec"]["rules"][0]["timeouts"]["backendRequest"], "45s");
        // The connect timeout is the Service's: a TrafficPolicy for it, which compiles.
        let p = route(&t, "a-web-connect");
        assert_eq!(
            (p["kind"].as_str(), p["spec"]["timeouts"]["connect"].as_str()),
            (Some("TrafficPolicy"), Some("7s"))
        );
        assert_eq!(p["spec"]["targetRefs"][0]["name"], "web");
        assert!(t.objects().iter().any(|o| o.id.name.as_ref() == "a-web-connect"), "it loads");
        // The canary joined the main rule, 75/25.
        assert_eq!(
            a["spec"]["rules"][0]["backendRefs"],
            json!([{"name": "web", "port": 80, "weight": 75}, {"name": "web-v2", "port": 80, "weight": 25}])
        );
        let reasons: Vec<(String, &str)> =
            t.conditions.iter().map(|c| (format!("{} {}", c.object.name, c.field), c.reason)).collect();
        assert!(
            reasons.iter().any(|(at, r)| at
                .contains("lonely-canary metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]")
                && *r == "UnsupportedValue"),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|(at, r)| at.contains("lonely-canary spec.rules[0]") && *r == "NoMatchingParent"),
            "{reasons:?}"
        );
        assert!(!t.docs.iter().any(|(_, d)| d["metadata"]["name"] == "lonely-canary-0"));
    }
}
