//! What the proxy tells about each request and each connection: a [`RequestRecord`] completed
//! when the response body ends or the client goes away, a [`ConnRecord`] when a connection
//! closes, both handed to one [`TelemetrySink`]. Metrics, traces, access logs, the service
//! graph and `tap` are sinks that read these records; nothing else on the hot path reports.
//! Records hold shared strings and plain values: making one allocates nothing (the request
//! line an access log or `tap` shows is kept only while one of them is on).

pub mod access;
pub mod export;
pub mod handshakes;
pub mod metrics;
pub mod report;
mod sink;
pub mod tap;
pub mod trace;

pub use sink::{Telemetry, TelemetryOptions};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshgate_model::peer::Peer;

use crate::flags::Flags;

/// Which role of the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The ingress gateway.
    Gateway,
    /// A sidecar, for its application's outbound calls.
    SidecarOutbound,
    /// A sidecar, in front of its application.
    SidecarInbound,
}

/// Why a hop is plaintext: a reason, never a bare bool, so that metrics, logs and the
/// dashboard can say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaintextReason {
    /// PERMISSIVE accepted a plaintext client (the "insecure channel" warning).
    Permissive,
    /// mTLS is DISABLEd for this workload or port.
    Disabled,
    /// The peer is outside the mesh (no identity to expect of it).
    NotMeshed,
    /// This proxy has no identity to present.
    NoIdentity,
    /// The application beside the proxy, in the same pod (its outbound calls reach the
    /// sidecar in plaintext, as in every mesh: the pod's network namespace is the boundary).
    Local,
    /// STRICT refused a plaintext client: the connection was closed unanswered (recorded, so
    /// the service graph shows the refusals).
    RefusedStrict,
}

/// How the hop this proxy answers for is secured: the downstream connection for an inbound
/// proxy, the upstream one for the gateway and a sidecar's outbound side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// Mutual TLS, both SPIFFE identities verified.
    Mutual,
    /// TLS the gateway terminated for an outside client (server-authenticated only).
    Tls,
    /// Plaintext, and why.
    Plaintext(PlaintextReason),
}

impl Security {
    /// How a hop was secured, as logs, spans and the graph name it: `mutual_tls`, `tls`
    /// (the gateway's TLS for an outside client), `none`; `unknown` when no hop was made.
    pub fn name(s: Option<Security>) -> &'static str {
        match s {
            Some(Security::Mutual) => "mutual_tls",
            Some(Security::Tls) => "tls",
            Some(Security::Plaintext(_)) => "none",
            None => "unknown",
        }
    }
}

/// HTTP protocol of the downstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

/// One request, as the proxy handled it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The role that handled it.
    pub role: Role,
    /// `namespace/name` of the route, and the rule's index (none: no route matched).
    pub route: Option<(Arc<str>, usize)>,
    /// The Service backend (`namespace/name:port`).
    pub backend: Option<Arc<str>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Downstream protocol.
    pub protocol: Protocol,
    /// The response status sent.
    pub status: u16,
    /// Why it ended the way it did (`DC` when the client went away mid-response).
    pub flags: Flags,
    /// Attempts made (0: answered by the proxy).
    pub attempts: u32,
    /// Request body bytes: as declared by Content-Length, else as received by the time the
    /// response ended (a chunked body still uploading then counts what had arrived).
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// From arrival to the response head being ready.
    pub ttfb: Duration,
    /// From arrival to the end of the response body (or the client leaving).
    pub duration: Duration,
    /// The part of `ttfb` spent inside the proxy: not waiting on an upstream, nor in a delay the
    /// configuration asked for (backoff, injected faults, ejected endpoints).
    pub proxy_time: Duration,
    /// The caller's SPIFFE ID, when known.
    pub source: Option<Arc<str>>,
    /// The callee's SPIFFE ID, when known.
    pub destination: Option<Arc<str>>,
    /// The calling workload, when known.
    pub source_workload: Option<Arc<Peer>>,
    /// The called workload, when known.
    pub destination_workload: Option<Arc<Peer>>,
    /// A gRPC call.
    pub grpc: bool,
    /// The gRPC status of a gRPC call (`grpc-status` of the trailers, or of a trailers-only
    /// response); `None` for other requests.
    pub grpc_status: Option<u16>,
    /// How the hop this proxy answers for was secured (`None`: the proxy answered itself, no
    /// hop was made).
    pub security: Option<Security>,
    /// The downstream client's address.
    pub peer: SocketAddr,
    /// The request line, while an access log or `tap` wants it, or the request is traced.
    pub details: Option<Box<Details>>,
    /// Its trace, while tracing is on.
    pub trace: Option<trace::RequestTrace>,
    /// The authorization decision that let it through or refused it (`ALLOW ns/policy`,
    /// `DENY ...`), when a policy decided (inbound).
    pub authz: Option<Arc<str>>,
}

