//! The HTTP request path of the gateway: listener by host → route match → filters → weighted
//! backend → endpoint (P2C) → pooled connection. Everything it reads comes from one snapshot,
//! taken when the request arrives; a reload never changes a request in flight.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use meshgate_model::host::normalize_host;
use meshgate_model::matching::RequestView;
use meshgate_model::policy::HashKey;
use meshgate_model::rule::{Backend, Rule, UpstreamProtocol, WeightedBackend};

pub mod response;

pub use response::ResponseBody;

use crate::body::RequestBody;
use crate::body::replay::ReplayBody;
use crate::core::Snapshot;
use crate::flags::Flags;
use crate::headers::{ensure_request_id, set_forwarded, strip_hop_by_hop};
use crate::upstream::balance::{BackendRt, NoEndpoint, Outcome as Outcome5, fnv1a};
use crate::upstream::pool::{EndpointPool, SendError, UpstreamError};

/// Who is on the other end of a downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The port the connection was accepted on (selects the listener set).
    pub port: u16,
    /// The client.
    pub peer: SocketAddr,
    /// `http` (HTTPS listeners come later).
    pub scheme: &'static str,
    /// Write an access log line per request.
    pub access_log: bool,
    /// For a sidecar's outbound connections: the destination the application dialled (a
    /// Service's virtual IP and port), whose mesh routes apply instead of a listener's.
    pub dest: Option<SocketAddr>,
}

/// Response header carrying the response flags when there are any.
pub static X_MESHGATE_FLAGS: http::HeaderName = http::HeaderName::from_static("x-meshgate-flags");

