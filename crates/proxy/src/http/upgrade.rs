//! Stage 3 for WebSockets, in place of the attempts: an HTTP/1.1 `Upgrade: websocket` request,
//! or an HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441), goes to one endpoint
//! of the rule's backend as an HTTP/1.1 upgrade on a connection of its own (plain TCP, or the
//! mTLS tunnel to a meshed endpoint's sidecar, which hands the bytes to the application). When
//! the endpoint switches protocols the client gets `101` (HTTP/1.1) or `200` (HTTP/2) and the
//! two upgraded streams are joined, byte for byte, until either side closes or they are idle.
//! Anything else the endpoint answers is passed on as a response. No retries: a handshake that
//! reached the application is not repeated.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::ConnInfo;
use super::filters::Upstream;
use super::forward::pick_backend;
use super::outcome::{Hop, Outcome};
use super::response::ResponseBody;
use crate::body::RequestBody;
use crate::core::Snapshot;
use crate::flags::Flags;
use crate::headers::strip_hop_by_hop;

/// A tunnel that moves no byte for this long is closed (Envoy's default stream idle timeout is
/// 5 min; WebSockets with pings stay well inside an hour).
const TUNNEL_IDLE: Duration = Duration::from_secs(3600);

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket`.
    Http1,
    /// HTTP/2 extended CONNECT (`:protocol websocket`).
    Http2,
}

/// Whether the request asks for a WebSocket; takes its upgrade handle when it does.
pub(super) fn requested(parts: &mut Parts) -> Option<(Asked, OnUpgrade)> {
    let asked = if parts.version >= Version::HTTP_2 {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>()?;
        (parts.method == Method::CONNECT && protocol.as_str().eq_ignore_ascii_case("websocket"))
            .then_some(Asked::Http2)?
    } else {
        let upgrade = parts.headers.get(header::UPGRADE)?.to_str().ok()?;
        let connection = parts.headers.get(header::CONNECTION)?.to_str().ok()?;
        let wants = upgrade.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket"))
            && connection.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        wants.then_some(Asked::Http1)?
    };
    let on_upgrade = parts.extensions.remove::<OnUpgrade>()?;
    Some((asked, on_upgrade))
}

/// Forwards the upgrade; the upstream head was made by the filters (hop-by-hop headers out).
pub(super) async fn run(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    request: Upstream<'_>,
    parts: &mut Parts,
    (asked, client): (Asked, OnUpgrade),
    hop: &mut Hop,
) -> Outcome {
    let Upstream { rule, flags, .. } = request;
    let (_, backend) = match pick_backend(snapshot, &rule) {
        Ok(b) => b,
        Err((status, msg, f)) => return Outcome::local(status, msg, Some(rule), flags | f),
    };
    let endpoint = match backend.pick(None, None) {
        Ok(e) => e.clone(),
        Err(_) => {
            let msg = format!("no healthy endpoint of {}", backend.model.id);
            return Outcome::local(
                StatusCode::SERVICE_UNAVAILABLE,
                msg,
                Some(rule),
                flags | Flags::NO_HEALTHY_UPSTREAM,
            );
        }
    };
    let sent_at = tokio::time::Instant::now();
    let local = |status, msg: String, f| {
        let mut out = Outcome::local(status, msg, Some(rule.clone()), flags | f);
        out.upstream = Some(endpoint.addr);
        out.attempts = 1;
        out
    };
    let stream = match endpoint.open_tcp().await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("upstream {}: {e}", endpoint.addr);
            return local(StatusCode::SERVICE_UNAVAILABLE, msg, Flags::UPSTREAM_CONNECT_FAILURE);
        }
    };
    hop.attempted(&backend.model.id, &endpoint, sent_at.elapsed());
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(c) => c,
        Err(e) => {
            return local(StatusCode::BAD_GATEWAY, format!("upstream {}: {e}", endpoint.addr), Flags::UPSTREAM_RESET);
        }
    };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream WebSocket connection ended with error");
        }
    });
    let req = upstream_request(parts, asked);
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return local(StatusCode::BAD_GATEWAY, format!("upstream {}: {e}", endpoint.addr), Flags::UPSTREAM_RESET);
        }
    };
    hop.upstream_wait = sent_at.elapsed();
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream = switched.then(|| hyper::upgrade::on(&mut resp));
    let (mut rparts, rbody) = resp.into_parts();
    let Some(upstream) = upstream else {
        // Refused (401, 404, ...): an ordinary response.
        strip_hop_by_hop(&mut rparts.headers);
        rule.response_headers.apply(&mut rparts.headers);
        let body = ResponseBody::upstream(rbody, None, None, None);
        return Outcome {
            resp: Response::from_parts(rparts, body),
            rule: Some(rule),
            upstream: Some(endpoint.addr),
            flags,
            attempts: 1,
        };
    };
    let mut out = Response::new(ResponseBody::local(bytes::Bytes::new()));
    if asked == Asked::Http1 {
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = std::mem::take(&mut rparts.headers);
        strip_hop_by_hop(out.headers_mut());
        out.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        out.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        // RFC 8441 §5: the stream is open on 200; the handshake's own headers stay behind.
        *out.status_mut() = StatusCode::OK;
        *out.headers_mut() = std::mem::take(&mut rparts.headers);
        strip_hop_by_hop(out.headers_mut());
        out.headers_mut().remove(HeaderName::from_static("sec-websocket-accept"));
    }
    rule.response_headers.apply(out.headers_mut());
    let (peer, addr) = (conn.peer, endpoint.addr);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(%peer, upstream = %addr, client = ?c.err(), upstream_error = ?u.err(), "WebSocket upgrade not completed");
                return;
            }
        };
        let mut upstream = TokioIo::new(upstream);
        let relayed = crate::conn::tcp::relay_idle(TokioIo::new(client), &mut upstream, Some(TUNNEL_IDLE)).await;
        tracing::debug!(%peer, upstream = %addr, bytes_in = relayed.bytes_in, bytes_out = relayed.bytes_out, close = ?relayed.close, "WebSocket closed");
    });
    Outcome { resp: out, rule: Some(rule), upstream: Some(endpoint.addr), flags, attempts: 1 }
}

/// The HTTP/1.1 upgrade request for the endpoint, from the upstream head.
fn upstream_request(parts: &mut Parts, asked: Asked) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = path.parse().unwrap_or_default();
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    *req.headers_mut() = std::mem::take(&mut parts.headers);
    let headers = req.headers_mut();
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if asked == Asked::Http2 {
        // An HTTP/2 client sends no key (RFC 8441 §5): the proxy makes one for the HTTP/1.1 hop.
        headers.insert(header::SEC_WEBSOCKET_KEY, websocket_key());
        headers.entry(header::SEC_WEBSOCKET_VERSION).or_insert(HeaderValue::from_static("13"));
    }
    req
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    HeaderValue::from_str(&meshgate_tls::base64(&bytes)).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        let key = super::websocket_key();
        let key = key.to_str().unwrap_or_default();
        assert_eq!(key.len(), 24, "{key}");
        assert!(key.ends_with("=="), "{key}");
        assert_ne!(super::websocket_key(), super::websocket_key());
    }
}