/// What an access log line and `tap` show of a request beyond the record's counters: kept
/// only while one of them is on.
#[derive(Debug, Clone)]
pub struct Details {
    /// When the request arrived (wall clock): read here, where a log line, `tap` or a span
    /// will want it, not for every request.
    pub start: SystemTime,
    /// The method.
    pub method: http::Method,
    /// `:authority` or `Host`.
    pub authority: String,
    /// The path and query.
    pub path: String,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// The W3C trace id the request carried (or was given).
    pub trace_id: Option<String>,
}

impl Details {
    /// The request line of `parts`.
    pub fn of(parts: &http::request::Parts) -> Box<Self> {
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let authority = parts.uri.authority().map(|a| a.as_str().to_string()).or_else(|| header("host"));
        let trace_id = header("traceparent").and_then(|t| t.split('-').nth(1).map(str::to_string));
        Box::new(Details {
            start: SystemTime::now(),
            method: parts.method.clone(),
            authority: authority.unwrap_or_default(),
            path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
            request_id: header("x-request-id"),
            user_agent: header("user-agent"),
            trace_id,
        })
    }
}

impl RequestRecord {
    /// When the request arrived (wall clock): as its details say, else reckoned back from now
    /// by its duration.
    pub fn start_time(&self) -> SystemTime {
        self.details
            .as_ref()
            .map_or_else(|| SystemTime::now().checked_sub(self.duration).unwrap_or(std::time::UNIX_EPOCH), |d| d.start)
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client (or, for opaque TCP, either side) closed it.
    Closed,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// An HTTP/1.1 request head did not arrive in time.
    HeaderTimeout,
    /// The proxy was draining (shutdown, or the listener went away).
    Drained,
    /// A policy refused it (mTLS mode, authorization, REGISTRY_ONLY).
    Refused,
    /// The TLS handshake failed or timed out.
    HandshakeFailed,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// An I/O or protocol error.
    Error,
}

/// One downstream connection, as the proxy handled it.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// When it was accepted (wall clock).
    pub opened: SystemTime,
    /// How long it lived.
    pub duration: Duration,
    /// The role that accepted it.
    pub role: Role,
    /// The client.
    pub peer: SocketAddr,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// The client's SPIFFE ID, when it presented one.
    pub peer_identity: Option<Arc<str>>,
    /// How the connection was secured.
    pub security: Security,
    /// Why it closed.
    pub close: CloseReason,
    /// Opaque TCP (no HTTP requests on it).
    pub opaque: bool,
    /// The caller's SPIFFE ID as the metrics name it: the client's on an inbound proxy, this
    /// proxy's own on an outbound one.
    pub source: Option<Arc<str>>,
    /// The calling workload, when known.
    pub source_workload: Option<Arc<Peer>>,
    /// The callee's SPIFFE ID, when known.
    pub destination: Option<Arc<str>>,
    /// The called workload, when known.
    pub destination_workload: Option<Arc<Peer>>,
    /// The Service an opaque connection went to (`namespace/name:port`).
    pub backend: Option<Arc<str>>,
    /// The endpoint it was relayed to.
    pub endpoint: Option<SocketAddr>,
    /// Why it ended the way it did (`UF`: no endpoint could be reached, `UH`: none ready).
    pub flags: Flags,
}

/// A connection accepted, its record to come.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opened {
    opened: SystemTime,
    at: std::time::Instant,
    role: Role,
    peer: SocketAddr,
}

impl Opened {
    /// A connection from `peer` accepted now by `role`.
    pub(crate) fn now(role: Role, peer: SocketAddr) -> Self {
        Opened { opened: SystemTime::now(), at: std::time::Instant::now(), role, peer }
    }

