//! Security policy compiled for one workload: its mTLS mode (mesh → namespace → workload →
//! port, most specific wins) and its authorization rules (DENY first; once any ALLOW policy
//! applies, only requests matching one of its rules pass; AUDIT only logs).

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName};
use meshgate_api::security::{AuthorizationPolicy, AuthzAction, MtlsMode, PeerAuthentication, WorkloadSelector};
use meshgate_api::{Object, ResourceSet};
use serde::Serialize;

use crate::settings::MeshSettings;
use crate::status::age;

/// Effective mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mode {
    /// mTLS only.
    Strict,
    /// mTLS or plaintext.
    Permissive,
    /// No TLS.
    Disable,
}

/// The workload a policy is compiled for.
#[derive(Debug, Clone)]
pub struct WorkloadRef<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Labels.
    pub labels: BTreeMap<&'a str, &'a str>,
}

fn selects(selector: Option<&WorkloadSelector>, w: &WorkloadRef<'_>) -> bool {
    selector.is_none_or(|s| meshgate_api::selector_matches(&s.match_labels, &w.labels))
}

fn mode_of(m: MtlsMode) -> Option<Mode> {
    match m {
        MtlsMode::Unset => None,
        MtlsMode::Strict => Some(Mode::Strict),
        MtlsMode::Permissive => Some(Mode::Permissive),
        MtlsMode::Disable => Some(Mode::Disable),
    }
}

/// How a string value is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StrMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Anything present.
    Any,
}

impl StrMatch {
    fn parse(v: &str, strip_spiffe: bool) -> StrMatch {
        let v = if strip_spiffe { v.strip_prefix("spiffe://").unwrap_or(v) } else { v };
        if v == "*" {
            StrMatch::Any
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.to_string())
        } else {
            StrMatch::Exact(v.to_string())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => e == v,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
            StrMatch::Any => true,
        }
    }
}

/// An attribute passes a rule's pair of lists: any of `values` (or `values` empty) and none of
/// `not_values`.
fn allowed(values: &[StrMatch], not_values: &[StrMatch], v: Option<&str>) -> bool {
    (values.is_empty() || any_match(values, v)) && !any_match(not_values, v)
}

fn any_match(list: &[StrMatch], v: Option<&str>) -> bool {
    v.is_some_and(|v| list.iter().any(|m| m.matches(v)))
}

/// One compiled rule.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    principals: Vec<StrMatch>,
    not_principals: Vec<StrMatch>,
    namespaces: Vec<StrMatch>,
    not_namespaces: Vec<StrMatch>,
    from_given: bool,
    methods: Vec<StrMatch>,
    not_methods: Vec<StrMatch>,
    paths: Vec<StrMatch>,
    not_paths: Vec<StrMatch>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    to_given: bool,
    #[serde(skip)]
    when: Vec<(Key, Vec<StrMatch>, Vec<StrMatch>)>,
}

#[derive(Debug, Clone)]
enum Key {
    Header(HeaderName),
    Principal,
    Namespace,
}

/// What is known about a request (or, for TCP, a connection).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// Peer SPIFFE ID without `spiffe://` (None: plaintext).
    pub principal: Option<&'a str>,
    /// Peer namespace (from the SPIFFE ID).
    pub namespace: Option<&'a str>,
    /// HTTP method (None: TCP).
    pub method: Option<&'a str>,
    /// HTTP path without query (None: TCP).
    pub path: Option<&'a str>,
    /// Workload port.
    pub port: u16,
    /// HTTP headers (None: TCP).
    pub headers: Option<&'a HeaderMap>,
}

