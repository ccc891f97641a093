//! The HTTP request path every role runs, in stages, each in its own file:
//!
//! 1. `route`: the route table (the gateway's listener by port and `Host`, or the Service the
//!    sidecar's connection was dialled to) and the rule whose match wins;
//! 2. `filters`: what the rule does before any upstream is involved (a redirect, an injected
//!    fault) and the upstream request head (request id, forwarded headers, header modifiers,
//!    rewrites), with mirrors started;
//! 3. `attempts`: the retry loop — circuit breaker, budget, backoff, per-try and request
//!    timeouts, the weighted split made again for every attempt;
//! 4. `forward`: one attempt to one endpoint (the balancer's pick, the protocol the endpoint
//!    speaks, the pooled connection).
//!
//! [`handle`] shows their order. Everything a request reads comes from one snapshot, taken when
//! it arrives; a reload never changes a request in flight.

mod attempts;
mod filters;
mod forward;
pub(crate) mod grpc;
mod outcome;
pub mod response;
mod route;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;

pub use outcome::X_MESHGATE_FLAGS;
pub(crate) use response::Recording;
pub use response::ResponseBody;

use crate::body::ClientBody;
use crate::core::Snapshot;
use crate::telemetry::{Protocol, RequestRecord, Role};
use outcome::{Hop, Outcome};
use route::Selected;

/// Who is on the other end of a downstream connection, and which route table serves it: both
/// decided once, when the connection arrives.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The port the connection was accepted on (selects the listener set).
    pub port: u16,
    /// The client.
    pub peer: SocketAddr,
    /// `http`, or `https` on a connection whose TLS the gateway terminated.
    pub scheme: &'static str,
    /// Where the connection's requests are routed.
    pub target: Target,
    /// On a TLS connection whose client sent SNI: the certificate it was given. A request for
    /// a host it does not cover (a connection reused across names) is answered 421.
    pub tls: Option<Arc<meshgate_tls::edge::EdgeCert>>,
    /// On a TLS connection whose client sent SNI: the name. The listener it selected serves the
    /// connection's requests, whatever their `Host` (as each Gateway API implementation picks
    /// the HTTPS listener by SNI): a `Host` it has no route for is answered 404.
    pub sni: Option<Arc<str>>,
}

/// The route table a connection's requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The gateway's listeners on the connection's port, chosen per request by `Host`.
    Listeners,
    /// A sidecar's outbound connection to a Service's virtual IP and port: its mesh routes.
    Service(SocketAddr),
    /// A sidecar's outbound connection to a meshed pod by address: exactly that pod.
    Pod(SocketAddr),
}

/// Handles one request from a client; its record is completed when the response body ends.
pub async fn handle(snapshot: Arc<Snapshot>, conn: ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    // Records only for a sink that takes them: otherwise none is built, nothing counted.
    let recorded = snapshot.sink.wants_requests();
    let protocol = if req.version() >= http::Version::HTTP_2 { Protocol::Http2 } else { Protocol::Http1 };
    let (mut parts, body) = req.into_parts();
    let grpc = grpc::is_call(&parts.headers);
    let (body, received) = ClientBody::new(body, recorded);
    let role = match conn.target {
        Target::Listeners => Role::Gateway,
        Target::Service(_) | Target::Pod(_) => Role::SidecarOutbound,
    };
    // Tracing: this proxy's spans in the request's trace, passed on upstream.
    let trace = snapshot.sink.trace_sampling().map(|ppm| crate::telemetry::trace::start(&parts.headers, ppm));
    if let Some(t) = trace.filter(|t| t.rewrites()) {
        t.inject(&mut parts.headers, role);
    }
    let details = (recorded && (snapshot.sink.wants_details() || trace.is_some_and(|t| t.sampled)))
        .then(|| crate::telemetry::Details::of(&parts));
    let mut hop = Hop::default();
    let mut out = route_and_forward(&snapshot, &conn, &mut parts, body, &mut hop).await;
    if grpc {
        grpc::as_status(&mut out.resp, out.flags);
    }
    let ttfb = started.elapsed();
    // Into a box where it stays (a record is large: moved, it would be copied, here and by hyper).
    let recording = recorded.then(|| {
        Recording {
            record: RequestRecord {
                role,
                route: out.rule.as_ref().map(|r| (r.route.clone(), r.index)),
                backend: hop.backend,
                endpoint: out.upstream,
                protocol,
                status: out.resp.status().as_u16(),
                flags: out.flags,
                attempts: out.attempts,
                request_bytes: 0,
                response_bytes: 0,
                ttfb,
                duration: ttfb,
                proxy_time: ttfb.saturating_sub(hop.upstream_wait + hop.waited),
                source: snapshot.identity.clone(),
                destination: hop.destination,
                source_workload: Some(snapshot.peer.clone()),
                destination_workload: hop.destination_workload,
                grpc,
                grpc_status: if grpc { grpc::status_of(out.resp.headers()) } else { None },
                security: hop.security,
                peer: conn.peer,
                details,
                trace,
                authz: None,
            },
            started,
            sink: snapshot.sink.clone(),
            received,
        }
        .boxed()
    });
    if !out.flags.is_empty() {
        // Like Linkerd's l5d-proxy-error: says why, without a trip to the logs.
        if let Ok(v) = HeaderValue::from_str(&out.flags.to_string()) {
            out.resp.headers_mut().insert(X_MESHGATE_FLAGS.clone(), v);
        }
    }
    if let Some(recording) = recording {
        out.resp.body_mut().record(recording);
    }
    out.resp
}

/// What a stage does with a request: hands it on to the next stage, or answers it itself.
/// Both are large (a request head, or a response), and moved once: not boxed.
#[allow(clippy::large_enum_variant)]
enum Step<T> {
    Next(T),
    Answer(Outcome),
}

/// The stages in order. They borrow the request head (`parts`: made into the upstream head in
/// place) rather than pass it on by value, and `hop` learns what the attempts found out about
/// the upstream.
async fn route_and_forward(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    parts: &mut Parts,
    body: ClientBody,
    hop: &mut Hop,
) -> Outcome {
    let upgrade = upgrade::requested(parts);
    let routed = match route::select(snapshot, conn, parts) {
        Step::Next(Selected::Rule(routed)) => routed,
        Step::Next(Selected::Pod(pool)) => return forward::to_pod(pool, parts, body, hop).await,
        Step::Answer(answer) => return answer,
    };
    let (delay, step) = filters::apply(conn, routed, parts);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
        hop.waited += delay;
    }
    let request = match step {
        Step::Next(request) => request,
        Step::Answer(answer) => return answer,
    };
    match upgrade {
        // Boxed: only WebSockets pay for the size of their future.
        Some(upgrade) => Box::pin(upgrade::run(snapshot, conn, request, parts, upgrade, hop)).await,
        None => attempts::run(snapshot, conn, request, parts, body, hop).await,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod size {
    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, F: Fn(A, B, C) -> Fut, Fut: Future>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// hyper moves every request's future at least once (the memcpy showed in profiles):
    /// staging the request path must not make it grow.
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(super::handle);
        eprintln!("request future: {size} bytes");
        assert!(size <= 6 * 1024, "the request future is {size} bytes");
    }
}
