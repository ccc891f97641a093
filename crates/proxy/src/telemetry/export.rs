//! Span export, off the request path: finished spans go over a bounded queue to one task that
//! sends them in batches (up to 512 spans, or what a second gathered) as OTLP over gRPC, OTLP
//! HTTP/protobuf or Zipkin v2 JSON. One export is in flight at a time, each bounded by a
//! timeout; when the collector is slow, unreachable or answers errors the queue fills and new
//! spans are dropped and counted, never waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use meshgate_model::settings::TraceExporter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use tokio::sync::mpsc;

use super::trace::{Kind, Span, Value, hex16, hex32};

/// Spans waiting for the exporter, at most.
const QUEUE: usize = 4096;
/// Spans per export, at most.
const BATCH: usize = 512;
/// How long spans gather before an export.
const LINGER: Duration = Duration::from_secs(1);
/// An export that takes longer fails.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the exporter did, for metrics.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full (the collector behind or away).
    pub dropped_queue_full: AtomicU64,
    /// Spans lost with a failed export (unreachable, an error answer, a timeout).
    pub dropped_export_failed: AtomicU64,
}

/// The span exporter of one proxy, for one configuration.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    stats: Arc<ExportStats>,
    /// Where spans go, for logs and metrics.
    pub target: TraceExporter,
}

impl Exporter {
    /// An exporter to `target` naming this proxy `service` (with `resource` attributes),
    /// counting into `stats`. Needs a Tokio runtime.
    pub fn start(target: TraceExporter, service: String, role: &'static str, stats: Arc<ExportStats>) -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let sender = Sender::new(&target, service, role);
        handle.spawn(run(rx, sender, stats.clone()));
        Some(Exporter { tx, stats, target })
    }

    /// Queues finished spans; drops (and counts) what does not fit.
    pub fn push(&self, spans: Vec<Span>) {
        for s in spans {
            if self.tx.try_send(s).is_err() {
                self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Span>, mut sender: Sender, stats: Arc<ExportStats>) {
    let mut warned = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        match tokio::time::timeout(TIMEOUT, sender.send(batch)).await {
            Ok(Ok(())) => {
                stats.exported.fetch_add(n, Ordering::Relaxed);
                warned = false;
            }
            Ok(Err(e)) => {
                stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                if !warned {
                    tracing::warn!(collector = %sender.describe(), "trace export failed, {n} spans dropped: {e}");
                    warned = true;
                }
            }
            Err(_) => {
                stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                if !warned {
                    tracing::warn!(collector = %sender.describe(), "trace export timed out after {TIMEOUT:?}, {n} spans dropped");
                    warned = true;
                }
            }
        }
    }
}

/// The protocol half of the exporter.
enum Sender {
    Grpc { client: TraceServiceClient<tonic::transport::Channel>, resource: Resource, url: String },
    OtlpHttp { url: Url, resource: Resource },
    Zipkin { url: Url, service: String },
}

/// An `http://host:port/path` URL, split.
#[derive(Debug, Clone)]
struct Url {
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Self {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        Url { authority: authority.to_string(), path }
    }
}

fn kv(key: &str, v: Value) -> KeyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Static(s) => any_value::Value::StringValue(s.to_string()),
        Value::Int(i) => any_value::Value::IntValue(i),
        Value::Float(f) => any_value::Value::DoubleValue(f),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }) }
}

fn resource(service: &str, role: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", Value::Str(service.to_string())),
            kv("meshgate.role", Value::Str(role.to_string())),
            kv("telemetry.sdk.name", Value::Str("meshgate".into())),
        ],
        ..Resource::default()
    }
}