impl Rule {
    fn compile(r: &meshgate_api::security::AuthzRule) -> Rule {
        let mut out = Rule::default();
        // Alternatives within `from` (and `to`) are ORed; Istio flattens them the same way for
        // the common one-entry case. Several entries: any may match.
        for f in &r.from {
            let s = &f.source;
            out.from_given = true;
            out.principals.extend(s.principals.iter().map(|v| StrMatch::parse(v, true)));
            out.not_principals.extend(s.not_principals.iter().map(|v| StrMatch::parse(v, true)));
            out.namespaces.extend(s.namespaces.iter().map(|v| StrMatch::parse(v, false)));
            out.not_namespaces.extend(s.not_namespaces.iter().map(|v| StrMatch::parse(v, false)));
        }
        for t in &r.to {
            let o = &t.operation;
            out.to_given = true;
            out.methods.extend(o.methods.iter().map(|v| StrMatch::parse(v, false)));
            out.not_methods.extend(o.not_methods.iter().map(|v| StrMatch::parse(v, false)));
            out.paths.extend(o.paths.iter().map(|v| StrMatch::parse(v, false)));
            out.not_paths.extend(o.not_paths.iter().map(|v| StrMatch::parse(v, false)));
            out.ports.extend(o.ports.iter().filter_map(|p| p.parse::<u16>().ok()));
            out.not_ports.extend(o.not_ports.iter().filter_map(|p| p.parse::<u16>().ok()));
        }
        for c in &r.when {
            let key = if c.key == "source.principal" {
                Key::Principal
            } else if c.key == "source.namespace" {
                Key::Namespace
            } else {
                match c.key.strip_prefix("request.headers[").and_then(|h| h.strip_suffix(']')) {
                    Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                        Ok(n) => Key::Header(n),
                        Err(_) => continue,
                    },
                    None => continue,
                }
            };
            let strip = matches!(key, Key::Principal);
            out.when.push((
                key,
                c.values.iter().map(|v| StrMatch::parse(v, strip)).collect(),
                c.not_values.iter().map(|v| StrMatch::parse(v, strip)).collect(),
            ));
        }
        out
    }

    /// Whether the rule uses HTTP-only attributes (methods, paths, headers).
    fn http_only(&self) -> bool {
        !self.methods.is_empty()
            || !self.not_methods.is_empty()
            || !self.paths.is_empty()
            || !self.not_paths.is_empty()
            || self.when.iter().any(|(k, _, _)| matches!(k, Key::Header(_)))
    }

    /// Whether the request matches. For TCP, a rule with HTTP-only parts matches only when
    /// `tcp_http_only_matches` (true for DENY: refuse when in doubt; false for ALLOW).
    fn matches(&self, a: &Attributes<'_>, tcp_http_only_matches: bool) -> bool {
        if a.method.is_none() && self.http_only() {
            return tcp_http_only_matches;
        }
        if !allowed(&self.principals, &self.not_principals, a.principal)
            || !allowed(&self.namespaces, &self.not_namespaces, a.namespace)
            || !allowed(&self.methods, &self.not_methods, a.method)
            || !allowed(&self.paths, &self.not_paths, a.path)
        {
            return false;
        }
        if !self.ports.is_empty() && !self.ports.contains(&a.port) {
            return false;
        }
        if self.not_ports.contains(&a.port) {
            return false;
        }
        for (key, values, not_values) in &self.when {
            let v: Option<&str> = match key {
                Key::Principal => a.principal,
                Key::Namespace => a.namespace,
                Key::Header(h) => a.headers.and_then(|hs| hs.get(h)).and_then(|v| v.to_str().ok()),
            };
            if !allowed(values, not_values, v) {
                return false;
            }
        }
        true
    }
}

/// A policy's rules, with its name for the decision log.
#[derive(Debug, Clone, Serialize)]
pub struct NamedPolicy {
    /// `namespace/name`.
    pub name: String,
    /// Rules (any may match; none: matches nothing).
    pub rules: Vec<Rule>,
}

/// The outcome of authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; by which ALLOW policy (None: no ALLOW policy applies).
    Allow(Option<String>),
    /// Denied; by which policy, or because no ALLOW policy matched.
    Deny(String),
}

