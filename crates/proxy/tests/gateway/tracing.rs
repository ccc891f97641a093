//! Distributed tracing at the gateway, against real receivers built on the official
//! opentelemetry-proto definitions (OTLP over gRPC and HTTP/protobuf) and a Zipkin v2 JSON
//! endpoint: the context a request brings (W3C or B3) is continued, a trace is started when
//! none comes, the upstream sees this proxy's span as its parent, and the spans arrive in
//! batches with OpenTelemetry's HTTP attributes. A collector that fails costs no request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meshgate_proxy::GatewayOptions;
use meshgate_proxy::telemetry::{Telemetry, TelemetryOptions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;

use crate::harness::{Mesh, gateway, route_to};

/// Everything a receiver got.
#[derive(Default, Clone)]
struct Received {
    otlp: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    zipkin: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Received {
    fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for r in self.otlp.lock().unwrap().iter() {
            for rs in &r.resource_spans {
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().cloned());
                }
            }
        }
        out
    }

    fn service_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.otlp.lock().unwrap().iter() {
            for rs in &r.resource_spans {
                for kv in rs.resource.iter().flat_map(|r| &r.attributes) {
                    if kv.key == "service.name"
                        && let Some(any_value::Value::StringValue(s)) = kv.value.as_ref().and_then(|v| v.value.as_ref())
                    {
                        out.push(s.clone());
                    }
                }
            }
        }
        out
    }

    async fn wait_spans(&self, n: usize) -> Vec<Span> {
        for _ in 0..100 {
            let s = self.spans();
            if s.len() >= n {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} spans: {:?}", self.spans());
    }

    async fn wait_zipkin(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let s: Vec<serde_json::Value> =
                self.zipkin.lock().unwrap().iter().flat_map(|b| b.as_array().cloned().unwrap_or_default()).collect();
            if s.len() >= n {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} Zipkin spans: {:?}", self.zipkin.lock().unwrap());
    }
}

struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.otlp.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port.
async fn grpc_receiver() -> (SocketAddr, Received) {
    let received = Received::default();
    let addr = SocketAddr::from(([127, 0, 0, 1], meshgate_testkit::free_port()));
    let server =
        tonic::transport::Server::builder().add_service(TraceServiceServer::new(GrpcReceiver(received.clone())));
    tokio::spawn(server.serve(addr));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, received)
}

/// An HTTP receiver: OTLP/HTTP protobuf on `/v1/traces`, Zipkin JSON on `/api/v2/spans`;
/// answers `status`.
async fn http_receiver(status: u16) -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let r = r.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let r = r.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ct = req.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if status == 200 {
                            match path.as_str() {
                                "/v1/traces" => {
                                    assert_eq!(ct.as_deref(), Some("application/x-protobuf"));
                                    let decoded: ExportTraceServiceRequest = prost::Message::decode(body).unwrap();
                                    r.otlp.lock().unwrap().push(decoded);
                                }
                                "/api/v2/spans" => {
                                    assert_eq!(ct.as_deref(), Some("application/json"));
                                    r.zipkin.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                                }
                                other => panic!("unexpected path {other}"),
                            }
                        }
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"")));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

fn mesh_config(tracing: &str) -> String {
    format!(
        "\n---\napiVersion: meshgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec:\n  tracing: {tracing}\n"
    )
}

async fn traced_gateway(tracing: &str) -> (Mesh, Arc<Telemetry>) {
    let telemetry = Arc::new(Telemetry::new(TelemetryOptions { access_log: false, role: "gateway" }));
    let options = GatewayOptions { sink: telemetry.clone(), ..GatewayOptions::default() };
    let yaml = gateway("gw") + &route_to("infra-backend-v1", "") + &mesh_config(tracing);
    (Mesh::start_with(&yaml, &["infra/infra-backend-v1"], options).await, telemetry)
}

