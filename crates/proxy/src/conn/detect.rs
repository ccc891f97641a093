//! Protocol detection on a new connection, for every role that does not know from its
//! configuration what will arrive: the first bytes are peeked (never consumed) until they tell
//! a TLS ClientHello (with its SNI and ALPN, for routing by name before any handshake), an
//! HTTP/1.x request line, the HTTP/2 preface, a PROXY protocol header (v1 or v2, with the
//! addresses it carries), or something else; a client that sends nothing within the timeout is
//! opaque too (server-speaks-first protocols). A first byte of 0x16 (a TLS handshake record)
//! is TLS whatever follows: a ClientHello that is malformed, or not complete within the
//! timeout, is left to the handshake to refuse (with its own timeout), never passed on as
//! plaintext. One implementation, one timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// What a connection's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello.
    Tls(ClientHello),
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge, h2c).
    Http2,
    /// A PROXY protocol header.
    Proxy(ProxyHeader),
    /// None of these, or nothing within the timeout.
    Opaque,
}

/// What a ClientHello asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name (SNI), lower case; `None` without the extension (clients dialling an
    /// address send none).
    pub sni: Option<String>,
    /// The ALPN protocols offered, in order.
    pub alpn: Vec<Vec<u8>>,
}

/// A PROXY protocol header: the client's and the original destination's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 (text) or 2 (binary).
    pub version: u8,
    /// Its length in bytes: what to read past before the client's own bytes.
    pub len: usize,
    /// The client, as the sender of the header saw it (`None`: UNKNOWN, LOCAL, or a family
    /// other than TCP over IPv4/IPv6).
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
}

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decided.
    Known(Detected),
    /// Could still be one of the known protocols: more bytes are needed.
    NeedMore,
}

/// The most bytes looked at: a TLS record's largest ClientHello (16 KiB) and its header.
const MAX_PEEK: usize = 16 * 1024 + 5;

/// Peeks at `stream` until its first bytes tell what it carries, for at most `timeout`.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    // Small first: most connections decide within a few bytes; a ClientHello gets room for
    // its whole record.
    let mut buf = vec![0u8; 256];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Detected::Opaque,
        };
        match classify(&buf[..n]) {
            Verdict::Known(d) => return d,
            Verdict::NeedMore if n == buf.len() && buf.len() < MAX_PEEK => {
                let want = tls_record_len(&buf[..n]).unwrap_or(MAX_PEEK).min(MAX_PEEK);
                buf.resize(want.max(buf.len() * 2).min(MAX_PEEK), 0);
            }
            // Nothing more has arrived yet: peek again in a moment (peek returns at once while
            // bytes are buffered, so waiting for readiness would spin).
            Verdict::NeedMore if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Verdict::NeedMore if buf[0] == 0x16 => return Detected::Tls(ClientHello::default()),
            Verdict::NeedMore => return Detected::Opaque,
        }
    }
}

/// The length of the TLS record starting `seen` (header included), when its header is there.
fn tls_record_len(seen: &[u8]) -> Option<usize> {
    (seen.len() >= 5 && seen[0] == 0x16).then(|| 5 + usize::from(u16::from_be_bytes([seen[3], seen[4]])))
}

/// The start of the HTTP/2 preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`): enough to tell.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const HTTP1_METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"TRACE ", b"CONNECT "];

/// Classifies the first bytes of a connection.
pub fn classify(seen: &[u8]) -> Verdict {
    if seen.is_empty() {
        return Verdict::NeedMore;
    }
    if seen[0] == 0x16 {
        return client_hello(seen);
    }
    let mut undecided = false;
    let mut check = |prefix: &[u8], what: Detected| -> Option<Detected> {
        let k = prefix.len().min(seen.len());
        if seen[..k] != prefix[..k] {
            return None;
        }
        if seen.len() >= prefix.len() {
            return Some(what);
        }
        undecided = true;
        None
    };
    if let Some(d) = check(H2_PREFACE, Detected::Http2) {
        return Verdict::Known(d);
    }
    for m in HTTP1_METHODS {
        if let Some(d) = check(m, Detected::Http1) {
            return Verdict::Known(d);
        }
    }
    if seen.starts_with(b"PROXY ") || b"PROXY ".starts_with(seen) {
        return proxy_v1(seen);
    }
    if seen.starts_with(PROXY_V2_SIGNATURE) || PROXY_V2_SIGNATURE.starts_with(seen) {
        return proxy_v2(seen);
    }
    if undecided { Verdict::NeedMore } else { Verdict::Known(Detected::Opaque) }
}

/// Reads big-endian lengths and slices without ever indexing out of bounds: a truncated or
/// lying length ends the parse.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }

    /// A block prefixed by its length (`width` bytes).
    fn block(&mut self, width: usize) -> Option<Reader<'a>> {
        let len = match width {
            1 => self.u8()?,
            2 => self.u16()?,
            _ => self.u24()?,
        };
        self.take(len).map(|bytes| Reader { bytes })
    }
}

