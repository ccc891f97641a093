//! A compiled route rule: what to do with a request once it matched.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Serialize, Serializer};

/// Where a rule sends requests, and what it changes on the way.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// `namespace/name` of the HTTPRoute.
    pub route: Arc<str>,
    /// Index of the rule in the route (`spec.rules[i]`).
    pub index: usize,
    /// The rule's name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Request header changes.
    #[serde(skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
    /// Response header changes.
    #[serde(skip_serializing_if = "HeaderModifier::is_empty")]
    pub response_headers: HeaderModifier,
    /// Answer with a redirect instead of forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Change host and path before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Copies of the request sent elsewhere, responses ignored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Weighted backends.
    pub backends: Vec<WeightedBackend>,
    /// Sum of the backend weights.
    pub total_weight: u64,
    /// Set when the rule cannot be served (unsupported filter): requests get 500 with this reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The rule's own timeouts and retry settings (they override the backend's policy).
    #[serde(skip_serializing_if = "crate::policy::RoutePolicy::is_empty")]
    pub policy: crate::policy::RoutePolicy,
    /// Faults to inject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::policy::Fault>,
    /// Requests with a longer body are answered 413 (an HTTPRouteFilter's
    /// `maxRequestBodyBytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<u64>,
    /// Only clients from these ranges are served, others get 403 (empty: everyone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<SourceRange>,
}

/// A client address range a rule serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRange {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// The prefix length.
    pub bits: u8,
}

impl SourceRange {
    /// Whether `ip` is in the range (an IPv4 client seen as `::ffff:a.b.c.d` counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, width) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let bits = u32::from(self.bits).min(width);
        if bits == 0 {
            return true;
        }
        let shift = width - bits;
        (a >> shift) == (b >> shift)
    }
}

impl Serialize for SourceRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.addr, self.bits))
    }
}

impl Rule {
    /// Picks a backend by weight; `None` when every weight is zero.
    pub fn pick_backend(&self) -> Option<&WeightedBackend> {
        pick_weighted(&self.backends, self.total_weight)
    }
}

/// Picks one of `backends` by weight (`total` is the sum of their weights); `None` when every
/// weight is zero.
pub(crate) fn pick_weighted(backends: &[WeightedBackend], total: u64) -> Option<&WeightedBackend> {
    match backends.len() {
        0 => None,
        1 => backends.first().filter(|b| b.weight > 0),
        _ if total == 0 => None,
        _ => {
            let mut point = fastrand::u64(0..total);
            for b in backends {
                let w = u64::from(b.weight);
                if point < w {
                    return Some(b);
                }
                point -= w;
            }
            None
        }
    }
}

/// Set, add and remove operations on a header map.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderModifier {
    /// Replace (or create) these headers.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these values.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the changes: set, then add, then remove (the Gateway API order).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }

    /// Merges another modifier after this one.
    pub fn extend(&mut self, other: HeaderModifier) {
        self.set.extend(other.set);
        self.add.extend(other.add);
        self.remove.extend(other.remove);
    }
}

fn ser_pairs<S: Serializer>(pairs: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(pairs.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("<binary>"))))
}

fn ser_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

/// How a path is changed by a redirect or rewrite.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the matched prefix (stored without a trailing slash).
    ReplacePrefixMatch(String),
    /// Replace every match of a regular expression (meshgate's HTTPRouteFilter).
    ReplaceRegexMatch(RegexReplace),
}

/// A regular expression and what its matches are replaced with (`$1`, `${name}`: captures).
#[derive(Debug, Clone)]
pub struct RegexReplace {
    /// The pattern.
    pub pattern: regex::Regex,
    /// The replacement.
    pub substitution: String,
}

impl Serialize for RegexReplace {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RegexReplace", 2)?;
        st.serialize_field("pattern", self.pattern.as_str())?;
        st.serialize_field("substitution", &self.substitution)?;
        st.end()
    }
}

impl PathModifier {
    /// The new path for `path`, given the prefix the request matched (when a prefix matched).
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplaceRegexMatch(r) => {
                let out = r.pattern.replace_all(path, r.substitution.as_str());
                if out.starts_with('/') { out.into_owned() } else { format!("/{out}") }
            }
            PathModifier::ReplacePrefixMatch(replacement) => {
                let prefix = matched_prefix.unwrap_or("/");
                // The root prefix matches the path's leading `/` as a whole element: `/` itself
                // becomes the replacement, not the replacement and a trailing slash.
                let rest = if prefix == "/" {
                    path.strip_prefix('/').unwrap_or(path)
                } else {
                    path.get(prefix.len()..).unwrap_or("")
                };
                let replacement = replacement.trim_end_matches('/');
                let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
                out.push_str(replacement);
                if !rest.is_empty() && !rest.starts_with('/') {
                    out.push('/');
                }
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                out
            }
        }
    }
}

/// RequestRedirect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`; the request's scheme when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host; the request's (without port) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New port; derived per the spec when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// New path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status_code: u16,
}

impl Redirect {
    /// The Location for a request.
    ///
    /// `scheme` is the request's scheme, `host` its host without port, `listener_port` the port
    /// the request arrived on.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        listener_port: u16,
        path: &str,
        query: Option<&str>,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => p,
            (None, Some(s)) if s == "https" => 443,
            (None, Some(s)) if s == "http" => 80,
            _ => listener_port,
        };
        let host = self.hostname.as_deref().unwrap_or(host);
        let path = match &self.path {
            Some(m) => std::borrow::Cow::Owned(m.apply(path, matched_prefix)),
            None => std::borrow::Cow::Borrowed(path),
        };
        let default_port = matches!((scheme_out, port), ("http", 80) | ("https", 443));
        let mut out = format!("{scheme_out}://{host}");
        if !default_port {
            out.push(':');
            out.push_str(&port.to_string());
        }
        out.push_str(&path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// URLRewrite.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    /// Host header to send upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// RequestMirror.
#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    /// Where copies go.
    pub backend: Backend,
    /// Share of requests mirrored: numerator / denominator.
    pub numerator: u32,
    /// Denominator of the share.
    pub denominator: u32,
}

