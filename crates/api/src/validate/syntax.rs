//! Syntax checks shared by the validators: names, hostnames, headers, paths, durations.

use std::time::Duration;

/// A DNS-1123 subdomain: what most Kubernetes object names must be.
pub fn dns_subdomain(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: lower case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
        ))
    }
}

/// A DNS-1123 label: namespaces, listener names, port names.
pub fn dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid DNS label: lower case letters, digits and '-', at most 63 characters"))
    }
}

/// An IANA service name, as a named port must be.
pub fn port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name: at most 15 lower case letters, digits and single '-', with at least one letter"
        ))
    }
}

/// A Gateway API hostname: RFC 1123, optionally with a leading `*.` label, never an IP.
pub fn hostname(host: &str, allow_wildcard: bool) -> Result<(), String> {
    let bare = match host.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => return Err(format!("{host:?}: a wildcard is not allowed here")),
        None => host,
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{host:?}: an IP address is not a hostname"));
    }
    let ok = !bare.is_empty()
        && host.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a valid hostname: lower case RFC 1123 labels{}",
            if allow_wildcard { ", optionally starting with \"*.\"" } else { "" }
        ))
    }
}

/// An HTTP header field name (an RFC 9110 token).
pub fn header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 256 && name.bytes().all(is_tchar);
    if ok { Ok(()) } else { Err(format!("{name:?} is not a valid HTTP header name")) }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An HTTP header field value: visible ASCII, spaces and tabs, no leading or trailing space.
pub fn header_value(value: &str) -> Result<(), String> {
    let ok = value.len() <= 4096 && value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    if ok { Ok(()) } else { Err(format!("{value:?} is not a valid HTTP header value (printable ASCII only)")) }
}

/// A path for Exact and PathPrefix matches and path rewrites (the CRD's CEL rules).
pub fn http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path starting with '/'"));
    }
    if path.len() > 1024 {
        return Err("must be at most 1024 characters".into());
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if path.contains(bad) {
            return Err(format!("{path:?} must not contain {bad:?}"));
        }
    }
    if path.ends_with("/..") || path.ends_with("/.") {
        return Err(format!("{path:?} must not end with '/..' or '/.'"));
    }
    if !path.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err(format!("{path:?} must be printable ASCII without spaces"));
    }
    Ok(())
}

/// A Gateway API duration (GEP-2257): up to four `<number><unit>` parts, units h, m, s, ms.
pub fn gateway_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a Gateway API duration (e.g. \"10s\", \"1m30s\", \"500ms\")");
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        parts += 1;
        if parts > 4 {
            return Err(bad());
        }
    }
    Ok(total)
}

/// A regular expression in the RE2 dialect the `regex` crate implements.
pub fn regex(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern).map(|_| ()).map_err(|e| format!("invalid regular expression: {e}"))
}

/// An address range: `ADDR/BITS` or one address (a /32 or /128): the network address and the
/// prefix length. Bits set past the prefix are refused, as Kubernetes refuses them.
pub fn cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let s = s.trim();
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => match b.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: the prefix length must be 0..{max}")),
        },
    };
    let host_bits = |v: u128, width: u32| {
        if u32::from(bits) >= width { 0 } else { v & (u128::MAX >> (128 - width + u32::from(bits))) }
    };
    let stray = match addr {
        std::net::IpAddr::V4(a) => host_bits(u128::from(u32::from(a)), 32),
        std::net::IpAddr::V6(a) => host_bits(u128::from(a), 128),
    };
    if stray != 0 {
        return Err(format!("{s:?} has bits set past its /{bits} prefix"));
    }
    Ok((addr, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let v4 = |a: [u8; 4]| std::net::IpAddr::from(a);
        assert_eq!(cidr("10.0.0.0/8"), Ok((v4([10, 0, 0, 0]), 8)));
        assert_eq!(cidr("192.168.1.7"), Ok((v4([192, 168, 1, 7]), 32)));
        assert_eq!(cidr("0.0.0.0/0"), Ok((v4([0, 0, 0, 0]), 0)));
        assert_eq!(cidr("fd00::/8").map(|c| c.1), Ok(8));
        assert!(cidr("10.0.0.1/8").unwrap_err().contains("bits set past"));
        assert!(cidr("10.0.0.0/33").unwrap_err().contains("0..32"));
        assert!(cidr("ten/8").unwrap_err().contains("not an address"));
    }

    #[test]
    fn durations() {
        assert_eq!(gateway_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(gateway_duration("1h2m3s4ms"), Ok(Duration::from_millis(3_723_004)));
        assert_eq!(gateway_duration("0s"), Ok(Duration::ZERO));
        assert!(gateway_duration("").is_err());
        assert!(gateway_duration("-1s").is_err());
        assert!(gateway_duration("1.5s").is_err());
        assert!(gateway_duration("100000s").is_err());
        assert!(gateway_duration("1s1s1s1s1s").is_err());
        assert!(gateway_duration("5d").is_err());
    }

    #[test]
    fn hostnames() {
        assert!(hostname("foo.example.com", false).is_ok());
        assert!(hostname("*.example.com", true).is_ok());
        assert!(hostname("*.example.com", false).is_err());
        assert!(hostname("Foo.com", true).is_err());
        assert!(hostname("10.0.0.1", true).is_err());
        assert!(hostname("a..b", true).is_err());
        assert!(hostname("*", true).is_err());
        assert!(hostname("foo.*.com", true).is_err());
    }

    #[test]
    fn paths_and_headers() {
        assert!(http_path("/a/b").is_ok());
        assert!(http_path("a").is_err());
        assert!(http_path("/a//b").is_err());
        assert!(http_path("/a/../b").is_err());
        assert!(http_path("/a%2fb").is_err());
        assert!(header_name("X-Foo").is_ok());
        assert!(header_name("X Foo").is_err());
        assert!(header_name("x:y").is_err());
        assert!(header_value("a\nb").is_err());
        assert!(port_name("http").is_ok());
        assert!(port_name("8080").is_err());
        assert!(port_name("http-web-service-x").is_err());
    }
}
