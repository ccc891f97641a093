//! The admin endpoint (loopback by default): readiness, the effective configuration of every
//! role the proxy plays (gateway listeners, sidecar outbound Services, sidecar inbound policy),
//! its certificates, its metrics (`/metrics`, `/stats/prometheus`) and `tap` (a live stream of
//! its requests). The metrics listener (Istio's 15020) serves the metrics alone.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::core::ProxyCore;
use crate::roles::inbound::Inbound;
use crate::telemetry::Telemetry;

type AdminBody = BoxBody<Bytes, Infallible>;

/// What the admin endpoint shows: the core, and the roles played over it.
#[derive(Debug, Clone)]
pub struct Roles {
    /// The core (configuration in force, certificates).
    pub core: Arc<ProxyCore>,
    /// The gateway role (its listeners are in the configuration).
    pub gateway: bool,
    /// The sidecar's inbound side, when the proxy is a sidecar.
    pub inbound: Option<Arc<Inbound>>,
    /// Metrics and `tap`.
    pub telemetry: Option<Arc<Telemetry>>,
    /// Serve the metrics only (the metrics listener).
    pub metrics_only: bool,
    /// The last rendering of the metrics and when it was made: a scraper polling far faster
    /// than Prometheus does (once a millisecond) gets it again instead of costing a rendering
    /// each time.
    rendered: Arc<std::sync::Mutex<Option<(std::time::Instant, Bytes)>>>,
}

/// How long a rendering of the metrics is served again.
const RENDER_REUSE: std::time::Duration = std::time::Duration::from_millis(100);

impl Roles {
    /// A gateway.
    pub fn gateway(core: Arc<ProxyCore>) -> Self {
        Roles { core, gateway: true, inbound: None, telemetry: None, metrics_only: false, rendered: Arc::default() }
    }

    /// A sidecar: outbound over `core`, and `inbound`.
    pub fn sidecar(core: Arc<ProxyCore>, inbound: Arc<Inbound>) -> Self {
        Roles {
            core,
            gateway: false,
            inbound: Some(inbound),
            telemetry: None,
            metrics_only: false,
            rendered: Arc::default(),
        }
    }

    /// The same, with metrics and `tap` from `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// The same roles, for the metrics listener: `/metrics` and `/stats/prometheus` only.
    pub fn metrics_only(mut self) -> Self {
        self.metrics_only = true;
        self
    }
}