fn local(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut body = message;
    body.push('\n');
    let mut resp = Response::new(ResponseBody::local(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// How a request ended, for the access log (and, later, metrics).
struct Outcome {
    resp: Response<ResponseBody>,
    rule: Option<Arc<Rule>>,
    upstream: Option<SocketAddr>,
    flags: Flags,
    attempts: u32,
}

impl Outcome {
    fn local(status: StatusCode, message: String, rule: Option<Arc<Rule>>, flags: Flags) -> Self {
        Outcome { resp: local(status, message), rule, upstream: None, flags, attempts: 0 }
    }
}

/// Handles one request from a client.
pub async fn handle(snapshot: Arc<Snapshot>, conn: ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let started = conn.access_log.then(Instant::now);
    let method = conn.access_log.then(|| req.method().clone());
    let path_for_log = conn.access_log.then(|| req.uri().path().to_string());
    let mut out = route_and_forward(&snapshot, &conn, req).await;
    if !out.flags.is_empty() {
        // Like Linkerd's l5d-proxy-error: says why, without a trip to the logs.
        if let Ok(v) = HeaderValue::from_str(&out.flags.to_string()) {
            out.resp.headers_mut().insert(X_MESHGATE_FLAGS.clone(), v);
        }
    }
    if let (Some(started), Some(method), Some(path)) = (started, method, path_for_log) {
        tracing::info!(
            target: "meshgate::access",
            "{method} {path} {} {} route={} upstream={} flags={} attempts={} {:.3}ms",
            out.resp.status().as_u16(),
            conn.peer,
            out.rule.map_or_else(|| "-".to_string(), |r| format!("{}#{}", r.route, r.index)),
            out.upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
            out.flags,
            out.attempts,
            started.elapsed().as_secs_f64() * 1000.0,
        );
    }
    out.resp
}

async fn route_and_forward(snapshot: &Snapshot, conn: &ConnInfo, req: Request<Incoming>) -> Outcome {
    // A sidecar's outbound connection: the destination's mesh routes, or the pod it dialled.
    let mesh_routes = match conn.dest {
        None => None,
        Some(dest) => match snapshot.config.mesh.as_ref().and_then(|m| m.services.get(&dest)) {
            Some(service) => Some(&service.routes),
            None => {
                return match snapshot.mesh_endpoint(&dest) {
                    Some(pool) => to_endpoint(pool, req).await,
                    None => {
                        let msg = format!("{dest} is no longer a Service or endpoint in the mesh");
                        Outcome::local(StatusCode::NOT_FOUND, msg, None, Flags::NO_ROUTE)
                    }
                };
            }
        },
    };
    let (mut parts, body) = req.into_parts();
    // HTTP/2 and absolute-form requests carry the host in the URI; HTTP/1.1 in Host.
    let host_value: Option<HeaderValue> = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let host_full = host_value.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let host = normalize_host(host_full);

    let routes = match mesh_routes {
        Some(routes) => routes,
        None => match snapshot.config.ports.get(&conn.port).and_then(|set| set.select(&host)) {
            Some(listener) => &listener.routes,
            None => {
                let msg = format!("no listener on port {} for host {host:?}", conn.port);
                return Outcome::local(StatusCode::NOT_FOUND, msg, None, Flags::NO_ROUTE);
            }
        },
    };
    let path = parts.uri.path();
    let query = parts.uri.query();
    let view = RequestView { method: &parts.method, path, query, headers: &parts.headers };
    let Some(entry) = routes.find(&host, &view) else {
        let msg = format!("no route for {} {path} on host {host:?}", parts.method);
        return Outcome::local(StatusCode::NOT_FOUND, msg, None, Flags::NO_ROUTE);
    };
    let rule = entry.rule.clone();
    if let Some(failure) = &rule.failure {
        let msg = format!("route {} rule {} cannot be served: {failure}", rule.route, rule.index);
        return Outcome::local(StatusCode::INTERNAL_SERVER_ERROR, msg, Some(rule), Flags::NO_ROUTE);
    }
    if let Some(redirect) = &rule.redirect {
        let location = redirect.location(conn.scheme, &host, conn.port, path, query, entry.matched_prefix());
        let mut resp = Response::new(ResponseBody::local(Bytes::new()));
        *resp.status_mut() = StatusCode::from_u16(redirect.status_code).unwrap_or(StatusCode::FOUND);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        rule.response_headers.apply(resp.headers_mut());
        return Outcome { resp, rule: Some(rule), upstream: None, flags: Flags::NONE, attempts: 0 };
    }
    let mut flags = Flags::NONE;
    if let Some(fault) = &rule.fault {
        if let Some((millis, share)) = fault.delay
            && fastrand::f64() < share
        {
            flags.insert(Flags::DELAY_INJECTED);
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        if let Some((status, share)) = fault.abort
            && fastrand::f64() < share
        {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Outcome::local(status, "fault filter abort".into(), Some(rule), flags | Flags::FAULT_INJECTED);
        }
    }
    let first = match pick_backend(snapshot, &rule) {
        Ok(b) => b,
        Err((status, msg, f)) => return Outcome::local(status, msg, Some(rule), flags | f),
    };

    // The upstream request head: the client's, changed in place, once for every attempt.
    ensure_request_id(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    // The proxy answers `Expect: 100-continue` itself (hyper sends 100 when the body is read).
    if parts.headers.contains_key(header::EXPECT) {
        parts.headers.remove(header::EXPECT);
    }
    set_forwarded(&mut parts.headers, conn.peer.ip(), conn.scheme, host_value.as_ref());
    rule.request_headers.apply(&mut parts.headers);
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
    // An HTTP/1.1 request without a rewrite already carries its Host: leave it be.
    let keep_host = new_host.is_none() && parts.uri.authority().is_none();
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.path_and_query = path_and_query.or_else(|| Some(PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(uri_parts).unwrap_or_else(|_| Uri::from_static("/"));
    match (upstream_authority, keep_host) {
        (Some(a), false) => {
            parts.headers.insert(header::HOST, a);
        }
        (Some(_), true) => {}
        (None, _) => {
            parts.headers.remove(header::HOST);
        }
    }

    // The effective policy: the rule's overrides over the first backend's policy.
    let policy = first.1.policy();
    let rp = &rule.policy;
    let request_timeout = rp.request_timeout.unwrap_or(policy.request_timeout);
    let per_try_timeout = rp.per_try_timeout.unwrap_or(policy.per_try_timeout);
    let attempts = rp.retry_attempts.unwrap_or(policy.retry.attempts);
    let codes: &[u16] = rp.retry_codes.as_deref().unwrap_or(&policy.retry.codes);
    let backoff = rp.retry_backoff.unwrap_or(policy.retry.backoff);
    let max_backoff = policy.retry.max_backoff.max(backoff);
    let deadline = request_timeout.map(|t| tokio::time::Instant::now() + t);
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let hash = first.1.hash_key().map(|k| hash_request(k, &parts.headers, conn.peer));

    let mirrors: Vec<_> = rule.mirrors.iter().filter(|m| m.sample()).collect();
    let mut source = if body.is_end_stream() {
        for mirror in &mirrors {
            send_mirror(snapshot, &mirror.backend, &parts, RequestBody::Empty);
        }
        Source::Empty
    } else if !mirrors.is_empty() {
        let (tee, copies) = RequestBody::tee(body, mirrors.len());
        for (mirror, copy) in mirrors.iter().zip(copies) {
            send_mirror(snapshot, &mirror.backend, &parts, copy);
        }
        Source::Once(Some(tee))
    } else if attempts > 0 && idempotent {
        Source::Replay(ReplayBody::new(body, policy.retry.max_body_bytes))
    } else {
        Source::Once(Some(RequestBody::Incoming { body }))
    };

    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut current = first;
    let mut last: Option<Arc<EndpointPool>> = None;
    let mut attempt = 0u32;
    let mut _retry_guard = None;
    loop {
        let (weighted, backend) = current;
        let Some(active) = backend.state.try_start(backend.policy().limits.max_requests) else {
            let msg = format!(
                "circuit breaker: {} requests in flight to {} (maxRequests {})",
                backend.state.active(),
                backend.model.id,
                backend.policy().limits.max_requests
            );
            return Outcome::local(StatusCode::SERVICE_UNAVAILABLE, msg, Some(rule), flags | Flags::UPSTREAM_OVERFLOW);
        };
        let endpoint = match pick_endpoint(backend, hash, last.as_ref()).await {
            Ok(e) => e,
            Err((status, msg, f)) => return Outcome::local(status, msg, Some(rule), flags | f),
        };
        let Some(body) = source.next_body() else {
            let msg = "request body no longer available for another attempt".to_string();
            return Outcome::local(StatusCode::BAD_GATEWAY, msg, Some(rule), flags | Flags::REPLAY_OVERFLOW);
        };
        let last_attempt = attempt >= attempts;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = if last_attempt { std::mem::take(&mut parts.headers) } else { parts.headers.clone() };
        weighted.request_headers.apply(req.headers_mut());
        fit_version(&mut req, endpoint.protocol(), &endpoint.addr);

        let try_deadline = match (per_try_timeout, deadline) {
            (Some(t), Some(d)) => Some(d.min(tokio::time::Instant::now() + t)),
            (Some(t), None) => Some(tokio::time::Instant::now() + t),
            (None, d) => d,
        };
        let sent_at = tokio::time::Instant::now();
        // One timer per request: armed for this attempt's deadline, then (if a response comes)
        // reset to the request deadline and handed to the response body.
        let result = match try_deadline {
            Some(d) => {
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(d)));
                timer.as_mut().reset(d);
                let send = endpoint.send(req);
                tokio::pin!(send);
                tokio::select! {
                    biased;
                    r = &mut send => Some(r),
                    () = timer.as_mut() => None,
                }
            }
            None => Some(endpoint.send(req).await),
        };
        let latency = sent_at.elapsed();
        let addr = endpoint.addr;
        // Decide: answer, or try again.
        let (retryable, failure): (bool, Failure) = match result {
            Some(Ok((resp, returner))) => {
                let status = resp.status().as_u16();
                let outcome = match status {
                    502..=504 => Outcome5::GatewayError,
                    500..=599 => Outcome5::ServerError,
                    _ => Outcome5::Success,
                };
                backend.record(&endpoint, outcome, latency);
                let wants_retry = codes.contains(&status) && idempotent;
                if !wants_retry || last_attempt {
                    if wants_retry {
                        flags.insert(Flags::RETRY_LIMIT);
                    }
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    rule.response_headers.apply(&mut rparts.headers);
                    weighted.response_headers.apply(&mut rparts.headers);
                    let body_timer = match (deadline, timer.take()) {
                        (Some(d), Some(mut t)) => {
                            t.as_mut().reset(d);
                            Some(t)
                        }
                        (Some(d), None) => Some(Box::pin(tokio::time::sleep_until(d))),
                        (None, _) => None,
                    };
                    let body = ResponseBody::upstream(rbody, Some(returner), Some(active), body_timer);
                    return Outcome {
                        resp: Response::from_parts(rparts, body),
                        rule: Some(rule),
                        upstream: Some(addr),
                        flags,
                        attempts: attempt + 1,
                    };
                }
                (true, Failure::Status(status))
            }
            Some(Err(SendError { error, request })) => {
                if let Some(r) = request {
                    source.give_back(r.into_body());
                }
                match &error {
                    UpstreamError::Overflow(msg) => {
                        let msg = format!("{msg} (Service {})", backend.model.id);
                        return Outcome::local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            msg,
                            Some(rule),
                            flags | Flags::UPSTREAM_OVERFLOW,
                        );
                    }
                    e if e.is_connect() => {
                        backend.record(&endpoint, Outcome5::ConnectFailure, latency);
                        flags.insert(Flags::UPSTREAM_CONNECT_FAILURE);
                        // Never reached the application: safe to retry whatever the method.
                        (true, Failure::Connect(format!("{error}")))
                    }
                    _ => {
                        backend.record(&endpoint, Outcome5::GatewayError, latency);
                        flags.insert(Flags::UPSTREAM_RESET);
                        (idempotent || source.is_fresh(), Failure::Reset(format!("{error}")))
                    }
                }
            }
            None => {
                backend.record(&endpoint, Outcome5::GatewayError, latency);
                flags.insert(Flags::UPSTREAM_TIMEOUT);
                let overall = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                (idempotent && !overall, Failure::Timeout { overall })
            }
        };
        last = Some(endpoint.clone());
        if !retryable || last_attempt {
            if retryable {
                flags.insert(Flags::RETRY_LIMIT);
            }
            return failure.into_outcome(&backend.model.id, addr, Some(rule), flags, attempt + 1);
        }
        if !source.can_replay() {
            flags.insert(Flags::REPLAY_OVERFLOW);
            return failure.into_outcome(&backend.model.id, addr, Some(rule), flags, attempt + 1);
        }
        // A request that never reached an application costs it nothing to retry: connect
        // failures do not draw on the budget (the attempt count still bounds them).
        if !matches!(failure, Failure::Connect(_)) {
            let retry = &backend.policy().retry;
            let Some(guard) = backend.state.try_retry(retry) else {
                flags.insert(Flags::RETRY_LIMIT);
                tracing::debug!(backend = %backend.model.id, "retry budget exhausted");
                return failure.into_outcome(&backend.model.id, addr, Some(rule), flags, attempt + 1);
            };
            _retry_guard = Some(guard);
        }
        drop(active);
        // Exponential backoff with full jitter.
        let cap = backoff.saturating_mul(1u32 << attempt.min(16)).min(max_backoff);
        let pause = cap.mul_f64(fastrand::f64());
        if deadline.is_some_and(|d| tokio::time::Instant::now() + pause >= d) {
            flags.insert(Flags::UPSTREAM_TIMEOUT);
            return failure.into_outcome(&backend.model.id, addr, Some(rule), flags, attempt + 1);
        }
        tokio::time::sleep(pause).await;
        attempt += 1;
        // The split is made again for every attempt.
        current = match pick_backend(snapshot, &rule) {
            Ok(b) => b,
            Err((status, msg, f)) => return Outcome::local(status, msg, Some(rule), flags | f),
        };
    }
}

/// A meshed pod dialled by its address: that pod and no other (over mTLS), one attempt, no
/// route policies (they belong to Services).
async fn to_endpoint(pool: &Arc<EndpointPool>, req: Request<Incoming>) -> Outcome {
    let (mut parts, body) = req.into_parts();
    ensure_request_id(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    let mut req = Request::from_parts(parts, RequestBody::Incoming { body });
    fit_version(&mut req, pool.protocol(), &pool.addr);
    let addr = pool.addr;
    match pool.send(req).await {
        Ok((resp, returner)) => {
            let (mut rparts, rbody) = resp.into_parts();
            strip_hop_by_hop(&mut rparts.headers);
            let body = ResponseBody::upstream(rbody, Some(returner), None, None);
            Outcome {
                resp: Response::from_parts(rparts, body),
                rule: None,
                upstream: Some(addr),
                flags: Flags::NONE,
                attempts: 1,
            }
        }
        Err(SendError { error, .. }) => {
            let (status, flags) = if error.is_connect() {
                (StatusCode::SERVICE_UNAVAILABLE, Flags::UPSTREAM_CONNECT_FAILURE)
            } else {
                (StatusCode::BAD_GATEWAY, Flags::UPSTREAM_RESET)
            };
            let mut out = Outcome::local(status, format!("upstream {addr}: {error}"), None, flags);
            out.upstream = Some(addr);
            out.attempts = 1;
            out
        }
    }
}

/// Why the last attempt failed.
enum Failure {
    Status(u16),
    Connect(String),
    Reset(String),
    Timeout { overall: bool },
}

impl Failure {
    fn into_outcome(
        self,
        service: &str,
        addr: SocketAddr,
        rule: Option<Arc<Rule>>,
        flags: Flags,
        attempts: u32,
    ) -> Outcome {
        let (status, msg) = match self {
            Failure::Status(code) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
                format!("upstream {addr} answered {code} on every attempt ({attempts}) (Service {service})"),
            ),
            Failure::Connect(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error: {e} (Service {service})"))
            }
            Failure::Reset(e) => (
                StatusCode::BAD_GATEWAY,
                format!("upstream {addr} reset before response headers: {e} (Service {service})"),
            ),
            Failure::Timeout { overall } => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "upstream request timeout ({}) (Service {service})",
                    if overall { "request timeout" } else { "per-try timeout" }
                ),
            ),
        };
        Outcome { resp: local(status, msg), rule, upstream: Some(addr), flags, attempts }
    }
}

/// The request body across attempts.
enum Source {
    Empty,
    /// Sent once; given back only if an attempt failed before writing it.
    Once(Option<RequestBody>),
    Replay(ReplayBody),
}

impl Source {
    fn next_body(&mut self) -> Option<RequestBody> {
        match self {
            Source::Empty => Some(RequestBody::Empty),
            Source::Once(b) => b.take(),
            Source::Replay(r) => r.try_clone().map(|body| RequestBody::Replay { body }),
        }
    }

    fn give_back(&mut self, body: RequestBody) {
        if let Source::Once(slot) = self
            && slot.is_none()
        {
            *slot = Some(body);
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Once(b) => b.is_some(),
            Source::Replay(r) => !r.overflowed(),
        }
    }

    /// True when the body was never sent (so even a non-idempotent request may go again).
    fn is_fresh(&self) -> bool {
        matches!(self, Source::Once(Some(_)))
    }
}

/// The weighted backend a request goes to, and its runtime state: borrowed, not copied, per
/// attempt.
type Picked<'r, 's> = (&'r WeightedBackend, &'s Arc<BackendRt>);

fn pick_backend<'r, 's>(snapshot: &'s Snapshot, rule: &'r Rule) -> Result<Picked<'r, 's>, (StatusCode, String, Flags)> {
    let Some(weighted) = rule.pick_backend() else {
        let msg = format!("route {} rule {} has no backend with a weight above 0", rule.route, rule.index);
        return Err((StatusCode::INTERNAL_SERVER_ERROR, msg, Flags::NO_ROUTE));
    };
    match &weighted.backend {
        Backend::Service(s) => match snapshot.backends.get(s.slot) {
            Some(b) => Ok((weighted, b)),
            None => Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("backend {} is not prepared", s.id),
                Flags::INVALID_BACKEND,
            )),
        },
        Backend::Invalid { reason, message } => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("invalid backend ({reason}): {message}"),
            Flags::INVALID_BACKEND,
        )),
    }
}

