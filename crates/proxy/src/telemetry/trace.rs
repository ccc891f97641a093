//! Distributed tracing on the request path: the trace context a request carries (W3C
//! `traceparent`/`tracestate`, B3 single `b3` and multi `x-b3-*` headers) is read, a trace is
//! started when none comes in (sampled at the configured rate; a decision that comes in is
//! kept), and the context is passed upstream with this proxy's span as the parent, in the
//! format it arrived in plus W3C. The spans themselves are made from the request records when
//! they complete ([`spans`]) and exported off the request path (`super::export`).

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::{RequestRecord, Role, Security};
use crate::headers::TRACEPARENT;

static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// How the context arrived (and so how it is passed on, beside W3C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `traceparent`.
    W3c,
    /// `b3: TRACE-SPAN-SAMPLED[-PARENT]`.
    B3Single,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    B3Multi,
}

/// A span's place in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// 128 bits, never 0.
    pub trace_id: u128,
    /// 64 bits, never 0.
    pub span_id: u64,
    /// Recorded (exported).
    pub sampled: bool,
}

/// The 16 lower-case hex digits of `v`, most significant first. Branch-free, eight bytes at a
/// time (each nibble spread into a byte of its own, then made a digit): the `traceparent`
/// written for every request while tracing is on takes three of these.
pub(super) fn hex16(v: u64) -> [u8; 16] {
    const LO: u128 = 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    const ONES: u128 = LO / 0x0f;
    let mut x = u128::from(v);
    x = (x | (x << 32)) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & LO;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries it into bit 4).
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    (x + u128::from(b'0') * ONES + letters * u128::from(b'a' - b'0' - 10)).to_be_bytes()
}

/// The 32 lower-case hex digits of a trace id.
pub(super) fn hex32(v: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&hex16((v >> 64) as u64));
    out[16..].copy_from_slice(&hex16(v as u64));
    out
}

fn hex_u128(s: &str) -> Option<u128> {
    (matches!(s.len(), 16 | 32) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

fn hex_u64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

/// The value of each byte as a lower-case hex digit; `0xff`: not one (W3C Trace Context writes
/// every field in lower case, and upper case is invalid).
const LOWER_HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// The value of lower-case hex digits (at most 32 of them), `None` if any is not one. One
/// table lookup per digit: this runs for every request that carries a `traceparent`.
fn lower_hex(digits: &[u8]) -> Option<u128> {
    let mut value = 0u128;
    let mut bad = 0u8;
    for &b in digits {
        let d = LOWER_HEX[usize::from(b)];
        bad |= d;
        value = (value << 4) | u128::from(d & 15);
    }
    (bad & 0xf0 == 0).then_some(value)
}

/// W3C Trace Context §3.2: `VERSION-TRACEID-PARENTID-FLAGS`, lower-case hex, at fixed offsets;
/// version `ff` is invalid, ids of all zeros are invalid; a higher version may carry more
/// fields after the four (a `-` then follows the flags), version `00` may not.
fn parse_traceparent(b: &[u8]) -> Option<SpanContext> {
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = lower_hex(&b[..2])?;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = lower_hex(&b[3..35]).filter(|t| *t != 0)?;
    let span_id = lower_hex(&b[36..52]).and_then(|s| u64::try_from(s).ok()).filter(|s| *s != 0)?;
    let flags = lower_hex(&b[53..55])?;
    Some(SpanContext { trace_id, span_id, sampled: flags & 1 == 1 })
}

fn b3_sampled(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The context a request arrived with: the parent span and how it was written; or only a
/// sampling decision (B3 `b3: 0`, `x-b3-sampled` without ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span.
    pub parent: Option<SpanContext>,
    /// A sampling decision without a parent.
    pub decision: Option<bool>,
    /// How it was written.
    pub format: Format,
}

/// The trace headers of a request, found in one pass over its headers (cheaper than a lookup
/// per name: this runs for every request while tracing is on).
#[derive(Default)]
struct Found<'a> {
    /// As bytes: its fixed layout is checked digit by digit, no text needed.
    traceparent: Option<&'a [u8]>,
    b3: Option<&'a str>,
    trace: Option<&'a str>,
    span: Option<&'a str>,
    sampled: Option<&'a str>,
    flags: Option<&'a str>,
}

fn find(headers: &HeaderMap) -> Found<'_> {
    let mut f = Found::default();
    for (name, value) in headers {
        let n = name.as_str();
        // Every name looked for starts with `t`, `b` or `x-b3-`.
        if !matches!(n.as_bytes().first(), Some(b't' | b'b' | b'x')) {
            continue;
        }
        let slot = match n {
            "traceparent" => {
                f.traceparent = Some(value.as_bytes().trim_ascii());
                continue;
            }
            "b3" => &mut f.b3,
            "x-b3-traceid" => &mut f.trace,
            "x-b3-spanid" => &mut f.span,
            "x-b3-sampled" => &mut f.sampled,
            "x-b3-flags" => &mut f.flags,
            _ => continue,
        };
        // The value is read (its bytes checked) only for the names looked for: not for every
        // `x-request-id`, `x-forwarded-for` and the like.
        *slot = value.to_str().ok().map(str::trim);
    }
    f
}