/// Serves the admin endpoint until the task is dropped.
pub async fn serve(listener: TcpListener, roles: Roles) {
    let gateway = Arc::new(roles);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(route(&gateway, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn route(roles: &Roles, req: &Request<Incoming>) -> Response<AdminBody> {
    let core = &roles.core;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let path = req.uri().path();
    if path == "/metrics" || path == "/stats/prometheus" {
        let cached = roles.rendered.lock().ok().and_then(|c| c.clone()).filter(|(at, _)| at.elapsed() < RENDER_REUSE);
        let body = match cached {
            Some((_, body)) => body,
            None => {
                let mut out = String::with_capacity(64 * 1024);
                render_metrics(core, roles.telemetry.as_deref(), &mut out);
                let body = Bytes::from(out);
                if let Ok(mut c) = roles.rendered.lock() {
                    *c = Some((std::time::Instant::now(), body.clone()));
                }
                body
            }
        };
        return reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body);
    }
    if roles.metrics_only {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n");
    }
    match path {
        "/tap" => match &roles.telemetry {
            Some(t) => tap(t, req.uri().query().unwrap_or("")),
            None => reply(StatusCode::NOT_FOUND, "text/plain", "this proxy has no telemetry\n"),
        },
        "/ready" => {
            if core.is_ready() {
                reply(StatusCode::OK, "text/plain", "LIVE\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "NOT READY\n")
            }
        }
        "/status" => {
            // Gateway API status of what this proxy serves, as Kubernetes would show it.
            let snap = core.snapshot();
            let items: Vec<serde_json::Value> = snap
                .status
                .iter()
                .map(|s| {
                    let mut metadata = serde_json::json!({ "name": s.object.name });
                    if let Some(ns) = &s.object.namespace {
                        metadata["namespace"] = serde_json::json!(ns);
                    }
                    serde_json::json!({
                        "apiVersion": s.object.kind.api_version(),
                        "kind": s.object.kind.to_string(),
                        "metadata": metadata,
                        "status": s.status,
                    })
                })
                .collect();
            let body = serde_json::to_string_pretty(&serde_json::json!({ "version": snap.version, "items": items }))
                .unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        "/config_dump" => {
            let snap = core.snapshot();
            let mut dump = serde_json::json!({
                "version": snap.version,
                "appliedAt": snap.applied_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "sources": snap.sources,
                "conditions": snap.conditions,
                "downstream": snap.config.downstream,
            });
            let mut names = Vec::new();
            if roles.gateway {
                names.push("gateway");
                dump["ports"] = serde_json::to_value(&snap.config.ports).unwrap_or_default();
            }
            if let Some(mesh) = &snap.config.mesh {
                names.push("sidecar-outbound");
                dump["outbound"] = serde_json::json!({
                    "services": mesh.services.iter().map(|(addr, s)| (addr.to_string(), s)).collect::<std::collections::BTreeMap<_, _>>(),
                    "registryOnly": mesh.registry_only,
                    "identity": mesh.identity,
                });
            }
            if let Some(inbound) = &roles.inbound {
                names.push("sidecar-inbound");
                dump["inbound"] = inbound.describe();
            }
            dump["roles"] = serde_json::json!(names);
            match serde_json::to_vec_pretty(&dump) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        "/certs" => {
            let v = match core.tls() {
                Some(mesh) => {
                    let m = mesh.material();
                    serde_json::json!({
                        "svid": m.svid.summary(Some(m.next_rotation)),
                        "bundle": m.bundle.roots.iter().map(meshgate_tls::svid::describe).collect::<Vec<_>>(),
                    })
                }
                None => serde_json::json!({ "svid": null, "bundle": [] }),
            };
            reply(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&v).unwrap_or_default())
        }
        "/" => reply(StatusCode::OK, "text/plain", "meshgate admin: /ready /config_dump /certs /metrics /tap\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /ready or /config_dump\n"),
    }
}

/// A live stream of this proxy's requests matching `query` (`path`, `method`, `authority`), one
/// JSON object per line. A reader that falls behind is told how many it missed.
fn tap(telemetry: &Telemetry, query: &str) -> Response<AdminBody> {
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::BroadcastStream;
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    let filter = crate::telemetry::tap::Filter::from_query(query);
    let hello = serde_json::json!({"tap": "listening", "filter": {"path": filter.path, "method": filter.method, "authority": filter.authority}});
    let first = tokio_stream::once(Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!("{hello}\n")))));
    let (rx, listening) = telemetry.tap.subscribe();
    let records = BroadcastStream::new(rx).filter_map(move |item| {
        // Held by the stream: the listener counts until the client goes.
        let _listening = &listening;
        let line = match item {
            Ok(r) if filter.matches(&r) => crate::telemetry::access::request_json(&r),
            Ok(_) => return None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                serde_json::json!({"dropped": n, "why": "this reader fell behind"})
            }
        };
        Some(Ok(http_body::Frame::data(Bytes::from(format!("{line}\n")))))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(first.chain(records))));
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    r
}