/// Picks an endpoint; when all are ejected, waits (bounded by the connect timeout and the
/// pending-request limit) for the first to come back, then fails fast.
async fn pick_endpoint(
    backend: &BackendRt,
    hash: Option<u64>,
    avoid: Option<&Arc<EndpointPool>>,
) -> Result<Arc<EndpointPool>, (StatusCode, String, Flags)> {
    match backend.pick(hash, avoid) {
        Ok(e) => Ok(e.clone()),
        Err(NoEndpoint::None) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy upstream: Service {} has no ready endpoints", backend.model.id),
            Flags::NO_HEALTHY_UPSTREAM,
        )),
        Err(NoEndpoint::AllEjected { total, until }) => {
            let Some(_pending) = backend.state.enter_pending() else {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no healthy upstream: all {total} endpoints of {} ejected and {} requests already waiting",
                        backend.model.id,
                        backend.state.pending()
                    ),
                    Flags::UPSTREAM_OVERFLOW,
                ));
            };
            let wait = Duration::from_nanos(until.saturating_sub(crate::clock::now_nanos()));
            let wait = wait.min(backend.policy().connect_timeout);
            tokio::time::sleep(wait).await;
            backend.pick(hash, avoid).map(Arc::clone).map_err(|_| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no healthy upstream: all {total} endpoints of {} are ejected by outlier detection",
                        backend.model.id
                    ),
                    Flags::NO_HEALTHY_UPSTREAM,
                )
            })
        }
    }
}

