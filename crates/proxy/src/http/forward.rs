//! Stage 4, forwarding one attempt: the weighted backend split, the endpoint the balancer
//! picks (waiting a bounded while when every endpoint is ejected), the request shaped for the
//! protocol the endpoint speaks, and the send on its pooled connection under the attempt's
//! deadline. Also the two sends outside the retry loop: mirrors, and a pod dialled by address.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use meshgate_model::policy::HashKey;
use meshgate_model::rule::{Backend, Rule, UpstreamProtocol, WeightedBackend};

use super::outcome::{Hop, Outcome};
use super::response::ResponseBody;
use crate::body::{ClientBody, RequestBody};
use crate::core::Snapshot;
use crate::flags::Flags;
use crate::headers::{ensure_request_id, strip_hop_by_hop};
use crate::upstream::balance::{BackendRt, NoEndpoint, fnv1a};
use crate::upstream::pool::{EndpointPool, Returner, SendError};

/// Sends one attempt to `endpoint`, shaped for its protocol, bounded by `deadline`: `None` when
/// the deadline passed first. One timer per request (`timer`): armed for this attempt's
/// deadline, and kept for the response body's request deadline.
pub(super) async fn send(
    endpoint: &Arc<EndpointPool>,
    mut req: Request<RequestBody>,
    deadline: Option<tokio::time::Instant>,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> Option<Result<(Response<Incoming>, Returner), SendError>> {
    fit_version(&mut req, endpoint.protocol(), &endpoint.addr);
    match deadline {
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
    }
}

/// A meshed pod dialled by its address: that pod and no other (over mTLS), one attempt, no
/// route policies (they belong to Services).
pub(super) async fn to_pod(pool: &Arc<EndpointPool>, parts: &mut Parts, body: ClientBody, hop: &mut Hop) -> Outcome {
    ensure_request_id(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    let mut req = Request::new(RequestBody::Client { body });
    *req.method_mut() = std::mem::take(&mut parts.method);
    *req.uri_mut() = std::mem::take(&mut parts.uri);
    *req.version_mut() = parts.version;
    *req.headers_mut() = std::mem::take(&mut parts.headers);
    *req.extensions_mut() = std::mem::take(&mut parts.extensions);
    fit_version(&mut req, pool.protocol(), &pool.addr);
    let addr = pool.addr;
    let sent_at = tokio::time::Instant::now();
    let result = pool.send(req).await;
    hop.destination = pool.identity().cloned();
    hop.destination_workload = pool.workload().cloned();
    hop.security = Some(pool.security());
    hop.upstream_wait = sent_at.elapsed();
    match result {
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

/// The weighted backend a request goes to, and its runtime state: borrowed, not copied, per
/// attempt.
pub(super) type Picked<'r, 's> = (&'r WeightedBackend, &'s Arc<BackendRt>);

pub(super) fn pick_backend<'r, 's>(
    snapshot: &'s Snapshot,
    rule: &'r Rule,
) -> Result<Picked<'r, 's>, (StatusCode, String, Flags)> {
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
pub(super) async fn pick_endpoint(
    backend: &BackendRt,
    hash: Option<u64>,
    avoid: Option<&Arc<EndpointPool>>,
    waited: &mut Duration,
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
                crate::upstream::state::BackendEvents::count(&backend.state.events.overflow);
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
            *waited += wait;
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
pub(super) fn hash_request(key: &HashKey, headers: &http::HeaderMap, peer: SocketAddr) -> u64 {
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
pub(super) fn send_mirror(snapshot: &Snapshot, backend: &Backend, parts: &http::request::Parts, body: RequestBody) {
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