/// Reads the trace context of `headers`: W3C first, then B3 single, then B3 multi.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    let found = find(headers);
    if let Some(ctx) = found.traceparent.and_then(parse_traceparent) {
        return Some(Incoming { parent: Some(ctx), decision: None, format: Format::W3c });
    }
    if let Some(v) = found.b3 {
        let mut parts = v.split('-');
        let first = parts.next().unwrap_or("");
        if let Some(decision) = b3_sampled(first).filter(|_| v.len() == 1) {
            return Some(Incoming { parent: None, decision: Some(decision), format: Format::B3Single });
        }
        if let (Some(trace_id), Some(span_id)) = (hex_u128(first), parts.next().and_then(hex_u64)) {
            // Absent sampling: defer (here: decide as for a new trace, by the caller's ids).
            let decision = parts.next().and_then(b3_sampled);
            let ctx = SpanContext { trace_id, span_id, sampled: decision.unwrap_or(false) };
            return Some(Incoming { parent: Some(ctx), decision, format: Format::B3Single });
        }
    }
    let debug = found.flags == Some("1");
    let decision = found.sampled.and_then(b3_sampled).or(debug.then_some(true));
    match (found.trace.and_then(hex_u128), found.span.and_then(hex_u64)) {
        (Some(trace_id), Some(span_id)) => Some(Incoming {
            parent: Some(SpanContext { trace_id, span_id, sampled: decision.unwrap_or(false) }),
            decision,
            format: Format::B3Multi,
        }),
        _ => decision.map(|d| Incoming { parent: None, decision: Some(d), format: Format::B3Multi }),
    }
}

/// The trace of one request through this proxy: its trace id, the caller's span, this proxy's
/// span(s) and whether they are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTrace {
    /// The trace.
    pub trace_id: u128,
    /// The caller's span, when the request carried one.
    pub parent: Option<u64>,
    /// This proxy's server span (the request as it arrived).
    pub server: u64,
    /// This proxy's client span (the request it sent upstream).
    pub client: u64,
    /// Recorded.
    pub sampled: bool,
    /// How the context arrived.
    pub format: Format,
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

/// Starts this proxy's part of the trace of a request with `headers`: a new trace when none
/// comes in, sampled with probability `sampling_ppm` / 1,000,000.
pub fn start(headers: &HeaderMap, sampling_ppm: u32) -> RequestTrace {
    let incoming = extract(headers);
    let sample_new = || fastrand::u32(..1_000_000) < sampling_ppm;
    let (trace_id, parent, sampled) = match incoming.and_then(|i| i.parent) {
        Some(p) => {
            (p.trace_id, Some(p.span_id), incoming.and_then(|i| i.decision).map_or(p.sampled || sample_new(), |d| d))
        }
        None => {
            let trace_id = (u128::from(nonzero_u64()) << 64) | u128::from(fastrand::u64(..));
            (trace_id, None, incoming.and_then(|i| i.decision).unwrap_or_else(sample_new))
        }
    };
    RequestTrace {
        trace_id,
        parent,
        server: nonzero_u64(),
        client: nonzero_u64(),
        sampled,
        format: incoming.map_or(Format::W3c, |i| i.format),
    }
}