    /// The connection's record, now that it has closed.
    pub(crate) fn closed(
        self,
        bytes: (u64, u64),
        close: CloseReason,
        security: Security,
        peer_identity: Option<Arc<str>>,
        opaque: bool,
    ) -> ConnRecord {
        ConnRecord {
            opened: self.opened,
            duration: self.at.elapsed(),
            role: self.role,
            peer: self.peer,
            bytes_in: bytes.0,
            bytes_out: bytes.1,
            peer_identity,
            security,
            close,
            opaque,
            source: None,
            source_workload: None,
            destination: None,
            destination_workload: None,
            backend: None,
            endpoint: None,
            flags: Flags::NONE,
        }
    }
}

impl ConnRecord {
    /// The same record, relayed to `pool` of `backend` (or to nowhere, `flags` saying why).
    pub(crate) fn relayed(
        mut self,
        backend: Option<&Arc<str>>,
        pool: Option<&crate::upstream::pool::EndpointPool>,
    ) -> Self {
        self.backend = backend.cloned();
        if let Some(p) = pool {
            self.endpoint = Some(p.addr);
            self.destination = p.identity().cloned();
            self.destination_workload = p.workload().cloned();
        }
        self
    }

    /// The same record, from `source` (its SPIFFE ID) and `workload`.
    pub(crate) fn sourced(mut self, source: Option<Arc<str>>, workload: Option<Arc<Peer>>) -> Self {
        self.source = source;
        self.source_workload = workload;
        self
    }
}

/// Where records go.
pub trait TelemetrySink: Send + Sync + std::fmt::Debug + 'static {
    /// Whether this sink takes request records at all. A proxy whose sink says no builds none
    /// and keeps none with the response body: the request path then costs what it did before
    /// records existed (asked once per request; the answer should not change).
    fn wants_requests(&self) -> bool {
        true
    }
    /// Whether request records should carry their [`Details`] (an access log or `tap` is on).
    fn wants_details(&self) -> bool {
        false
    }
    /// The live request stream, for the control plane's taps (the dashboard's recent requests).
    fn tap(&self) -> Option<&tap::Tap> {
        None
    }
    /// The metrics this sink keeps, for the service-graph report.
    fn metrics(&self) -> Option<&metrics::Metrics> {
        None
    }
    /// The configuration changed (access logs, tracing); `me` is this proxy's workload.
    fn configure(&self, _settings: &meshgate_model::settings::Telemetry, _me: &Peer) {}
    /// While tracing is on: the share of new traces sampled, in millionths.
    fn trace_sampling(&self) -> Option<u32> {
        None
    }
    /// A request has ended.
    fn request(&self, record: &RequestRecord);
    /// A connection has closed.
    fn connection(&self, record: &ConnRecord);
}

/// The sink that drops everything (until metrics and traces fill one).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

impl TelemetrySink for NoopSink {
    fn wants_requests(&self) -> bool {
        false
    }
    fn request(&self, _: &RequestRecord) {}
    fn connection(&self, _: &ConnRecord) {}
}

static REJECTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LAST_REJECTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a configuration this proxy refused (a NACK, or files that did not load): the one
/// in force stays.
pub fn note_rejected() {
    use std::sync::atomic::Ordering;
    REJECTED.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST_REJECTED.store(now, Ordering::Relaxed);
}

/// Configurations refused so far, and when the last was (Unix seconds, 0: never).
pub fn rejected() -> (u64, u64) {
    use std::sync::atomic::Ordering;
    (REJECTED.load(Ordering::Relaxed), LAST_REJECTED.load(Ordering::Relaxed))
}

/// A record of a plain request (the gateway's, 1 ms to its head, 2 ms in all), for tests.
#[cfg(test)]
pub(crate) fn test_record(status: u16) -> RequestRecord {
    RequestRecord {
        role: Role::Gateway,
        route: None,
        backend: None,
        endpoint: None,
        protocol: Protocol::Http1,
        status,
        flags: Flags::NONE,
        attempts: 1,
        request_bytes: 0,
        response_bytes: 10,
        ttfb: Duration::from_millis(1),
        duration: Duration::from_millis(2),
        proxy_time: Duration::from_micros(50),
        source: None,
        destination: None,
        source_workload: None,
        destination_workload: None,
        grpc: false,
        grpc_status: None,
        security: None,
        peer: ([127, 0, 0, 1], 1).into(),
        details: None,
        trace: None,
        authz: None,
    }
}

/// A sink shared by every connection and request of a proxy.
pub type Sink = Arc<dyn TelemetrySink>;

/// The no-op sink, shared.
pub fn noop() -> Sink {
    Arc::new(NoopSink)
}
