//! How a request ended: the response, and what the access log says about it; the proxy's own
//! answers (local replies) and why the last attempt failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use meshgate_model::rule::Rule;

use super::response::ResponseBody;
use crate::flags::Flags;
use crate::telemetry::Security;
use crate::upstream::pool::EndpointPool;

/// Response header carrying the response flags when there are any.
pub static X_MESHGATE_FLAGS: http::HeaderName = http::HeaderName::from_static("x-meshgate-flags");

/// A reply written by the proxy: the status and why, in plain text.
pub(super) fn local(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut body = message;
    body.push('\n');
    let mut resp = Response::new(ResponseBody::local(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// How a request ended: the response, and what its record says about the route, the
/// upstream and the time spent.
pub(super) struct Outcome {
    pub(super) resp: Response<ResponseBody>,
    pub(super) rule: Option<Arc<Rule>>,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) flags: Flags,
    pub(super) attempts: u32,
}

/// What the attempts learned about the upstream hop.
#[derive(Default)]
pub(super) struct Hop {
    /// The Service backend.
    pub(super) backend: Option<Arc<str>>,
    /// The last endpoint's identity.
    pub(super) destination: Option<Arc<str>>,
    /// The last endpoint's workload.
    pub(super) destination_workload: Option<Arc<meshgate_model::peer::Peer>>,
    /// How the last attempt was secured.
    pub(super) security: Option<Security>,
    /// Time spent waiting on upstreams (every attempt, send to response head or failure).
    pub(super) upstream_wait: Duration,
    /// Time spent in delays the configuration asked for (backoff, injected delay, ejection).
    pub(super) waited: Duration,
}

impl Hop {
    /// Records an attempt to `endpoint` of `backend` that took `latency`.
    pub(super) fn attempted(&mut self, backend: &Arc<str>, endpoint: &EndpointPool, latency: Duration) {
        if self.backend.is_none() {
            self.backend = Some(backend.clone());
        }
        self.destination = endpoint.identity().cloned();
        self.destination_workload = endpoint.workload().cloned();
        self.security = Some(endpoint.security());
        self.upstream_wait += latency;
    }
}

impl Outcome {
    pub(super) fn local(status: StatusCode, message: String, rule: Option<Arc<Rule>>, flags: Flags) -> Self {
        Outcome { resp: local(status, message), rule, upstream: None, flags, attempts: 0 }
    }
}

/// Why the last attempt failed.
pub(super) enum Failure {
    Status(u16),
    Connect(String),
    Reset(String),
    Timeout { overall: bool },
}

impl Failure {
    pub(super) fn into_outcome(
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
