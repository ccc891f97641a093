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

use super::trace::{Kind, Span, Value};

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

/// A span's attributes as Zipkin tags (all strings), serialized as they are.
struct Tags<'a>(&'a Span);

impl serde::Serialize for Tags<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.attributes.len() + usize::from(self.0.error)))?;
        for (k, v) in &self.0.attributes {
            match v {
                Value::Str(v) => m.serialize_entry(k, v)?,
                Value::Int(i) => m.serialize_entry(k, &i.to_string())?,
                Value::Float(f) => m.serialize_entry(k, &f.to_string())?,
            }
        }
        if self.0.error {
            m.serialize_entry("error", "true")?;
        }
        m.end()
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan<'a> {
    trace_id: String,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    name: &'a str,
    kind: &'static str,
    timestamp: u64,
    duration: u64,
    local_endpoint: LocalEndpoint<'a>,
    tags: Tags<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LocalEndpoint<'a> {
    service_name: &'a str,
}

/// Zipkin v2 JSON of `spans` (`localEndpoint.serviceName` = `service`).
pub fn zipkin_json(spans: &[Span], service: &str) -> Vec<u8> {
    let out: Vec<ZipkinSpan<'_>> = spans
        .iter()
        .map(|s| ZipkinSpan {
            trace_id: format!("{:032x}", s.trace_id),
            id: format!("{:016x}", s.span_id),
            parent_id: s.parent.map(|p| format!("{p:016x}")),
            name: &s.name,
            kind: match s.kind {
                Kind::Server => "SERVER",
                Kind::Client => "CLIENT",
            },
            timestamp: s.start_ns / 1000,
            duration: (s.end_ns.saturating_sub(s.start_ns) / 1000).max(1),
            local_endpoint: LocalEndpoint { service_name: service },
            tags: Tags(s),
        })
        .collect();
    serde_json::to_vec(&out).unwrap_or_default()
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
