//! Request matching (path, method, headers, query) and the Gateway API precedence between
//! matches.

use std::borrow::Cow;
use std::cmp::Reverse;

use http::{HeaderMap, HeaderName, Method};
use serde::{Serialize, Serializer};

/// A regular expression that must match the whole value (RE2 full-match semantics, as Envoy).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    re: regex::Regex,
}

impl Pattern {
    /// Compiles `source` anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Pattern { source: source.to_string(), re: regex::Regex::new(&format!("^(?:{source})$"))? })
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.re.is_match(value)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// How the path is matched.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// Whole path segments: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
    /// Stored without a trailing slash (except the root `/`).
    PathPrefix(String),
    /// A regular expression over the whole path.
    RegularExpression(Pattern),
}

impl PathMatch {
    /// Builds a prefix match, dropping a trailing slash as the spec says to.
    pub fn prefix(value: &str) -> Self {
        let trimmed = value.trim_end_matches('/');
        PathMatch::PathPrefix(if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() })
    }

    /// Whether `path` (without the query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::PathPrefix(p) => prefix_matches(p, path),
            PathMatch::RegularExpression(re) => re.is_match(path),
        }
    }
}

/// Segment-wise prefix match; `prefix` has no trailing slash unless it is `/`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// How a header or query value is matched.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum ValueMatch {
    /// Byte-for-byte equality.
    Exact(String),
    /// A regular expression over the whole value.
    RegularExpression(Pattern),
}

impl ValueMatch {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(v) => v.as_bytes() == value,
            ValueMatch::RegularExpression(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

/// A header condition.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    /// Header name (case-insensitive, stored lower case).
    #[serde(serialize_with = "ser_header_name")]
    pub name: HeaderName,
    /// Value condition.
    pub value: ValueMatch,
}

fn ser_header_name<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

/// A query parameter condition (name and value compared after percent-decoding).
#[derive(Debug, Clone, Serialize)]
pub struct QueryMatch {
    /// Parameter name, case-sensitive.
    pub name: String,
    /// Value condition.
    pub value: ValueMatch,
}

/// One HTTPRouteMatch: every condition must hold.
#[derive(Debug, Clone, Serialize)]
pub struct RouteMatch {
    /// Path condition (default: PathPrefix `/`).
    pub path: PathMatch,
    /// Method condition.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_method")]
    pub method: Option<Method>,
    /// Header conditions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query conditions.
    #[serde(skip_serializing_if = "Vec::is_empty", rename = "queryParams")]
    pub query: Vec<QueryMatch>,
}

fn ser_method<S: Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.as_str()),
        None => s.serialize_none(),
    }
}

/// The parts of a request that matching looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path without the query, as received.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// Sort key: smaller is more specific. Path kind, path length, method, header and query counts.
pub type MatchRank = (u8, Reverse<usize>, u8, Reverse<usize>, Reverse<usize>);

impl RouteMatch {
    /// The match a rule without `matches` has: PathPrefix `/`.
    pub fn any() -> Self {
        RouteMatch { path: PathMatch::prefix("/"), method: None, headers: Vec::new(), query: Vec::new() }
    }

    /// Whether the request satisfies every condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        if !self.path.matches(req.path) {
            return false;
        }
        for h in &self.headers {
            let mut values = req.headers.get_all(&h.name).iter();
            let Some(first) = values.next() else { return false };
            let matched = match values.next() {
                None => h.value.matches(first.as_bytes()),
                Some(second) => {
                    // A repeated header is one comma-separated value (RFC 9110 §5.3).
                    let mut joined = Vec::with_capacity(64);
                    joined.extend_from_slice(first.as_bytes());
                    for v in std::iter::once(second).chain(values) {
                        joined.push(b',');
                        joined.extend_from_slice(v.as_bytes());
                    }
                    h.value.matches(&joined)
                }
            };
            if !matched {
                return false;
            }
        }
        for q in &self.query {
            let Some(value) = req.query.and_then(|qs| query_value(qs, &q.name)) else { return false };
            if !q.value.matches(value.as_bytes()) {
                return false;
            }
        }
        true
    }

    /// Gateway API precedence: Exact path, then (our choice) regular expressions by length,
    /// then the longest prefix; then method; then most header matches; then most query matches.
    pub fn rank(&self) -> MatchRank {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::RegularExpression(re) => (1, re.as_str().len()),
            PathMatch::PathPrefix(p) => (2, p.len()),
        };
        (kind, Reverse(len), u8::from(self.method.is_none()), Reverse(self.headers.len()), Reverse(self.query.len()))
    }
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k) == name {
            return Some(decode(v));
        }
    }
    None
}

/// Percent-decodes a query component; borrowed when there is nothing to decode.
pub fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    Cow::Owned(percent_decode(bytes))
}

fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_segment_wise() {
        let p = PathMatch::prefix("/foo/");
        assert!(p.matches("/foo"));
        assert!(p.matches("/foo/"));
        assert!(p.matches("/foo/bar"));
        assert!(!p.matches("/foobar"));
        assert!(PathMatch::prefix("/").matches("/anything"));
        assert!(!PathMatch::prefix("/full").matches("/full-path-and-host"));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value("animal=whale&color=blue", "color").as_deref(), Some("blue"));
        assert_eq!(query_value("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(query_value("q=hello%20world+x", "q").as_deref(), Some("hello world x"));
        assert_eq!(query_value("flag", "flag").as_deref(), Some(""));
        assert_eq!(query_value("ANIMAL=Whale", "animal"), None);
        assert_eq!(query_value("bad=%zz%4", "bad").as_deref(), Some("%zz%4"));
    }

    #[test]
    fn regex_is_full_match() {
        let p = Pattern::new("/v[0-9]+").unwrap();
        assert!(p.is_match("/v12"));
        assert!(!p.is_match("/v12/x"));
    }
}