/// The proxy's metrics in Prometheus text: Istio's standard metrics, then its own (backends'
/// policy events, TLS handshakes, configuration, certificates, access log).
fn render_metrics(core: &ProxyCore, telemetry: Option<&Telemetry>, out: &mut String) {
    use crate::telemetry::metrics::{help, service_host, split_backend};
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(t) = telemetry {
        t.metrics.render(out);
        help(
            out,
            "meshgate_access_log_lines_total",
            "counter",
            "Access log lines written, and dropped while the writer was behind.",
        );
        let _ = writeln!(out, "meshgate_access_log_lines_total{{outcome=\"written\"}} {}", t.access.written());
        let _ = writeln!(out, "meshgate_access_log_lines_total{{outcome=\"dropped\"}} {}", t.access.dropped());
        help(
            out,
            "meshgate_trace_spans_total",
            "counter",
            "Spans exported, and dropped (queue full: the collector behind; export failed).",
        );
        for (outcome, n) in [
            ("exported", &t.spans.exported),
            ("dropped_queue_full", &t.spans.dropped_queue_full),
            ("dropped_export_failed", &t.spans.dropped_export_failed),
        ] {
            let _ = writeln!(out, "meshgate_trace_spans_total{{outcome=\"{outcome}\"}} {}", n.load(Relaxed));
        }
    }
    crate::telemetry::handshakes::render(out);
    let snap = core.snapshot();
    type Event = fn(&crate::upstream::state::BackendEvents) -> &std::sync::atomic::AtomicU64;
    let events: [(&str, &str, Event); 4] = [
        ("meshgate_retries_total", "Retries made, by destination Service.", |e| &e.retries),
        ("meshgate_retry_budget_refused_total", "Retries the retry budget refused.", |e| &e.budget_refused),
        ("meshgate_circuit_breaker_refused_total", "Requests a circuit breaker refused (UO).", |e| &e.overflow),
        ("meshgate_outlier_ejections_total", "Endpoints ejected by outlier detection.", |e| &e.ejections),
    ];
    let service = |id: &str| match split_backend(id) {
        Some((ns, name)) => format!("destination_service=\"{}\"", service_host(ns, name)),
        None => "destination_service=\"unknown\"".to_string(),
    };
    for (name, text, field) in events {
        help(out, name, "counter", text);
        for b in &snap.backends {
            let _ = writeln!(out, "{name}{{{}}} {}", service(&b.model.id), field(&b.state.events).load(Relaxed));
        }
    }
    help(out, "meshgate_upstream_requests_active", "gauge", "Requests in flight, by destination Service.");
    for b in &snap.backends {
        let _ = writeln!(out, "meshgate_upstream_requests_active{{{}}} {}", service(&b.model.id), b.state.active());
    }
    help(out, "meshgate_config_version", "gauge", "Version of the configuration in force.");
    let _ = writeln!(out, "meshgate_config_version {}", snap.version);
    help(out, "meshgate_config_applied_timestamp_seconds", "gauge", "When the configuration in force was applied.");
    let applied = snap.applied_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let _ = writeln!(out, "meshgate_config_applied_timestamp_seconds {applied}");
    let (rejected, last) = crate::telemetry::rejected();
    help(out, "meshgate_config_rejected_total", "counter", "Configurations refused (NACKed); the one in force stayed.");
    let _ = writeln!(out, "meshgate_config_rejected_total {rejected}");
    help(
        out,
        "meshgate_config_last_rejected_timestamp_seconds",
        "gauge",
        "When a configuration was last refused (0: never).",
    );
    let _ = writeln!(out, "meshgate_config_last_rejected_timestamp_seconds {last}");
    help(out, "meshgate_ready", "gauge", "1 while the proxy serves a configuration and is not draining.");
    let _ = writeln!(out, "meshgate_ready {}", u8::from(core.is_ready()));
    if let Some(tls) = core.tls() {
        let m = tls.material();
        help(
            out,
            "meshgate_certificate_expiry_timestamp_seconds",
            "gauge",
            "When this proxy's certificate and its trusted roots expire.",
        );
        let not_after = m.svid.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let _ = writeln!(out, "meshgate_certificate_expiry_timestamp_seconds{{kind=\"svid\",serial=\"\"}} {not_after}");
        for root in &m.bundle.roots {
            let d = meshgate_tls::svid::describe(root);
            let _ = writeln!(
                out,
                "meshgate_certificate_expiry_timestamp_seconds{{kind=\"root\",serial=\"{}\"}} {}",
                d.serial, d.not_after
            );
        }
        help(
            out,
            "meshgate_certificate_rotation_timestamp_seconds",
            "gauge",
            "When this proxy renews its certificate next.",
        );
        let next = m.next_rotation.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let _ = writeln!(out, "meshgate_certificate_rotation_timestamp_seconds {next}");
    }
}