/// The consistent-hash key of a request (a missing key hashes randomly).
fn hash_request(key: &HashKey, headers: &http::HeaderMap, peer: SocketAddr) -> u64 {
    let mut ip = [0u8; 64];
    let bytes: Option<&[u8]> = match key {
        HashKey::Header(name) => headers.get(name).map(HeaderValue::as_bytes),
        HashKey::Cookie(name) => headers.get_all(header::COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|c| {
                let (k, val) = c.trim().split_once('=')?;
                (k == name).then_some(val.as_bytes())
            })
        }),
        HashKey::SourceIp => Some(crate::headers::format_ip(peer.ip(), &mut ip)),
    };
    match bytes {
        Some(b) => fnv1a(b, 0),
        None => fastrand::u64(..),
    }
}

/// Shapes a request for the endpoint's protocol: HTTP/1.1 origin-form with Host, or HTTP/2
/// with the authority in the URI.
fn fit_version(req: &mut Request<RequestBody>, protocol: UpstreamProtocol, addr: &SocketAddr) {
    match protocol {
        UpstreamProtocol::Http1 => *req.version_mut() = Version::HTTP_11,
        UpstreamProtocol::H2c => {
            *req.version_mut() = Version::HTTP_2;
            let authority = req
                .headers()
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .or_else(|| Authority::try_from(addr.to_string()).ok());
            let mut p = http::uri::Parts::default();
            p.scheme = Some(Scheme::HTTP);
            p.authority = authority;
            p.path_and_query = req.uri().path_and_query().cloned();
            if let Ok(u) = Uri::from_parts(p) {
                *req.uri_mut() = u;
            }
            req.headers_mut().remove(header::HOST);
        }
    }
}

/// Sends a copy of the request to a mirror; its response is read and dropped.
fn send_mirror(snapshot: &Snapshot, backend: &Backend, parts: &http::request::Parts, body: RequestBody) {
    let Backend::Service(service) = backend else { return };
    let Some(endpoint) = snapshot.backends.get(service.slot).and_then(|b| b.pick(None, None).ok()).cloned() else {
        return;
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    fit_version(&mut req, endpoint.protocol(), &endpoint.addr);
    tokio::spawn(async move {
        match endpoint.send(req).await {
            Ok((resp, returner)) => {
                use http_body_util::BodyExt;
                let body = ResponseBody::upstream(resp.into_body(), Some(returner), None, None);
                let _ = body.collect().await;
            }
            Err(e) => tracing::debug!(mirror = %endpoint.addr, error = %e.error, "mirror request failed"),
        }
    });
}
