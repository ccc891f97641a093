//! Hostnames as Gateway API uses them: exact names and `*.suffix` wildcards, listener ∩ route
//! intersection, and the request's Host normalised for matching.

use std::fmt;

use serde::Serialize;

/// An exact hostname or a wildcard (`*.example.com` matches any name with at least one more label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `foo.example.com`.
    Exact(String),
    /// `*.example.com`, stored as the suffix including the dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses a validated hostname.
    pub fn parse(host: &str) -> Self {
        match host.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_ascii_lowercase()),
            None => HostPattern::Exact(host.to_ascii_lowercase()),
        }
    }

    /// Whether `host` (lower case, no port) is covered.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    /// Characters that are not wildcard (the first precedence key between routes).
    pub fn specificity(&self) -> (usize, usize) {
        match self {
            HostPattern::Exact(h) => (h.len(), h.len()),
            HostPattern::Wildcard(s) => (0, s.len() + 1),
        }
    }

    /// The intersection of a listener's hostname with a route's, if any (the more specific one).
    pub fn intersect(listener: &HostPattern, route: &HostPattern) -> Option<HostPattern> {
        use HostPattern::*;
        match (listener, route) {
            (Exact(l), Exact(r)) => (l == r).then(|| listener.clone()),
            (Exact(l), Wildcard(_)) => route.matches(l).then(|| listener.clone()),
            (Wildcard(_), Exact(r)) => listener.matches(r).then(|| route.clone()),
            (Wildcard(l), Wildcard(r)) => {
                if r.len() >= l.len() && r.ends_with(l.as_str()) {
                    Some(route.clone())
                } else if l.len() > r.len() && l.ends_with(r.as_str()) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The host part of a Host header or `:authority`, without port, lower-cased only if needed.
///
/// Returns a borrowed slice when the host is already lower case (the common case, no allocation).
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep it whole, brackets included.
        match rest.find(']') {
            Some(end) => &authority[..end + 2],
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
            _ => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s)
    }

    #[test]
    fn wildcard_needs_a_label() {
        assert!(p("*.wildcard.io").matches("foo.wildcard.io"));
        assert!(p("*.wildcard.io").matches("foo.bar.wildcard.io"));
        assert!(!p("*.wildcard.io").matches("wildcard.io"));
        assert!(!p("*.wildcard.io").matches("xwildcard.io"));
    }

    #[test]
    fn intersections() {
        let i = |l: &str, r: &str| HostPattern::intersect(&p(l), &p(r)).map(|h| h.to_string());
        assert_eq!(i("very.specific.com", "*.specific.com").as_deref(), Some("very.specific.com"));
        assert_eq!(i("*.wildcard.io", "foo.bar.wildcard.io").as_deref(), Some("foo.bar.wildcard.io"));
        assert_eq!(i("*.wildcard.io", "wildcard.io"), None);
        assert_eq!(i("*.example.com", "*.com").as_deref(), Some("*.example.com"));
        assert_eq!(i("*.com", "*.example.com").as_deref(), Some("*.example.com"));
        assert_eq!(i("*.a.com", "*.b.com"), None);
        assert_eq!(i("a.com", "b.com"), None);
    }

    #[test]
    fn host_header_normalisation() {
        assert_eq!(normalize_host("very.specific.com:1234"), "very.specific.com");
        assert_eq!(normalize_host("Example.COM"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }
}
