//! The HTTP request path of the gateway: listener by host → route match → filters → weighted
//! backend → endpoint (P2C) → pooled connection. Everything it reads comes from one snapshot,
//! taken when the request arrives; a reload never changes a request in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use meshgate_model::host::normalize_host;
use meshgate_model::matching::RequestView;
use meshgate_model::rule::{Backend, Rule, UpstreamProtocol};

use crate::body::{RequestBody, ResponseBody};
use crate::gateway::Snapshot;
use crate::headers::{ensure_request_id, set_forwarded, strip_hop_by_hop};

/// Who is on the other end of a downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The port the connection was accepted on (selects the listener set).
    pub port: u16,
    /// The client.
    pub peer: SocketAddr,
    /// `http` (HTTPS listeners come later).
    pub scheme: &'static str,
    /// Write an access log line per request.
    pub access_log: bool,
}

/// Why the proxy answered by itself; the short code follows Envoy's response flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReason {
    /// No listener for this host on this port.
    NoListener,
    /// No route matched (NR).
    NoRoute,
    /// The matched rule cannot be served (unsupported filter).
    RuleFailure,
    /// The backend reference is invalid (missing Service, not permitted, unknown kind).
    InvalidBackend,
    /// Every backend has weight 0, or there are none.
    NoBackend,
    /// The Service has no ready endpoints (UH).
    NoHealthyUpstream,
    /// Connecting to the endpoint failed (UF).
    ConnectFailure,
    /// The endpoint reset or closed before response headers (UC).
    UpstreamReset,
    /// A redirect filter answered.
    Redirect,
}

impl LocalReason {
    /// Envoy-style response flag.
    pub fn flag(self) -> &'static str {
        match self {
            LocalReason::NoListener | LocalReason::NoRoute => "NR",
            LocalReason::RuleFailure | LocalReason::InvalidBackend | LocalReason::NoBackend => "NR",
            LocalReason::NoHealthyUpstream => "UH",
            LocalReason::ConnectFailure => "UF",
            LocalReason::UpstreamReset => "UC",
            LocalReason::Redirect => "-",
        }
    }
}

