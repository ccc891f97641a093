//! Workload identity as SPIFFE defines it: trust domains and SPIFFE IDs, with the
//! `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT` form meshgate issues. No TLS here:
//! certificates and handshakes live in `meshgate-tls`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a SPIFFE ID (the SPIFFE ID specification, §2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not `spiffe://`.
    #[error("{0:?} is not a SPIFFE ID: the scheme must be spiffe://")]
    Scheme(String),
    /// Empty or invalid trust domain.
    #[error("{0:?}: invalid trust domain (lower case letters, digits, '.', '-', '_')")]
    TrustDomain(String),
    /// Invalid path.
    #[error("{0:?}: invalid path ({1})")]
    Path(String, &'static str),
    /// Query, fragment, port or user info present.
    #[error("{0:?}: a SPIFFE ID has no query, fragment, port or user info")]
    Extra(String),
    /// Longer than 2048 bytes.
    #[error("SPIFFE ID longer than 2048 bytes")]
    TooLong,
}

/// A SPIFFE trust domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
        if ok { Ok(TrustDomain(name.to_string())) } else { Err(IdError::TrustDomain(name.to_string())) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The control plane's identity: `spiffe://TD/ns/meshgate-system/sa/control-plane`.
    pub fn control_plane_id(&self) -> Result<SpiffeId, IdError> {
        self.workload_id("meshgate-system", "control-plane")
    }

    /// `spiffe://TD/ns/NS/sa/SA`.
    pub fn workload_id(&self, namespace: &str, service_account: &str) -> Result<SpiffeId, IdError> {
        SpiffeId::parse(&format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID: `spiffe://TRUST_DOMAIN/PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    td_end: usize,
}

impl SpiffeId {
    /// Parses and checks a SPIFFE ID.
    pub fn parse(uri: &str) -> Result<Self, IdError> {
        if uri.len() > 2048 {
            return Err(IdError::TooLong);
        }
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            return Err(IdError::Scheme(uri.to_string()));
        };
        if rest.contains(['?', '#', '@']) {
            return Err(IdError::Extra(uri.to_string()));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.contains(':') {
            return Err(IdError::Extra(uri.to_string()));
        }
        TrustDomain::new(td).map_err(|_| IdError::TrustDomain(uri.to_string()))?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(IdError::Path(uri.to_string(), "empty segment or trailing '/'"));
                }
                if seg == "." || seg == ".." {
                    return Err(IdError::Path(uri.to_string(), "'.' and '..' segments are not allowed"));
                }
                if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                    return Err(IdError::Path(uri.to_string(), "letters, digits, '.', '-', '_' only"));
                }
            }
        }
        Ok(SpiffeId { uri: uri.to_string(), td_end: "spiffe://".len() + td.len() })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.td_end]
    }

    /// The path, e.g. `/ns/shop/sa/inventory`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Namespace and service account, for IDs of the `/ns/NS/sa/SA` form.
    pub fn workload(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        SpiffeId::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/inventory").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/inventory");
        assert_eq!(id.workload(), Some(("shop", "inventory")));
        assert!(SpiffeId::parse("spiffe://example.org").is_ok());
        let td = TrustDomain::new("mesh.local").unwrap();
        assert_eq!(td.workload_id("a", "b").unwrap().as_str(), "spiffe://mesh.local/ns/a/sa/b");
    }

    #[test]
    fn invalid_ids() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/x",
            "spiffe://",
            "spiffe://Cluster.local/x",
            "spiffe://cluster.local:8080/x",
            "spiffe://user@cluster.local/x",
            "spiffe://cluster.local/x?y=1",
            "spiffe://cluster.local/x#f",
            "spiffe://cluster.local/a//b",
            "spiffe://cluster.local/a/",
            "spiffe://cluster.local/a/../b",
            "spiffe://cluster.local/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(SpiffeId::parse(&format!("spiffe://a/{}", "x".repeat(2100))).is_err());
    }
}