/// Authorization for one workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Authz {
    /// DENY policies.
    pub deny: Vec<NamedPolicy>,
    /// ALLOW policies.
    pub allow: Vec<NamedPolicy>,
    /// AUDIT policies.
    pub audit: Vec<NamedPolicy>,
}

impl Authz {
    /// Decides; also returns the AUDIT policies that matched.
    pub fn check(&self, a: &Attributes<'_>) -> (Decision, Vec<&str>) {
        let audits: Vec<&str> = self
            .audit
            .iter()
            .filter(|p| p.rules.iter().any(|r| r.matches(a, false)))
            .map(|p| p.name.as_str())
            .collect();
        if let Some(p) = self.deny.iter().find(|p| p.rules.iter().any(|r| r.matches(a, true))) {
            return (Decision::Deny(format!("denied by AuthorizationPolicy {}", p.name)), audits);
        }
        if self.allow.is_empty() {
            return (Decision::Allow(None), audits);
        }
        match self.allow.iter().find(|p| p.rules.iter().any(|r| r.matches(a, false))) {
            Some(p) => (Decision::Allow(Some(p.name.clone())), audits),
            None => {
                let names: Vec<&str> = self.allow.iter().map(|p| p.name.as_str()).collect();
                (Decision::Deny(format!("no ALLOW rule matched ({})", names.join(", "))), audits)
            }
        }
    }
}

/// What an inbound proxy enforces for its workload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPolicy {
    /// mTLS mode for ports without their own.
    pub mode: Mode,
    /// Per application port.
    pub port_modes: BTreeMap<u16, Mode>,
    /// Authorization.
    pub authz: Authz,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        InboundPolicy { mode: Mode::Permissive, port_modes: BTreeMap::new(), authz: Authz::default() }
    }
}

impl InboundPolicy {
    /// The mode for an application port.
    pub fn mode_for(&self, port: u16) -> Mode {
        self.port_modes.get(&port).copied().unwrap_or(self.mode)
    }
}