impl Mirror {
    /// Decides for one request whether it is mirrored.
    pub fn sample(&self) -> bool {
        self.numerator >= self.denominator || fastrand::u32(0..self.denominator.max(1)) < self.numerator
    }
}

/// One backendRef with its weight.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// Relative weight (0 = no traffic).
    pub weight: u32,
    /// The backend.
    pub backend: Backend,
    /// Request header changes for this backend only.
    #[serde(skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
    /// Response header changes for this backend only.
    #[serde(skip_serializing_if = "HeaderModifier::is_empty")]
    pub response_headers: HeaderModifier,
}

impl WeightedBackend {
    /// A backend with its weight and no header changes of its own.
    pub fn new(weight: u32, backend: Backend) -> Self {
        WeightedBackend {
            weight,
            backend,
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
        }
    }
}

/// A resolved backend, or why it could not be resolved (requests routed to it get 500).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// A Service port with its endpoints.
    Service(Arc<ServiceBackend>),
    /// An invalid reference: the reason, also in the route's ResolvedRefs condition.
    Invalid {
        /// Gateway API reason (BackendNotFound, RefNotPermitted, InvalidKind, ...).
        reason: &'static str,
        /// Human-readable explanation.
        message: String,
    },
}

/// The wire protocol to use towards a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive pools.
    Http1,
    /// HTTP/2 prior knowledge (`appProtocol: kubernetes.io/h2c`, `h2c` or `grpc`).
    H2c,
}

/// TLS the proxy originates to a backend outside the mesh (BackendTLSPolicy): the name the
/// server's certificate must carry (also sent as SNI) and the roots it must chain to.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// `namespace/name` of the policy.
    pub policy: Arc<str>,
    /// The server name.
    pub hostname: String,
    /// A hash of the CA certificates: the same policy, name and roots are the same TLS.
    pub roots_hash: u64,
    /// Client configuration offering ALPN http/1.1.
    #[serde(skip)]
    pub http1: Arc<meshgate_tls::rustls::ClientConfig>,
    /// Client configuration offering ALPN h2.
    #[serde(skip)]
    pub h2: Arc<meshgate_tls::rustls::ClientConfig>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls").field("policy", &self.policy).field("hostname", &self.hostname).finish()
    }
}

/// A Service port resolved to endpoints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// `namespace/name:port`, for logs and metrics.
    pub id: Arc<str>,
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Protocol towards the endpoints.
    pub protocol: UpstreamProtocol,
    /// Ready endpoints.
    pub endpoints: Vec<Endpoint>,
    /// How requests to it are balanced, timed out, retried, limited.
    pub policy: Arc<crate::policy::BackendPolicy>,
    /// TLS to the endpoints (a BackendTLSPolicy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<BackendTls>>,
    /// Index in [`crate::ProxyConfig::backends`]: where the proxy keeps this backend's
    /// runtime state (pools, balancer), found without hashing on the request path.
    #[serde(skip)]
    pub slot: usize,
}

/// One address of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    /// IP and port.
    pub addr: SocketAddr,
    /// What the address belongs to (`Workload ns/name` or `EndpointSlice ns/name`).
    pub origin: String,
    /// The SPIFFE ID its meshgate proxy presents, when it is reached over mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The workload behind it (none for an address of an EndpointSlice).
    #[serde(skip)]
    pub workload: Option<Arc<crate::peer::Peer>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_match_table() {
        // The table from the Gateway API HTTPPathModifier documentation.
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
            // A rule whose prefix is `/` (HTTPRouteRewritePath's bare-slash route).
            ("/foo/bar", "/", "/replacement-prefix", "/replacement-prefix/foo/bar"),
            ("/foo", "/", "/replacement-prefix", "/replacement-prefix/foo"),
            ("/", "/", "/replacement-prefix", "/replacement-prefix"),
            ("/", "/", "/", "/"),
        ];
        for (path, prefix, replacement, want) in cases {
            let m = PathModifier::ReplacePrefixMatch(replacement.to_string());
            assert_eq!(m.apply(path, Some(prefix)), want, "{path} {prefix} {replacement}");
        }
    }

    #[test]
    fn redirect_ports() {
        let r = |scheme: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(str::to_string),
            hostname: Some("example.org".into()),
            port,
            path: None,
            status_code: 302,
        };
        let loc = |red: Redirect, listener: u16| red.location("http", "orig", listener, "/p", None, None);
        assert_eq!(loc(r(None, None), 80), "http://example.org/p");
        assert_eq!(loc(r(None, Some(8080)), 80), "http://example.org:8080/p");
        assert_eq!(loc(r(Some("https"), None), 80), "https://example.org/p");
        assert_eq!(loc(r(Some("https"), Some(8443)), 80), "https://example.org:8443/p");
        assert_eq!(loc(r(None, None), 8080), "http://example.org:8080/p");
        assert_eq!(loc(r(None, Some(80)), 8080), "http://example.org/p");
        assert_eq!(loc(r(Some("https"), None), 8080), "https://example.org/p");
        let q = r(None, None).location("http", "orig", 80, "/p", Some("a=1"), None);
        assert_eq!(q, "http://example.org/p?a=1");
    }
}