impl RequestTrace {
    /// Whether the request goes upstream with this proxy's context: when its spans are
    /// recorded, or when it starts the trace (the next hop must learn the decision). A proxy that
    /// records nothing of a trace it joined passes the caller's context on as it came, which W3C
    /// Trace Context allows a non-recording participant (and saves a header per request).
    pub fn rewrites(&self) -> bool {
        self.sampled || self.parent.is_none()
    }

    /// The span the next hop's span is a child of: the client span where this proxy makes one
    /// (gateway, sidecar outbound), the server span on an inbound proxy.
    pub fn upstream_parent(&self, role: Role) -> u64 {
        match role {
            Role::SidecarInbound => self.server,
            Role::Gateway | Role::SidecarOutbound => self.client,
        }
    }

    /// Writes the context for the request sent upstream by `role` into `headers`: W3C always
    /// (`tracestate` passes as it came), B3 as well when the request came with B3.
    pub fn inject(&self, headers: &mut HeaderMap, role: Role) {
        let span = self.upstream_parent(role);
        let flags = if self.sampled { "01" } else { "00" };
        // Values unique to each request: never indexed by HPACK (between sidecars the requests
        // share one HTTP/2 connection, whose header table they would otherwise churn).
        let put = |h: &mut HeaderMap, name: &HeaderName, v: String| {
            if let Ok(mut v) = HeaderValue::from_str(&v) {
                v.set_sensitive(true);
                h.insert(name.clone(), v);
            }
        };
        // By hand, not format!: this runs for every request while tracing is on.
        let mut tp = [0u8; 55];
        tp[..3].copy_from_slice(b"00-");
        tp[3..35].copy_from_slice(&hex32(self.trace_id));
        tp[35] = b'-';
        tp[36..52].copy_from_slice(&hex16(span));
        tp[52] = b'-';
        tp[53..].copy_from_slice(flags.as_bytes());
        if let Some(v) = crate::headers::unique_value(&tp) {
            headers.insert(TRACEPARENT.clone(), v);
        }
        let sampled = if self.sampled { "1" } else { "0" };
        match self.format {
            Format::W3c => {}
            Format::B3Single => put(headers, &B3, format!("{:032x}-{span:016x}-{sampled}", self.trace_id)),
            Format::B3Multi => {
                put(headers, &B3_TRACE, format!("{:032x}", self.trace_id));
                put(headers, &B3_SPAN, format!("{span:016x}"));
                let parent = match role {
                    Role::Gateway => Some(self.server),
                    Role::SidecarOutbound | Role::SidecarInbound => self.parent,
                };
                match parent {
                    Some(p) => put(headers, &B3_PARENT, format!("{p:016x}")),
                    None => {
                        headers.remove(&B3_PARENT);
                    }
                }
                put(headers, &B3_SAMPLED, sampled.to_string());
                headers.remove(&B3_FLAGS);
            }
        }
    }
}

/// Kind of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request as this proxy received it.
    Server,
    /// The request this proxy sent upstream.
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// Text known when compiled (no allocation).
    Static(&'static str),
    /// A whole number.
    Int(i64),
    /// A decimal.
    Float(f64),
}

