//! gRPC calls get gRPC errors: a call the proxy cannot complete (no route, no healthy
//! upstream, a timeout, a refused policy), or one an upstream answered with an HTTP error
//! instead of a gRPC status, is answered as gRPC's "trailers-only" response: HTTP 200 with
//! `content-type: application/grpc`, `grpc-status` and a percent-encoded `grpc-message`, no
//! body. A gRPC client cannot read an HTTP error body; it reads these. The codes follow gRPC's
//! HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md), with the proxy's own timeouts as
//! DEADLINE_EXCEEDED and a circuit breaker's refusal as RESOURCE_EXHAUSTED, as Envoy does.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::response::ResponseBody;
use crate::flags::Flags;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The `grpc-status` of a response head or trailers.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<u16> {
    std::str::from_utf8(headers.get(&GRPC_STATUS)?.as_bytes()).ok()?.trim().parse().ok()
}

/// Whether a request is a gRPC call.
pub(crate) fn is_call(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status code for an HTTP status the proxy or an upstream answered with.
pub(super) fn code(status: StatusCode, flags: Flags) -> u8 {
    if flags.contains(Flags::UPSTREAM_TIMEOUT) {
        return 4; // DEADLINE_EXCEEDED
    }
    if flags.contains(Flags::UPSTREAM_OVERFLOW) {
        return 8; // RESOURCE_EXHAUSTED
    }
    // A rule with no backend to send to (all weights 0, every backendRef invalid): GRPCRoute
    // says UNAVAILABLE, where an HTTP client gets 500.
    if status == StatusCode::INTERNAL_SERVER_ERROR
        && (flags.contains(Flags::NO_ROUTE) || flags.contains(Flags::INVALID_BACKEND))
    {
        return 14;
    }
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        408 | 504 => 4,              // DEADLINE_EXCEEDED
        429 | 502 | 503 | 421 => 14, // UNAVAILABLE
        500 => 13,                   // INTERNAL
        _ => 2,                      // UNKNOWN
    }
}

/// Turns a non-gRPC answer to a gRPC call into a trailers-only gRPC response.
pub(super) fn as_status(resp: &mut Response<ResponseBody>, flags: Flags) {
    if resp.status() == StatusCode::OK || resp.headers().contains_key(&GRPC_STATUS) {
        return;
    }
    let code = code(resp.status(), flags);
    let message = match resp.body().local_bytes() {
        Some(b) if !b.is_empty() => String::from_utf8_lossy(b).trim_end().to_string(),
        _ => format!("upstream answered HTTP {}", resp.status().as_u16()),
    };
    let keep: Vec<(HeaderName, HeaderValue)> = resp
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-meshgate") || *n == header::SERVER)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut out = Response::new(ResponseBody::local(bytes::Bytes::new()));
    let headers = out.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert(GRPC_MESSAGE.clone(), v);
    }
    for (n, v) in keep {
        headers.insert(n, v);
    }
    *resp = out;
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, the rest `%XX` of UTF-8.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_answers_map_to_grpc_codes() {
        assert_eq!(code(StatusCode::NOT_FOUND, Flags::NO_ROUTE), 12);
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE, Flags::NO_HEALTHY_UPSTREAM), 14);
        assert_eq!(code(StatusCode::GATEWAY_TIMEOUT, Flags::UPSTREAM_TIMEOUT), 4);
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE, Flags::UPSTREAM_OVERFLOW), 8);
        assert_eq!(code(StatusCode::FORBIDDEN, Flags::NONE), 7);
        assert_eq!(percent_encode("no route: 100% \"x\"\né"), "no route: 100%25 \"x\"%0A%C3%A9");
    }
}