/// Compiles the inbound policy of one workload.
pub fn compile_inbound(set: &ResourceSet, settings: &MeshSettings, w: &WorkloadRef<'_>) -> InboundPolicy {
    let root = settings.root_namespace.as_str();
    let mut pas: Vec<(&Object, &PeerAuthentication)> = set.peer_authentications().collect();
    pas.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    let level = |o: &Object, p: &PeerAuthentication| -> Option<u8> {
        let ns = o.id.ns();
        match &p.spec.selector {
            None if ns == root => Some(0),
            None if ns == w.namespace => Some(1),
            Some(sel) if ns == w.namespace && selects(Some(sel), w) => Some(2),
            _ => None,
        }
    };
    let mut mode = Mode::Permissive;
    let mut port_modes = BTreeMap::new();
    for lvl in 0..=2 {
        // The oldest policy at a level applies; later ones at the same level are ignored.
        if let Some((_, p)) = pas.iter().find(|(o, p)| level(o, p) == Some(lvl)) {
            if let Some(m) = p.spec.mtls.as_ref().and_then(|m| mode_of(m.mode)) {
                mode = m;
            }
            if lvl == 2 {
                for (port, m) in &p.spec.port_level_mtls {
                    if let (Ok(port), Some(m)) = (port.parse::<u16>(), mode_of(m.mode)) {
                        port_modes.insert(port, m);
                    }
                }
            }
        }
    }
    let mut authz = Authz::default();
    let mut aps: Vec<(&Object, &AuthorizationPolicy)> = set
        .authorization_policies()
        .filter(|(o, a)| (o.id.ns() == root || o.id.ns() == w.namespace) && selects(a.spec.selector.as_ref(), w))
        .collect();
    aps.sort_by_key(|(o, _)| (age(o), o.id.clone()));
    for (o, a) in aps {
        let named = NamedPolicy {
            name: format!("{}/{}", o.id.ns(), o.id.name),
            rules: a.spec.rules.iter().map(Rule::compile).collect(),
        };
        match a.spec.action {
            AuthzAction::Allow => authz.allow.push(named),
            AuthzAction::Deny => authz.deny.push(named),
            AuthzAction::Audit => authz.audit.push(named),
        }
    }
    InboundPolicy { mode, port_modes, authz }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> ResourceSet {
        let loaded = meshgate_api::load_str(&"t.yaml".into(), yaml);
        assert!(loaded.errors.is_empty(), "{}", loaded.errors);
        ResourceSet::from_objects(loaded.objects).0
    }

    fn inventory() -> WorkloadRef<'static> {
        WorkloadRef { namespace: "shop", labels: BTreeMap::from([("app", "inventory")]) }
    }

    #[test]
    fn modes_from_mesh_to_port() {
        let s = set(r#"
apiVersion: meshgate.io/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: meshgate-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: meshgate.io/v1alpha1
kind: PeerAuthentication
metadata: {name: ns, namespace: shop}
spec: {mtls: {mode: UNSET}}
---
apiVersion: meshgate.io/v1alpha1
kind: PeerAuthentication
metadata: {name: inv, namespace: shop}
spec:
  selector: {matchLabels: {app: inventory}}
  portLevelMtls: {"9090": {mode: DISABLE}}
"#);
        let p = compile_inbound(&s, &MeshSettings::default(), &inventory());
        assert_eq!(p.mode_for(8080), Mode::Strict, "UNSET inherits the mesh's STRICT");
        assert_eq!(p.mode_for(9090), Mode::Disable);
        let other = WorkloadRef { namespace: "web", labels: BTreeMap::new() };
        assert_eq!(compile_inbound(&s, &MeshSettings::default(), &other).mode_for(80), Mode::Strict);
        assert_eq!(compile_inbound(&set(""), &MeshSettings::default(), &other).mode_for(80), Mode::Permissive);
    }

    #[test]
    fn deny_before_allow_and_default_deny() {
        let s = set(r#"
apiVersion: meshgate.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-order, namespace: shop}
spec:
  selector: {matchLabels: {app: inventory}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/order"]}}]
    to: [{operation: {methods: [GET], paths: ["/items*"]}}]
---
apiVersion: meshgate.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#);
        let p = compile_inbound(&s, &MeshSettings::default(), &inventory());
        let req = |principal: Option<&'static str>, method: &'static str, path: &'static str| Attributes {
            principal,
            namespace: principal.map(|_| "shop"),
            method: Some(method),
            path: Some(path),
            port: 8080,
            headers: None,
        };
        let order = Some("cluster.local/ns/shop/sa/order");
        assert_eq!(p.authz.check(&req(order, "GET", "/items/1")).0, Decision::Allow(Some("shop/allow-order".into())));
        assert!(
            matches!(p.authz.check(&req(order, "POST", "/items")).0, Decision::Deny(m) if m.contains("no ALLOW rule"))
        );
        assert!(matches!(
            p.authz.check(&req(Some("cluster.local/ns/shop/sa/web"), "GET", "/items")).0,
            Decision::Deny(_)
        ));
        assert!(
            matches!(p.authz.check(&req(None, "GET", "/items")).0, Decision::Deny(_)),
            "plaintext has no principal"
        );
        assert_eq!(
            p.authz.check(&req(order, "GET", "/admin/x")).0,
            Decision::Deny("denied by AuthorizationPolicy shop/no-admin".into())
        );
        // TCP: the DENY rule on paths applies when in doubt; the ALLOW rule with methods does not.
        let tcp = Attributes {
            principal: order,
            namespace: Some("shop"),
            method: None,
            path: None,
            port: 8080,
            headers: None,
        };
        assert!(matches!(p.authz.check(&tcp).0, Decision::Deny(m) if m.contains("no-admin")));
    }
}