/// The OTLP request of `spans`.
pub fn otlp_request(spans: Vec<Span>, resource: &Resource) -> ExportTraceServiceRequest {
    let spans = spans
        .into_iter()
        .map(|s| otlp::Span {
            trace_id: s.trace_id.to_be_bytes().to_vec(),
            span_id: s.span_id.to_be_bytes().to_vec(),
            parent_span_id: s.parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            name: s.name,
            kind: match s.kind {
                Kind::Server => otlp::span::SpanKind::Server as i32,
                Kind::Client => otlp::span::SpanKind::Client as i32,
            },
            start_time_unix_nano: s.start_ns,
            end_time_unix_nano: s.end_ns,
            attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(otlp::Status {
                code: if s.error {
                    otlp::status::StatusCode::Error as i32
                } else {
                    otlp::status::StatusCode::Unset as i32
                },
                message: String::new(),
            }),
            ..otlp::Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "meshgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Zipkin v2 JSON of `spans` (an array of span objects, tags all strings), written by hand
/// rather than through serde: a span is ~1 KB of JSON, almost all of it strings that need no
/// escaping, and serde's per-byte escaping, per-field machinery and the ids and numbers
/// formatted into strings of their own cost ~16,000 instructions a span (measured:
/// `bench/instructions`), more than the request it describes.
pub fn zipkin_json(spans: &[Span], service: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(spans.len() * 1024 + 2);
    out.push(b'[');
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"traceId\":\"");
        out.extend_from_slice(&hex32(s.trace_id));
        out.extend_from_slice(b"\",\"id\":\"");
        out.extend_from_slice(&hex16(s.span_id));
        if let Some(p) = s.parent {
            out.extend_from_slice(b"\",\"parentId\":\"");
            out.extend_from_slice(&hex16(p));
        }
        out.extend_from_slice(b"\",\"name\":");
        json_str(&mut out, &s.name);
        out.extend_from_slice(match s.kind {
            Kind::Server => b",\"kind\":\"SERVER\",\"timestamp\":",
            Kind::Client => b",\"kind\":\"CLIENT\",\"timestamp\":",
        });
        push_u64(&mut out, s.start_ns / 1000);
        out.extend_from_slice(b",\"duration\":");
        push_u64(&mut out, (s.end_ns.saturating_sub(s.start_ns) / 1000).max(1));
        out.extend_from_slice(b",\"localEndpoint\":{\"serviceName\":");
        json_str(&mut out, service);
        out.extend_from_slice(b"},\"tags\":{");
        for (n, (k, v)) in s.attributes.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            json_str(&mut out, k);
            out.push(b':');
            match v {
                Value::Str(v) => json_str(&mut out, v),
                Value::Static(v) => json_str(&mut out, v),
                // Zipkin tags are strings. Writing into a `Vec` cannot fail.
                Value::Int(i) => {
                    let _ = write!(out, "\"{i}\"");
                }
                Value::Float(f) => {
                    let _ = write!(out, "\"{f}\"");
                }
            }
        }
        if s.error {
            let error: &[u8] = if s.attributes.is_empty() { b"\"error\":\"true\"" } else { b",\"error\":\"true\"" };
            out.extend_from_slice(error);
        }
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
    out
}

/// The decimal digits of `v` (every span's timestamp and duration: no formatter for them).
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// Whether none of the eight bytes of `x` needs escaping in a JSON string (a control character,
/// `"` or `\`): the exact answer of the classic zero-byte tests, eight bytes per step.
fn clean8(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES << 7;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    (control | zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')))) == 0
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `s` as a JSON string (RFC 8259 §7): quotes, backslashes and control characters escaped,
/// everything else (UTF-8 included) as it is.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut rest = s.as_bytes();
    loop {
        let mut n = 0;
        while let Some(chunk) = rest.get(n..n + 8)
            && let Ok(eight) = <[u8; 8]>::try_from(chunk)
            && clean8(u64::from_le_bytes(eight))
        {
            n += 8;
        }
        while rest.get(n).is_some_and(|&b| !needs_escape(b)) {
            n += 1;
        }
        out.extend_from_slice(&rest[..n]);
        let Some(&b) = rest.get(n) else { break };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
        rest = &rest[n + 1..];
    }
    out.push(b'"');
}

impl Sender {
    fn new(target: &TraceExporter, service: String, role: &str) -> Self {
        match target {
            TraceExporter::OtlpGrpc(url) => {
                let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap_or_else(|_| tonic::transport::Endpoint::from_static("http://127.0.0.1:4317"))
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(TIMEOUT);
                Sender::Grpc {
                    client: TraceServiceClient::new(endpoint.connect_lazy()),
                    resource: resource(&service, role),
                    url: url.clone(),
                }
            }
            TraceExporter::OtlpHttp(url) => {
                Sender::OtlpHttp { url: Url::parse(url), resource: resource(&service, role) }
            }
            TraceExporter::Zipkin(url) => Sender::Zipkin { url: Url::parse(url), service },
        }
    }

    fn describe(&self) -> String {
        match self {
            Sender::Grpc { url, .. } => format!("OTLP/gRPC {url}"),
            Sender::OtlpHttp { url, .. } => format!("OTLP/HTTP http://{}{}", url.authority, url.path),
            Sender::Zipkin { url, .. } => format!("Zipkin http://{}{}", url.authority, url.path),
        }
    }

    async fn send(&mut self, spans: Vec<Span>) -> Result<(), String> {
        match self {
            Sender::Grpc { client, resource, .. } => {
                let resp = client
                    .export(otlp_request(spans, resource))
                    .await
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
                match resp.into_inner().partial_success {
                    Some(p) if p.rejected_spans > 0 => {
                        Err(format!("{} spans rejected: {}", p.rejected_spans, p.error_message))
                    }
                    _ => Ok(()),
                }
            }
            Sender::OtlpHttp { url, resource } => {
                let body = prost::Message::encode_to_vec(&otlp_request(spans, resource));
                post(url, "application/x-protobuf", Bytes::from(body)).await
            }
            Sender::Zipkin { url, service } => {
                post(url, "application/json", Bytes::from(zipkin_json(&spans, service))).await
            }
        }
    }
}

/// POSTs `body` to `url` over a new HTTP/1.1 connection (one export a second at most).
async fn post(url: &Url, content_type: &'static str, body: Bytes) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(&url.authority).await.map_err(|e| format!("{}: {e}", url.authority))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(url.path.as_str())
        .header(http::header::HOST, url.authority.as_str())
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&text[..text.len().min(200)]).trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, attributes: Vec<(&'static str, Value)>, error: bool) -> Span {
        Span {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            parent: Some(0x0000_0000_0000_0001),
            kind: Kind::Client,
            name: name.to_string(),
            start_ns: 1_700_000_000_123_456_789,
            end_ns: 1_700_000_000_125_456_789,
            attributes,
            error,
        }
    }

    #[test]
    fn zipkin_json_is_json_with_every_string_escaped() {
        // Every escape JSON has, a string longer than eight bytes with the escape past the first
        // eight, non-ASCII text, and runs ending exactly on and just off an eight-byte step.
        let tricky = "GET /a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f} é ✓ end";
        let cases = [tricky, "", "12345678", "1234567\"", "12345678\"", "abcdefghijklmnop\\"];
        for (n, text) in cases.iter().enumerate() {
            let spans = [
                span(text, vec![("k", Value::Str(text.to_string())), ("s", Value::Static("2"))], n % 2 == 0),
                span("second", vec![("i", Value::Int(-42)), ("u", Value::Int(200)), ("f", Value::Float(0.25))], false),
                span("no tags", vec![], true),
            ];
            let json = zipkin_json(&spans, "svc \"q\".ns");
            let v: serde_json::Value =
                serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
            let a = v.as_array().unwrap();
            assert_eq!(a.len(), 3);
            assert_eq!(a[0]["name"], *text);
            assert_eq!(a[0]["tags"]["k"], *text);
            assert_eq!(a[0]["tags"]["s"], "2");
            assert_eq!(a[0]["tags"].get("error").is_some(), n % 2 == 0);
            assert_eq!(a[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(a[0]["id"], "00f067aa0ba902b7");
            assert_eq!(a[0]["parentId"], "0000000000000001");
            assert_eq!(a[0]["kind"], "CLIENT");
            assert_eq!(a[0]["timestamp"], 1_700_000_000_123_456u64);
            assert_eq!(a[0]["duration"], 2_000);
            assert_eq!(a[0]["localEndpoint"]["serviceName"], "svc \"q\".ns");
            assert_eq!(a[1]["tags"], serde_json::json!({"i": "-42", "u": "200", "f": "0.25"}));
            assert_eq!(a[2]["tags"], serde_json::json!({"error": "true"}));
        }
        assert_eq!(zipkin_json(&[], "svc"), b"[]");
        // Byte for byte what serde_json writes for the same strings.
        for text in cases {
            let mut out = Vec::new();
            json_str(&mut out, text);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn the_eight_byte_test_agrees_with_the_byte_test() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut eight = *b"abcdefgh";
                eight[at] = b;
                assert_eq!(clean8(u64::from_le_bytes(eight)), !needs_escape(b), "byte {b:#x} at {at}");
            }
        }
    }
}