fn local(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut body = message;
    body.push('\n');
    let mut resp = Response::new(ResponseBody::local(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Handles one request from a client.
pub async fn handle(snapshot: Arc<Snapshot>, conn: &ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let started = conn.access_log.then(Instant::now);
    let method = conn.access_log.then(|| req.method().clone());
    let path_for_log = conn.access_log.then(|| req.uri().path().to_string());
    let (resp, route, upstream, reason) = route_and_forward(&snapshot, conn, req).await;
    if let (Some(started), Some(method), Some(path)) = (started, method, path_for_log) {
        tracing::info!(
            target: "meshgate::access",
            "{method} {path} {} {} route={} upstream={} flags={} {:.3}ms",
            resp.status().as_u16(),
            conn.peer,
            route.map_or_else(|| "-".to_string(), |r| format!("{}#{}", r.route, r.index)),
            upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
            reason.map_or("-", LocalReason::flag),
            started.elapsed().as_secs_f64() * 1000.0,
        );
    }
    resp
}

type Outcome = (Response<ResponseBody>, Option<Arc<Rule>>, Option<SocketAddr>, Option<LocalReason>);

async fn route_and_forward(snapshot: &Snapshot, conn: &ConnInfo, req: Request<Incoming>) -> Outcome {
    let (mut parts, body) = req.into_parts();
    // HTTP/2 and absolute-form requests carry the host in the URI; HTTP/1.1 in Host.
    let host_value: Option<HeaderValue> = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let host_full = host_value.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let host = normalize_host(host_full);

    let Some(listener) = snapshot.config.ports.get(&conn.port).and_then(|set| set.select(&host)) else {
        let msg = format!("no listener on port {} for host {host:?}", conn.port);
        return (local(StatusCode::NOT_FOUND, msg), None, None, Some(LocalReason::NoListener));
    };
    let path = parts.uri.path();
    let query = parts.uri.query();
    let view = RequestView { method: &parts.method, path, query, headers: &parts.headers };
    let Some(entry) = listener.routes.find(&host, &view) else {
        let msg = format!("no route for {} {path} on host {host:?}", parts.method);
        return (local(StatusCode::NOT_FOUND, msg), None, None, Some(LocalReason::NoRoute));
    };
    let rule = &entry.rule;
    let route_name = rule.clone();
    if let Some(failure) = &rule.failure {
        let msg = format!("route {} rule {} cannot be served: {failure}", rule.route, rule.index);
        return (local(StatusCode::INTERNAL_SERVER_ERROR, msg), Some(route_name), None, Some(LocalReason::RuleFailure));
    }
    if let Some(redirect) = &rule.redirect {
        let location = redirect.location(conn.scheme, &host, conn.port, path, query, entry.matched_prefix());
        let mut resp = Response::new(ResponseBody::local(Bytes::new()));
        *resp.status_mut() = StatusCode::from_u16(redirect.status_code).unwrap_or(StatusCode::FOUND);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        rule.response_headers.apply(resp.headers_mut());
        return (resp, Some(route_name), None, Some(LocalReason::Redirect));
    }
    let Some(weighted) = rule.pick_backend() else {
        let msg = format!("route {} rule {} has no backend with a weight above 0", rule.route, rule.index);
        return (local(StatusCode::INTERNAL_SERVER_ERROR, msg), Some(route_name), None, Some(LocalReason::NoBackend));
    };
    let service = match &weighted.backend {
        Backend::Service(s) => s,
        Backend::Invalid { reason, message } => {
            let msg = format!("invalid backend ({reason}): {message}");
            return (
                local(StatusCode::INTERNAL_SERVER_ERROR, msg),
                Some(route_name),
                None,
                Some(LocalReason::InvalidBackend),
            );
        }
    };
    let Some(backend) = snapshot.backends.get(service.slot) else {
        let msg = format!("backend {} is not prepared", service.id);
        return (
            local(StatusCode::INTERNAL_SERVER_ERROR, msg),
            Some(route_name),
            None,
            Some(LocalReason::InvalidBackend),
        );
    };
    let Some(endpoint) = backend.pick().cloned() else {
        let msg = format!("no healthy upstream: Service {} has no ready endpoints", service.id);
        return (
            local(StatusCode::SERVICE_UNAVAILABLE, msg),
            Some(route_name),
            None,
            Some(LocalReason::NoHealthyUpstream),
        );
    };

    // The upstream request: the client's, changed in place.
    ensure_request_id(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    // The proxy answers `Expect: 100-continue` itself (hyper sends 100 when the body is read).
    if parts.headers.contains_key(header::EXPECT) {
        parts.headers.remove(header::EXPECT);
    }
    set_forwarded(&mut parts.headers, conn.peer.ip(), conn.scheme, host_value.as_ref());
    rule.request_headers.apply(&mut parts.headers);
    weighted.request_headers.apply(&mut parts.headers);

    let rewrite = rule.rewrite.as_ref();
    let new_path = rewrite.and_then(|r| r.path.as_ref()).map(|m| m.apply(path, entry.matched_prefix()));
    let new_host = rewrite.and_then(|r| r.hostname.as_deref());
    let path_and_query: Option<PathAndQuery> = match new_path {
        Some(p) => {
            let pq = match query {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            PathAndQuery::try_from(pq).ok()
        }
        None => parts.uri.path_and_query().cloned(),
    };
    let upstream_authority: Option<HeaderValue> = match new_host {
        Some(h) => HeaderValue::from_str(h).ok(),
        None => host_value.clone(),
    };
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.path_and_query = path_and_query.or_else(|| Some(PathAndQuery::from_static("/")));
    match endpoint.protocol() {
        UpstreamProtocol::Http1 => {
            // An HTTP/1.1 request without a rewrite already carries its Host: leave it be.
            let keep = new_host.is_none() && parts.uri.authority().is_none();
            parts.version = Version::HTTP_11;
            match upstream_authority {
                Some(a) if !keep => {
                    parts.headers.insert(header::HOST, a);
                }
                Some(_) => {}
                None => {
                    parts.headers.remove(header::HOST);
                }
            }
        }
        UpstreamProtocol::H2c => {
            parts.version = Version::HTTP_2;
            uri_parts.scheme = Some(Scheme::HTTP);
            uri_parts.authority = upstream_authority
                .as_ref()
                .and_then(|a| Authority::try_from(a.as_bytes()).ok())
                .or_else(|| Authority::try_from(endpoint.addr.to_string()).ok());
            parts.headers.remove(header::HOST);
        }
    }
    parts.uri = Uri::from_parts(uri_parts).unwrap_or_else(|_| Uri::from_static("/"));

    let mirrors: Vec<_> = rule.mirrors.iter().filter(|m| m.sample()).collect();
    let (body, copies) = RequestBody::tee(body, mirrors.len());
    for (mirror, copy) in mirrors.into_iter().zip(copies) {
        send_mirror(snapshot, &mirror.backend, &parts, copy);
    }

    let addr = endpoint.addr;
    match endpoint.send(Request::from_parts(parts, body)).await {
        Ok((resp, returner)) => {
            let (mut rparts, rbody) = resp.into_parts();
            strip_hop_by_hop(&mut rparts.headers);
            rule.response_headers.apply(&mut rparts.headers);
            weighted.response_headers.apply(&mut rparts.headers);
            let resp = Response::from_parts(rparts, ResponseBody::upstream(rbody, Some(returner)));
            (resp, Some(route_name), Some(addr), None)
        }
        Err(e) => {
            let (status, reason, msg) = if e.is_connect() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    LocalReason::ConnectFailure,
                    format!("upstream connect error: {e} (Service {})", service.id),
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    LocalReason::UpstreamReset,
                    format!("upstream {addr} reset before response headers: {e} (Service {})", service.id),
                )
            };
            tracing::debug!(upstream = %addr, error = %e, "upstream request failed");
            (local(status, msg), Some(route_name), Some(addr), Some(reason))
        }
    }
}

/// Sends a copy of the request to a mirror; its response is read and dropped.
fn send_mirror(snapshot: &Snapshot, backend: &Backend, parts: &http::request::Parts, body: RequestBody) {
    let Backend::Service(service) = backend else { return };
    let Some(endpoint) = snapshot.backends.get(service.slot).and_then(|b| b.pick()).cloned() else { return };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    match endpoint.protocol() {
        UpstreamProtocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            if let Some(a) = parts.uri.authority()
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            if let Some(pq) = parts.uri.path_and_query() {
                let mut p = http::uri::Parts::default();
                p.path_and_query = Some(pq.clone());
                if let Ok(u) = Uri::from_parts(p) {
                    *req.uri_mut() = u;
                }
            }
        }
        UpstreamProtocol::H2c => {
            *req.version_mut() = Version::HTTP_2;
            if parts.uri.authority().is_none() {
                let authority = parts.headers.get(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok());
                let mut p = http::uri::Parts::default();
                p.scheme = Some(Scheme::HTTP);
                p.authority = authority.or_else(|| Authority::try_from(endpoint.addr.to_string()).ok());
                p.path_and_query = parts.uri.path_and_query().cloned();
                if let Ok(u) = Uri::from_parts(p) {
                    *req.uri_mut() = u;
                }
            }
            req.headers_mut().remove(header::HOST);
        }
    }
    tokio::spawn(async move {
        match endpoint.send(req).await {
            Ok((resp, returner)) => {
                use http_body_util::BodyExt;
                let body = ResponseBody::upstream(resp.into_body(), Some(returner));
                let _ = body.collect().await;
            }
            Err(e) => tracing::debug!(mirror = %endpoint.addr, error = %e, "mirror request failed"),
        }
    });
}
