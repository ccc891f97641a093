//! The admin endpoint (loopback by default): readiness, the effective configuration of every
//! role the proxy plays (gateway listeners, sidecar outbound Services, sidecar inbound policy)
//! and its certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::core::ProxyCore;
use crate::roles::inbound::Inbound;

/// What the admin endpoint shows: the core, and the roles played over it.
#[derive(Debug, Clone)]
pub struct Roles {
    /// The core (configuration in force, certificates).
    pub core: Arc<ProxyCore>,
    /// The gateway role (its listeners are in the configuration).
    pub gateway: bool,
    /// The sidecar's inbound side, when the proxy is a sidecar.
    pub inbound: Option<Arc<Inbound>>,
}

impl Roles {
    /// A gateway.
    pub fn gateway(core: Arc<ProxyCore>) -> Self {
        Roles { core, gateway: true, inbound: None }
    }

    /// A sidecar: outbound over `core`, and `inbound`.
    pub fn sidecar(core: Arc<ProxyCore>, inbound: Arc<Inbound>) -> Self {
        Roles { core, gateway: false, inbound: Some(inbound) }
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

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn route(roles: &Roles, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let core = &roles.core;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/ready" => {
            if core.is_ready() {
                reply(StatusCode::OK, "text/plain", "LIVE\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "NOT READY\n")
            }
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
        "/" => reply(StatusCode::OK, "text/plain", "meshgate admin: /ready /config_dump /certs\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /ready or /config_dump\n"),
    }
}