/// A finished span, ready to export.
#[derive(Debug, Clone)]
pub struct Span {
    /// The trace.
    pub trace_id: u128,
    /// This span.
    pub span_id: u64,
    /// Its parent.
    pub parent: Option<u64>,
    /// Server or client.
    pub kind: Kind,
    /// `GET inventory.shop.svc.cluster.local` and the like.
    pub name: String,
    /// Start, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
    /// OpenTelemetry HTTP semantic-convention attributes, and meshgate's.
    pub attributes: Vec<(&'static str, Value)>,
    /// The span failed (5xx for a server span, 4xx/5xx or no response for a client span).
    pub error: bool,
}

fn ns(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The spans of a finished, sampled request: a server span for the request as it arrived
/// (gateway, inbound) and a client span for the request sent upstream (gateway, outbound).
pub fn spans(r: &RequestRecord, t: &RequestTrace) -> Vec<Span> {
    let start = ns(r.start_time());
    let end = start + u64::try_from(r.duration.as_nanos()).unwrap_or(0);
    let method = r.details.as_ref().map_or("HTTP", |d| d.method.as_str());
    let service = r.backend.as_deref().and_then(super::metrics::split_backend);
    let target = match service {
        Some((ns, name)) => super::metrics::service_host(ns, name),
        None => r.details.as_ref().map_or_else(String::new, |d| d.authority.clone()),
    };
    // Room for every attribute a span gets: the vector grows no more.
    let mut common: Vec<(&'static str, Value)> = Vec::with_capacity(20);
    common.extend([
        ("http.request.method", Value::Str(method.to_string())),
        ("http.response.status_code", Value::Int(i64::from(r.status))),
        (
            "network.protocol.version",
            Value::Static(match r.protocol {
                super::Protocol::Http1 => "1.1",
                super::Protocol::Http2 => "2",
            }),
        ),
        ("meshgate.response_flags", Value::Str(r.flags.to_string())),
        ("meshgate.proxy_time_ms", Value::Float(r.proxy_time.as_secs_f64() * 1000.0)),
    ]);
    if let Some(d) = &r.details {
        common.push(("url.path", Value::Str(d.path.split('?').next().unwrap_or("").to_string())));
        if let Some((_, q)) = d.path.split_once('?') {
            common.push(("url.query", Value::Str(q.to_string())));
        }
        common.push(("server.address", Value::Str(d.authority.split(':').next().unwrap_or("").to_string())));
        if let Some(ua) = &d.user_agent {
            common.push(("user_agent.original", Value::Str(ua.clone())));
        }
        if let Some(id) = &d.request_id {
            common.push(("meshgate.request_id", Value::Str(id.clone())));
        }
    }
    let peer = |key: &'static str, p: &Option<std::sync::Arc<meshgate_model::peer::Peer>>| {
        p.as_ref().map(|p| (key, Value::Str(format!("{}/{}", p.namespace, p.workload))))
    };
    common.extend(peer("source.workload", &r.source_workload));
    common.extend(peer("destination.workload", &r.destination_workload));
    if let Some(s) = &r.source {
        common.push(("source.principal", Value::Str(s.to_string())));
    }
    if let Some(d) = &r.destination {
        common.push(("destination.principal", Value::Str(d.to_string())));
    }
    if let Some((route, i)) = &r.route {
        common.push(("meshgate.route", Value::Str(format!("{route}#{i}"))));
    }
    common.push(("meshgate.connection_security_policy", Value::Static(Security::name(r.security))));
    let name = if target.is_empty() { method.to_string() } else { format!("{method} {target}") };
    // Each span takes the attributes it shares with the other; only the gateway makes both.
    let server = |mut a: Vec<(&'static str, Value)>| {
        a.push(("client.address", Value::Str(r.peer.ip().to_string())));
        Span {
            trace_id: t.trace_id,
            span_id: t.server,
            parent: t.parent,
            kind: Kind::Server,
            name: name.clone(),
            start_ns: start,
            end_ns: end,
            attributes: a,
            error: r.status >= 500,
        }
    };
    let client = |parent: Option<u64>, mut a: Vec<(&'static str, Value)>| {
        // The upstream part: from when the proxy had done its own work to the end.
        let upstream_start = start + u64::try_from(r.proxy_time.as_nanos()).unwrap_or(0).min(end - start);
        if let Some(e) = r.endpoint {
            a.push(("network.peer.address", Value::Str(e.ip().to_string())));
            a.push(("network.peer.port", Value::Int(i64::from(e.port()))));
        }
        a.push(("meshgate.attempts", Value::Int(i64::from(r.attempts))));
        Span {
            trace_id: t.trace_id,
            span_id: t.client,
            parent,
            kind: Kind::Client,
            name: name.clone(),
            start_ns: upstream_start,
            end_ns: end,
            attributes: a,
            error: r.status >= 400 || r.endpoint.is_none(),
        }
    };
    match r.role {
        Role::Gateway => vec![server(common.clone()), client(Some(t.server), common)],
        Role::SidecarOutbound => vec![client(t.parent, common)],
        Role::SidecarInbound => vec![server(common)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn w3c_traceparent_per_the_spec() {
        let h = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        let i = extract(&h).unwrap();
        assert_eq!(i.format, Format::W3c);
        let p = i.parent.unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with more
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",                 // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", // not hex
            "00-4bf92f3577b34da6a3ce929d0e0e4736+00f067aa0ba902b7-01", // not a dash
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // v01, no dash after
        ] {
            assert!(extract(&headers(&[("traceparent", bad)])).is_none(), "{bad}");
        }
        // A future version may add fields.
        let h = headers(&[("traceparent", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra")]);
        assert!(!extract(&h).unwrap().parent.unwrap().sampled);
        // Its fields are read whatever follows them, bytes that are not text included; in the
        // four fields such bytes are not digits.
        let raw = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT.clone(), HeaderValue::from_bytes(v).unwrap());
            extract(&h).and_then(|i| i.parent)
        };
        assert!(raw(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\xc3\xa9").unwrap().sampled);
        assert!(raw(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\xc3\xa9").is_none());
        assert!(raw(b"00-4bf92f3577b34da6a3ce929d0e0e47\xc3\xa9-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn hex_digits_as_format_writes_them() {
        for v in [0, 1, 9, 10, 15, 16, 0x00f0_67aa_0ba9_02b7, u64::MAX, 0xa5a5_5a5a_0f0f_f0f0] {
            assert_eq!(std::str::from_utf8(&hex16(v)).unwrap(), format!("{v:016x}"));
        }
        for _ in 0..10_000 {
            let v = fastrand::u64(..);
            assert_eq!(std::str::from_utf8(&hex16(v)).unwrap(), format!("{v:016x}"));
        }
    }

    #[test]
    fn b3_single_and_multi() {
        let h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]);
        let i = extract(&h).unwrap();
        assert_eq!(
            (i.format, i.parent.unwrap().span_id, i.decision),
            (Format::B3Single, 0xe457b5a2e4d86bd1, Some(true))
        );
        assert_eq!(extract(&headers(&[("b3", "0")])).unwrap().decision, Some(false));
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let i = extract(&h).unwrap();
        assert_eq!((i.format, i.parent.unwrap().trace_id), (Format::B3Multi, 0x463ac35c9f6413ad));
        assert_eq!(extract(&headers(&[("x-b3-flags", "1")])).unwrap().decision, Some(true));
    }

    #[test]
    fn propagation_keeps_the_trace_and_the_decision_with_a_new_parent() {
        let mut h = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        let t = start(&h, 0);
        assert!(t.sampled, "the caller's decision is kept even at 0%");
        assert_eq!(t.parent, Some(0x00f067aa0ba902b7));
        t.inject(&mut h, Role::Gateway);
        let out = extract(&h).unwrap().parent.unwrap();
        assert_eq!((out.trace_id, out.span_id, out.sampled), (t.trace_id, t.client, true));
        assert_eq!(h["traceparent"], format!("00-{:032x}-{:016x}-01", t.trace_id, t.client).as_str());
        assert!(h["traceparent"].is_sensitive(), "never indexed by HPACK");
        // Joined but not recorded: passed on as it came.
        let h = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]);
        let t = start(&h, 0);
        assert!(!t.sampled && !t.rewrites());
        // A new trace at 0% is not sampled and says so downstream.
        let mut h = HeaderMap::new();
        let t = start(&h, 0);
        assert!(!t.sampled && t.parent.is_none());
        t.inject(&mut h, Role::SidecarInbound);
        assert!(h["traceparent"].to_str().unwrap().ends_with(&format!("{:016x}-00", t.server)));
        // B3 in, B3 (and W3C) out.
        let mut h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let t = start(&h, 0);
        t.inject(&mut h, Role::SidecarOutbound);
        assert_eq!(h["x-b3-spanid"], format!("{:016x}", t.client).as_str());
        // The outbound proxy's client span is the child of the application's caller's span.
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert!(h.contains_key("traceparent"));
        assert!(start(&headers(&[]), 1_000_000).sampled);
    }
}