fn attr(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn otlp_grpc_gets_a_server_and_a_client_span_continuing_the_callers_w3c_trace() {
    let (collector, received) = grpc_receiver().await;
    let (m, telemetry) =
        traced_gateway(&format!("{{samplingPercent: 0, otlp: {{endpoint: 'http://{collector}', protocol: grpc}}}}"))
            .await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = m.get_with("example.com", "/items?x=1", &[("traceparent", incoming), ("tracestate", "vendor=1")]).await;
    assert_eq!(r.status, 200);
    let echoed = r.echoed();
    // Upstream: the same trace, sampled, this proxy's client span as the parent.
    let up = &echoed.headers["traceparent"];
    assert!(up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && up.ends_with("-01"), "{up}");
    assert_ne!(up, incoming);
    assert_eq!(echoed.headers["tracestate"], "vendor=1");
    let spans = received.wait_spans(2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).unwrap();
    let client = spans.iter().find(|s| s.kind == SpanKind::Client as i32).unwrap();
    for s in [server, client] {
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);
        assert_eq!(attr(s, "http.request.method"), Some(any_value::Value::StringValue("GET".into())));
        assert_eq!(attr(s, "http.response.status_code"), Some(any_value::Value::IntValue(200)));
        assert_eq!(attr(s, "url.path"), Some(any_value::Value::StringValue("/items".into())));
        assert_eq!(attr(s, "url.query"), Some(any_value::Value::StringValue("x=1".into())));
        assert_eq!(attr(s, "server.address"), Some(any_value::Value::StringValue("example.com".into())));
    }
    // Parented: caller → server span → client span → the upstream's parent.
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(up.split('-').nth(2).unwrap(), hex(&client.span_id));
    assert_eq!(server.name, "GET infra-backend-v1.infra.svc.cluster.local");
    assert!(
        received.service_names().iter().all(|n| n == "meshgate-gateway.meshgate-system"),
        "{:?}",
        received.service_names()
    );
    assert_eq!(telemetry.spans.exported.load(std::sync::atomic::Ordering::Relaxed), 2);
    // At 0% a request without a decision starts an unsampled trace: passed on, not exported.
    let r = m.get("example.com", "/").await;
    assert!(r.echoed().headers["traceparent"].ends_with("-00"), "{:?}", r.echoed().headers);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received.spans().len(), 2);
}

#[tokio::test]
async fn otlp_http_protobuf_with_b3_multi_headers_continued() {
    let (collector, received) = http_receiver(200).await;
    let (m, _t) =
        traced_gateway(&format!("{{samplingPercent: 100, otlp: {{endpoint: 'http://{collector}', protocol: http}}}}"))
            .await;
    let b3 = [
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    let r = m.get_with("example.com", "/b3", &b3).await;
    let h = &r.echoed().headers;
    assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(h["x-b3-sampled"], "1");
    assert!(h["traceparent"].starts_with("00-463ac35c9f6413ad48485a3953bb6124-"), "{h:?}");
    let spans = received.wait_spans(2).await;
    let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).unwrap();
    let client = spans.iter().find(|s| s.kind == SpanKind::Client as i32).unwrap();
    assert_eq!(hex(&server.parent_span_id), "a2fb4a1d1a96d312");
    assert_eq!(h["x-b3-spanid"], hex(&client.span_id));
    assert_eq!(h["x-b3-parentspanid"], hex(&server.span_id));
}

#[tokio::test]
async fn zipkin_v2_json_for_a_trace_the_gateway_started() {
    let (collector, received) = http_receiver(200).await;
    let (m, _t) =
        traced_gateway(&format!("{{samplingPercent: 100, zipkin: {{endpoint: 'http://{collector}/api/v2/spans'}}}}"))
            .await;
    let r = m.get("example.com", "/z").await;
    let up = r.echoed().headers["traceparent"].clone();
    let trace = up.split('-').nth(1).unwrap().to_string();
    let spans = received.wait_zipkin(2).await;
    let server = spans.iter().find(|s| s["kind"] == "SERVER").unwrap();
    let client = spans.iter().find(|s| s["kind"] == "CLIENT").unwrap();
    assert_eq!(server["traceId"], trace.as_str());
    assert!(server.get("parentId").is_none(), "a new trace starts at the gateway: {server}");
    assert_eq!(client["parentId"], server["id"]);
    assert_eq!(client["id"], up.split('-').nth(2).unwrap());
    assert_eq!(server["localEndpoint"]["serviceName"], "meshgate-gateway.meshgate-system");
    assert_eq!(server["tags"]["http.response.status_code"], "200");
    assert!(server["duration"].as_u64().unwrap() >= 1 && server["timestamp"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_failing_or_absent_collector_costs_no_request_and_is_counted() {
    use std::sync::atomic::Ordering::Relaxed;
    // Answers 503 to everything.
    let (failing, _) = http_receiver(503).await;
    let (m, t) =
        traced_gateway(&format!("{{samplingPercent: 100, zipkin: {{endpoint: 'http://{failing}/api/v2/spans'}}}}"))
            .await;
    for _ in 0..50 {
        assert_eq!(m.get("example.com", "/").await.status, 200);
    }
    for _ in 0..100 {
        if t.spans.dropped_export_failed.load(Relaxed) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.spans.dropped_export_failed.load(Relaxed), 100, "50 requests, 2 spans each, all refused");
    assert_eq!(t.spans.exported.load(Relaxed), 0);
    // Nobody listening at all (a closed port): the same.
    let closed = SocketAddr::from(([127, 0, 0, 1], meshgate_testkit::free_port()));
    let (m, t) =
        traced_gateway(&format!("{{samplingPercent: 100, otlp: {{endpoint: 'http://{closed}', protocol: grpc}}}}"))
            .await;
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(m.get("example.com", "/").await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "requests waited on the collector: {:?}", started.elapsed());
    for _ in 0..200 {
        if t.spans.dropped_export_failed.load(Relaxed) + t.spans.dropped_queue_full.load(Relaxed) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.spans.dropped_export_failed.load(Relaxed) + t.spans.dropped_queue_full.load(Relaxed), 100);
}