/// A TLS record holding a ClientHello (RFC 8446 §4.1.2): its SNI and ALPN when it parses,
/// nothing known of it when it does not (the handshake will refuse it).
fn client_hello(seen: &[u8]) -> Verdict {
    let unknown = Verdict::Known(Detected::Tls(ClientHello::default()));
    let Some(record_len) = tls_record_len(seen) else { return Verdict::NeedMore };
    // TLS 1.0–1.3 record versions are 3.x; a ClientHello record is never empty.
    if seen[1] != 3 || record_len == 5 {
        return unknown;
    }
    if seen.len() < record_len {
        return Verdict::NeedMore;
    }
    let mut r = Reader { bytes: &seen[5..record_len] };
    match parse_hello(&mut r) {
        Some(hello) => Verdict::Known(Detected::Tls(hello)),
        None => unknown,
    }
}

fn parse_hello(r: &mut Reader<'_>) -> Option<ClientHello> {
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let mut body = r.block(3)?;
    body.take(2 + 32)?; // legacy_version, random
    body.block(1)?; // legacy_session_id
    body.block(2)?; // cipher_suites
    body.block(1)?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    let Some(mut extensions) = body.block(2) else { return Some(hello) };
    while !extensions.bytes.is_empty() {
        let kind = extensions.u16()?;
        let mut ext = extensions.block(2)?;
        match kind {
            0x0000 => {
                let mut names = ext.block(2)?;
                while !names.bytes.is_empty() {
                    let name_type = names.u8()?;
                    let name = names.block(2)?;
                    if name_type == 0 && hello.sni.is_none() {
                        let name = std::str::from_utf8(name.bytes).ok()?;
                        hello.sni = Some(name.to_ascii_lowercase());
                    }
                }
            }
            0x0010 => {
                let mut protocols = ext.block(2)?;
                while !protocols.bytes.is_empty() {
                    hello.alpn.push(protocols.block(1)?.bytes.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// `PROXY TCP4|TCP6|UNKNOWN SRC DST SRCPORT DSTPORT\r\n`, at most 107 bytes.
fn proxy_v1(seen: &[u8]) -> Verdict {
    let Some(end) = seen.windows(2).position(|w| w == b"\r\n") else {
        return if seen.len() < 107 { Verdict::NeedMore } else { Verdict::Known(Detected::Opaque) };
    };
    if end + 2 > 107 {
        return Verdict::Known(Detected::Opaque);
    }
    let Ok(line) = std::str::from_utf8(&seen[..end]) else { return Verdict::Known(Detected::Opaque) };
    let parts: Vec<&str> = line.split(' ').collect();
    let header = |source, destination| ProxyHeader { version: 1, len: end + 2, source, destination };
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Verdict::Known(Detected::Proxy(header(None, None))),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let addr = |ip: &str, port: &str| -> Option<SocketAddr> {
                let ip: IpAddr = ip.parse().ok()?;
                if (*family == "TCP4") != ip.is_ipv4() {
                    return None;
                }
                Some(SocketAddr::new(ip, port.parse().ok()?))
            };
            match (addr(src, sport), addr(dst, dport)) {
                (Some(s), Some(d)) => Verdict::Known(Detected::Proxy(header(Some(s), Some(d)))),
                _ => Verdict::Known(Detected::Opaque),
            }
        }
        _ => Verdict::Known(Detected::Opaque),
    }
}

/// The binary header: signature, version and command, family, length, addresses.
fn proxy_v2(seen: &[u8]) -> Verdict {
    if seen.len() < 16 {
        return Verdict::NeedMore;
    }
    let (ver_cmd, family) = (seen[12], seen[13]);
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Verdict::Known(Detected::Opaque);
    }
    let len = 16 + usize::from(u16::from_be_bytes([seen[14], seen[15]]));
    if seen.len() < len {
        return Verdict::NeedMore;
    }
    let a = &seen[16..len];
    let local = ver_cmd & 0x0f == 0;
    let (source, destination) = match family {
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes.
        0x11 if a.len() >= 12 && !local => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                Some(SocketAddr::new(ip(&a[0..4]), port(&a[8..10]))),
                Some(SocketAddr::new(ip(&a[4..8]), port(&a[10..12]))),
            )
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 if a.len() >= 36 && !local => {
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[..16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                Some(SocketAddr::new(ip(&a[0..16]), port(&a[32..34]))),
                Some(SocketAddr::new(ip(&a[16..32]), port(&a[34..36]))),
            )
        }
        0x11 | 0x21 if !local => return Verdict::Known(Detected::Opaque),
        _ => (None, None),
    };
    Verdict::Known(Detected::Proxy(ProxyHeader { version: 2, len, source, destination }))
}

#[cfg(test)]
mod tests;
