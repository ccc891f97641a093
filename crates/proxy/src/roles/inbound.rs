//! The inbound side of a workload's proxy: accept a connection meant for the application,
//! tell mTLS from plaintext by its first byte, apply the mTLS mode (STRICT refuses plaintext,
//! PERMISSIVE accepts and marks it, DISABLE passes it through), learn the caller's SPIFFE ID,
//! authorize, hand the caller's identity to the application in `x-forwarded-client-cert`, and
//! forward to the application on its local address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use meshgate_model::rule::UpstreamProtocol;
use meshgate_model::security::{Attributes, Decision, InboundPolicy, Mode};
use meshgate_tls::{MeshTls, PeerIdentity};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::{ClientBody, RequestBody};
use crate::conn::accept::{Guard, Tracker, accept_until_stopped};
use crate::conn::detect::{Detected, detect};
use crate::conn::tls;
use crate::flags::Flags;
use crate::headers::strip_hop_by_hop;
use crate::http::ResponseBody;
use crate::telemetry::{self, CloseReason, Opened, PlaintextReason, Protocol, RequestRecord, Role, Sink};
use crate::upstream::pool::EndpointPool;
use crate::upstream::state::BackendState;

/// `x-forwarded-client-cert`, as Envoy writes it.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// How a connection is secured, and by whom.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS with a verified SPIFFE peer.
    Mutual(PeerIdentity),
    /// Plaintext, and why.
    Plaintext(PlaintextReason),
}

impl Security {
    /// The kind, for records.
    fn kind(&self) -> telemetry::Security {
        match self {
            Security::Mutual(_) => telemetry::Security::Mutual,
            Security::Plaintext(r) => telemetry::Security::Plaintext(*r),
        }
    }
}

/// Where the application is.
#[derive(Debug, Clone, Copy)]
pub enum AppTarget {
    /// A fixed address (the loopback lab, tests).
    Fixed(SocketAddr),
    /// The port of the connection's original destination (redirected by iptables/nftables),
    /// on localhost.
    OriginalDst,
}

/// Settings of an inbound proxy.
#[derive(Debug, Clone)]
pub struct InboundOptions {
    /// `namespace/name` of the workload, for logs.
    pub workload: String,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long to wait for a plaintext client's first bytes before treating the connection
    /// as opaque TCP (server-speaks-first protocols send nothing).
    pub sniff_timeout: Duration,
    /// An HTTP connection that moves no byte for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// Overrides the configuration's request-head timeout (zero: off).
    pub header_timeout: Option<Duration>,
    /// Where request and connection records go.
    pub sink: Sink,
}

impl Default for InboundOptions {
    fn default() -> Self {
        InboundOptions {
            workload: String::new(),
            handshake_timeout: Duration::from_secs(10),
            sniff_timeout: Duration::from_millis(200),
            idle_timeout: Some(Duration::from_secs(3600)),
            header_timeout: None,
            sink: telemetry::noop(),
        }
    }
}

/// Connecting to the application on localhost.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections to the application are closed after this.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An inbound proxy.
pub struct Inbound {
    opts: InboundOptions,
    target: AppTarget,
    policy: ArcSwap<InboundPolicy>,
    /// The workloads as records name them (callers by address, this one, its Services).
    peers: ArcSwap<meshgate_model::peer::MeshPeers>,
    /// This workload's SPIFFE ID (the destination of what arrives here).
    identity: Option<Arc<str>>,
    /// The configuration's request-head timeout, in milliseconds (0: off).
    header_timeout_ms: std::sync::atomic::AtomicU64,
    tls: Option<Arc<MeshTls>>,
    app_state: Arc<BackendState>,
    pools: Mutex<std::collections::HashMap<SocketAddr, Arc<EndpointPool>>>,
    builder: auto::Builder<TokioExecutor>,
    /// Set by [`Inbound::drain`]: the accept loop ends and HTTP connections finish.
    stop: watch::Sender<bool>,
    /// Counts policy changes: a plaintext connection ends when its port turns STRICT.
    policy_changes: watch::Sender<u64>,
    connections: Arc<Tracker>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inbound({})", self.opts.workload)
    }
}

fn reply(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::local(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

impl Inbound {
    /// An inbound proxy for one workload.
    pub fn new(target: AppTarget, tls: Option<Arc<MeshTls>>, policy: InboundPolicy, opts: InboundOptions) -> Arc<Self> {
        let app_state = Arc::new(BackendState::default());
        app_state.set_limits(&meshgate_model::policy::BackendPolicy::default());
        Arc::new(Inbound {
            opts,
            target,
            policy: ArcSwap::from_pointee(policy),
            peers: ArcSwap::from_pointee(meshgate_model::peer::MeshPeers::default()),
            identity: tls.as_ref().map(|t| Arc::from(t.id().as_str())),
            header_timeout_ms: std::sync::atomic::AtomicU64::new(
                meshgate_model::Downstream::default().header_timeout.map_or(0, |d| d.as_millis() as u64),
            ),
            tls,
            app_state,
            pools: Mutex::new(std::collections::HashMap::new()),
            builder: crate::conn::serve::http_builder(&crate::conn::ServerSettings::default()),
            stop: watch::channel(false).0,
            policy_changes: watch::channel(0).0,
            connections: Arc::new(Tracker::default()),
        })
    }

    /// What the admin endpoint shows of the inbound side: its policy (mTLS mode per port,
    /// authorization) and its identity.
    pub fn describe(&self) -> serde_json::Value {
        let header_timeout = self.header_timeout_ms.load(std::sync::atomic::Ordering::Relaxed);
        serde_json::json!({
            "workload": self.opts.workload,
            "policy": &**self.policy.load(),
            "headerTimeoutMs": header_timeout,
            "identity": self.tls.as_ref().map(|t| t.id().to_string()),
        })
    }

    /// Replaces the policy; connections and requests from now on use it, and plaintext
    /// connections already open on a port it makes STRICT are closed (HTTP ones after the
    /// request in progress), as Envoy drains a listener whose filter chains changed.
    pub fn set_policy(&self, policy: InboundPolicy) {
        self.policy.store(Arc::new(policy));
        self.policy_changes.send_modify(|n| *n += 1);
    }

    /// Flips when the proxy stops or `port` turns STRICT: what ends a plaintext connection.
    fn plaintext_stop(self: &Arc<Self>, port: u16) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let (mut stop, mut changes) = (self.stop.subscribe(), self.policy_changes.subscribe());
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    r = stop.changed() => if r.is_err() || *stop.borrow() { break },
                    r = changes.changed() => {
                        let strict = me.upgrade().is_none_or(|m| m.policy.load().mode_for(port) == Mode::Strict);
                        if r.is_err() || strict {
                            if strict {
                                tracing::info!(port, "mTLS is now STRICT: closing a plaintext connection");
                            }
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(true);
        });
        rx
    }

    /// Replaces what records name the workloads by.
    pub fn set_peers(&self, peers: Arc<meshgate_model::peer::MeshPeers>) {
        self.peers.store(peers);
    }

    /// Sets the configuration's request-head timeout (`None`: off) for connections from now on.
    pub fn set_header_timeout(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        self.header_timeout_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Accepts connections until [`Inbound::drain`] (or until the task is dropped).
    pub fn serve(self: Arc<Self>, listener: TcpListener) -> impl Future<Output = ()> + Send + 'static {
        // Counted like a connection from now on, before the task first runs: a drain returns
        // only once the listener is closed.
        let running = self.connections.guard();
        self.accept_loop(listener, running)
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, running: Guard) {
        let stop = self.stop.subscribe();
        accept_until_stopped(listener, stop, &self.connections, |stream, peer| self.clone().connection(stream, peer))
            .await;
        drop(running);
    }

    /// Stops accepting and asks HTTP connections to finish the requests in flight and close
    /// (HTTP/2 clients get a GOAWAY); resolves once every inbound connection, opaque TCP
    /// included, has closed. The caller bounds the wait.
    pub async fn drain(&self) {
        self.stop_accepting();
        self.connections.wait_idle().await;
    }

    /// Ends the accept loop (its listener closes) and asks HTTP connections to finish.
    pub fn stop_accepting(&self) {
        // Stored even while no accept loop is subscribed yet (one spawned but not yet run).
        self.stop.send_replace(true);
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let opened = Opened::now(Role::SidecarInbound, peer);
        let (bytes, close, security, identity, opaque, port) = self.clone().accept(stream, peer).await;
        let named = Named::of(self.peers.load_full(), peer, identity.as_deref(), port);
        let mut record =
            opened.closed(bytes, close, security, identity.clone(), opaque).sourced(identity, named.source);
        record.destination = self.identity.clone();
        record.destination_workload = named.destination;
        record.backend = named.service;
        self.opts.sink.connection(&record);
    }

    /// Serves one accepted connection: (bytes in and out, why it closed, how it was secured,
    /// the peer's identity, whether it was opaque TCP).
    async fn accept(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> ((u64, u64), CloseReason, telemetry::Security, Option<Arc<str>>, bool, Option<u16>) {
        let refused =
            |close| ((0, 0), close, telemetry::Security::Plaintext(PlaintextReason::NotMeshed), None, false, None);
        let app = match self.target {
            AppTarget::Fixed(app) => app,
            AppTarget::OriginalDst => match meshgate_intercept::original_dst(&stream) {
                // Not redirected (someone dialled the inbound port itself): forwarding to the
                // original destination would loop back here.
                Ok(dst) if stream.local_addr().is_ok_and(|l| l == dst) => {
                    tracing::debug!(%peer, "connection to the inbound port itself, not redirected: closing");
                    return refused(CloseReason::Refused);
                }
                // The application listens in the same namespace: reach it on localhost (the
                // proxy's own traffic is never redirected), at the port the client dialled.
                Ok(dst) => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), dst.port()),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "no original destination on an intercepted connection");
                    return refused(CloseReason::Error);
                }
            },
        };
        let port = app.port();
        let mode = self.policy.load().mode_for(port);
        let detected = detect(&stream, self.opts.sniff_timeout).await;
        let is_tls = matches!(detected, Detected::Tls(_));
        if is_tls && mode != Mode::Disable {
            let Some(tls) = &self.tls else {
                tracing::warn!(%peer, workload = %self.opts.workload, "TLS client, but this proxy has no identity: closing");
                return refused(CloseReason::HandshakeFailed);
            };
            // One server configuration (this workload's SVID) whatever the SNI.
            let accepted = tls::accept(stream, |_, _| Some(tls.server_config()), self.opts.handshake_timeout).await;
            let stream = match accepted {
                Ok(s) => s,
                Err(tls::AcceptError::Timeout) => {
                    tracing::warn!(%peer, workload = %self.opts.workload, "mTLS handshake timed out");
                    return refused(CloseReason::HandshakeFailed);
                }
                Err(e) => {
                    tracing::warn!(%peer, workload = %self.opts.workload, "mTLS handshake refused: {e}");
                    return refused(CloseReason::HandshakeFailed);
                }
            };
            let Some(identity) = PeerIdentity::from_connection(stream.get_ref().1) else {
                tracing::warn!(%peer, "mTLS peer without a SPIFFE identity: closing");
                return refused(CloseReason::HandshakeFailed);
            };
            let opaque = stream.get_ref().1.alpn_protocol() == Some(meshgate_tls::config::ALPN_TCP);
            let principal: Arc<str> = Arc::from(identity.id.as_str());
            let security = Security::Mutual(identity);
            let (bytes, close) = if opaque {
                self.tcp(stream, &security, peer, app).await
            } else {
                self.http(stream, security, Some(principal.clone()), peer, app, None).await
            };
            return (bytes, close, telemetry::Security::Mutual, Some(principal), opaque, Some(port));
        }
        if !is_tls && mode == Mode::Strict {
            tracing::warn!(
                %peer,
                port,
                workload = %self.opts.workload,
                "plaintext connection refused: mTLS is STRICT"
            );
            // Counted as a connection (opaque: no request was read), so the refusal shows.
            let security = telemetry::Security::Plaintext(PlaintextReason::RefusedStrict);
            return ((0, 0), CloseReason::Refused, security, None, true, Some(port));
        }
        let reason = if mode == Mode::Disable { PlaintextReason::Disabled } else { PlaintextReason::Permissive };
        if reason == PlaintextReason::Permissive {
            tracing::debug!(%peer, port, "plaintext connection accepted (PERMISSIVE): insecure channel");
        }
        let security = Security::Plaintext(reason);
        let kind = security.kind();
        let stop = self.plaintext_stop(port);
        if matches!(detected, Detected::Http1 | Detected::Http2) {
            let (bytes, close) = self.http(stream, security, None, peer, app, Some(stop)).await;
            (bytes, close, kind, None, false, Some(port))
        } else {
            let mut stop = stop;
            tokio::select! {
                (bytes, close) = self.tcp(stream, &security, peer, app) => (bytes, close, kind, None, true, Some(port)),
                _ = stop.wait_for(|s| *s) => ((0, 0), CloseReason::Refused, kind, None, true, Some(port)),
            }
        }
    }

    async fn tcp<S>(
        &self,
        stream: S,
        security: &Security,
        peer: SocketAddr,
        app: SocketAddr,
    ) -> ((u64, u64), CloseReason)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let attrs = Attributes {
            principal: principal_of(security),
            namespace: namespace_of(security),
            method: None,
            path: None,
            port: app.port(),
            headers: None,
        };
        if let Decision::Deny(why) = self.authorize(&attrs, "TCP") {
            tracing::info!(target: "meshgate::authz", %peer, port = app.port(), "TCP connection closed: {why}");
            return ((0, 0), CloseReason::Refused);
        }
        let mut upstream = match crate::upstream::pool::dial(app, APP_CONNECT_TIMEOUT).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%app, error = %e, "cannot reach the application");
                return ((0, 0), CloseReason::UpstreamUnreachable);
            }
        };
        let relayed = crate::conn::tcp::relay(stream, &mut upstream).await;
        ((relayed.bytes_in, relayed.bytes_out), relayed.close)
    }

    /// Decides, logging every decision with the policy that made it.
    fn authorize(&self, attrs: &Attributes<'_>, what: &str) -> Decision {
        let policy = self.policy.load();
        let (decision, audits) = policy.authz.check(attrs);
        for a in audits {
            tracing::info!(
                target: "meshgate::authz",
                policy = a,
                principal = attrs.principal.unwrap_or("-"),
                "AUDIT {what} {} {}",
                attrs.method.unwrap_or("-"),
                attrs.path.unwrap_or("-")
            );
        }
        match &decision {
            Decision::Deny(why) => tracing::info!(
                target: "meshgate::authz",
                principal = attrs.principal.unwrap_or("-"),
                "DENY {what} {} {} port {}: {why}",
                attrs.method.unwrap_or("-"),
                attrs.path.unwrap_or("-"),
                attrs.port
            ),
            Decision::Allow(by) => tracing::debug!(
                target: "meshgate::authz",
                principal = attrs.principal.unwrap_or("-"),
                policy = by.as_deref().unwrap_or("-"),
                "ALLOW {what} {} {}",
                attrs.method.unwrap_or("-"),
                attrs.path.unwrap_or("-")
            ),
        }
        decision
    }

    /// Serves HTTP on `stream` until it ends, the proxy stops, or `until` (when given) flips.
    async fn http<S>(
        self: &Arc<Self>,
        stream: S,
        security: Security,
        principal: Option<Arc<str>>,
        peer: SocketAddr,
        app: SocketAddr,
        until: Option<watch::Receiver<bool>>,
    ) -> ((u64, u64), CloseReason)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // What stays the same for every request of the connection, worked out once.
        let xfcc = match (&security, &self.tls) {
            (Security::Mutual(peer), Some(tls)) => {
                HeaderValue::from_str(&format!("By={};Hash={};URI={}", tls.id(), peer.cert_sha256_hex(), peer.id)).ok()
            }
            _ => None,
        };
        let named = Named::of(self.peers.load_full(), peer, principal.as_deref(), Some(app.port()));
        let caller = Arc::new(Caller { security, principal, xfcc, pool: self.pool(app), app, peer, named });
        let me = self.clone();
        let handler = move |req| me.clone().request(req, caller.clone());
        let stop = Some(until.unwrap_or_else(|| self.stop.subscribe()));
        let configured = match self.header_timeout_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let settings =
            crate::conn::serve::ConnSettings { idle: self.opts.idle_timeout, header: self.opts.header_timeout };
        let served =
            crate::conn::serve::serve(stream, peer, handler, &self.builder, stop, settings.timeouts(configured)).await;
        ((served.bytes_in, served.bytes_out), served.close)
    }

    async fn request(self: Arc<Self>, req: Request<Incoming>, caller: Arc<Caller>) -> Response<ResponseBody> {
        let started = Instant::now();
        let recorded = self.opts.sink.wants_requests();
        let protocol = if req.version() >= Version::HTTP_2 { Protocol::Http2 } else { Protocol::Http1 };
        let (mut parts, body) = req.into_parts();
        let grpc = crate::http::grpc::is_call(&parts.headers);
        let trace = self.opts.sink.trace_sampling().map(|ppm| telemetry::trace::start(&parts.headers, ppm));
        if let Some(t) = trace.filter(|t| t.rewrites()) {
            t.inject(&mut parts.headers, Role::SidecarInbound);
        }
        let details = (recorded && (self.opts.sink.wants_details() || trace.is_some_and(|t| t.sampled)))
            .then(|| telemetry::Details::of(&parts));
        let (body, received) = ClientBody::new(body, recorded);
        let (mut resp, flags, upstream_wait, decision) = self.forward(Request::from_parts(parts, body), &caller).await;
        if !recorded {
            return resp;
        }
        let ttfb = started.elapsed();
        // Named once per connection, unless the configuration changed since it was accepted.
        let current = self.peers.load();
        let renamed;
        let named = if Arc::ptr_eq(&current, &caller.named.peers) {
            &caller.named
        } else {
            let principal = caller.principal.as_deref();
            renamed = Named::of(arc_swap::Guard::into_inner(current), caller.peer, principal, Some(caller.app.port()));
            &renamed
        };
        // Into a box where it stays (a record is large: moved, it would be copied, here and by hyper).
        let recording = crate::http::Recording {
            record: RequestRecord {
                role: Role::SidecarInbound,
                route: None,
                backend: named.service.clone(),
                endpoint: Some(caller.app),
                protocol,
                status: resp.status().as_u16(),
                flags,
                attempts: u32::from(upstream_wait.is_some()),
                request_bytes: 0,
                response_bytes: 0,
                ttfb,
                duration: ttfb,
                proxy_time: ttfb.saturating_sub(upstream_wait.unwrap_or_default()),
                source: caller.principal.clone(),
                destination: self.identity.clone(),
                source_workload: named.source.clone(),
                destination_workload: named.destination.clone(),
                grpc,
                grpc_status: if grpc { crate::http::grpc::status_of(resp.headers()) } else { None },
                security: Some(caller.security.kind()),
                peer: caller.peer,
                details,
                trace,
                authz: decision.map(Arc::from),
            },
            started,
            sink: self.opts.sink.clone(),
            received,
        }
        .boxed();
        resp.body_mut().record(recording);
        resp
    }

    /// Authorizes the request and forwards it to the application: the response, its flags and
    /// the time the application took (`None`: not sent to it).
    async fn forward(
        &self,
        req: Request<ClientBody>,
        caller: &Caller,
    ) -> (Response<ResponseBody>, Flags, Option<Duration>, Option<String>) {
        let (mut parts, body) = req.into_parts();
        // A client's own XFCC is never trusted.
        parts.headers.remove(&XFCC);
        let attrs = Attributes {
            principal: principal_of(&caller.security),
            namespace: namespace_of(&caller.security),
            method: Some(parts.method.as_str()),
            path: Some(parts.uri.path()),
            port: caller.app.port(),
            headers: Some(&parts.headers),
        };
        let decision = match self.authorize(&attrs, "HTTP") {
            Decision::Deny(why) => {
                return (
                    reply(StatusCode::FORBIDDEN, "RBAC: access denied"),
                    Flags::NONE,
                    None,
                    Some(format!("DENY {why}")),
                );
            }
            // Named for the access log and tap only: no string per request otherwise.
            Decision::Allow(Some(by)) if self.opts.sink.wants_details() => Some(format!("ALLOW {by}")),
            Decision::Allow(_) => None,
        };
        if let Some(v) = &caller.xfcc {
            parts.headers.insert(XFCC.clone(), v.clone());
        }
        strip_hop_by_hop(&mut parts.headers);
        // HTTP/2 from the peer proxy carries the host in the URI: the app gets a Host header.
        if let Some(a) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        let mut uri = http::uri::Parts::default();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_11;
        let sent_at = Instant::now();
        let result = caller.pool.send(Request::from_parts(parts, RequestBody::Client { body })).await;
        let waited = Some(sent_at.elapsed());
        match result {
            Ok((resp, returner)) => {
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                let body = ResponseBody::upstream(rbody, Some(returner), None, None);
                (Response::from_parts(rparts, body), Flags::NONE, waited, decision)
            }
            Err(e) => {
                let app = caller.app;
                tracing::warn!(%app, error = %e.error, "application unreachable");
                let (status, flags) = if e.error.is_connect() {
                    (StatusCode::SERVICE_UNAVAILABLE, Flags::UPSTREAM_CONNECT_FAILURE)
                } else {
                    (StatusCode::BAD_GATEWAY, Flags::UPSTREAM_RESET)
                };
                (reply(status, "application unreachable"), flags, waited, decision)
            }
        }
    }

    fn pool(&self, app: SocketAddr) -> Arc<EndpointPool> {
        let Ok(mut pools) = self.pools.lock() else {
            return Arc::new(EndpointPool::new(
                app,
                UpstreamProtocol::Http1,
                self.app_state.clone(),
                APP_CONNECT_TIMEOUT,
                APP_IDLE_TIMEOUT,
            ));
        };
        pools
            .entry(app)
            .or_insert_with(|| {
                Arc::new(EndpointPool::new(
                    app,
                    UpstreamProtocol::Http1,
                    self.app_state.clone(),
                    APP_CONNECT_TIMEOUT,
                    APP_IDLE_TIMEOUT,
                ))
            })
            .clone()
    }
}

fn principal_of(s: &Security) -> Option<&str> {
    match s {
        Security::Mutual(p) => Some(p.id.as_str().strip_prefix("spiffe://").unwrap_or(p.id.as_str())),
        Security::Plaintext(_) => None,
    }
}

/// One HTTP connection's caller: fixed for all of its requests.
struct Caller {
    security: Security,
    /// Its SPIFFE ID, for records.
    principal: Option<Arc<str>>,
    peer: SocketAddr,
    /// The `x-forwarded-client-cert` value for an mTLS peer.
    xfcc: Option<HeaderValue>,
    pool: Arc<EndpointPool>,
    app: SocketAddr,
    /// What records name the caller, this workload and the Service by, worked out once for
    /// the connection (as Istio's metadata exchange is per connection).
    named: Named,
}

/// The workloads and Service a connection's records name, and the configuration they come
/// from: a connection accepted before the configuration arrived (or changed) is named anew
/// from the one in force.
struct Named {
    peers: Arc<meshgate_model::peer::MeshPeers>,
    /// The calling workload: by its address, else (a proxy that is no Workload, such as a
    /// gateway) by its SPIFFE ID's namespace and service account, as that proxy names itself.
    source: Option<Arc<meshgate_model::peer::Peer>>,
    /// This workload.
    destination: Option<Arc<meshgate_model::peer::Peer>>,
    /// The Service targeting the port called.
    service: Option<Arc<str>>,
}

impl Named {
    fn of(
        peers: Arc<meshgate_model::peer::MeshPeers>,
        caller: SocketAddr,
        principal: Option<&str>,
        port: Option<u16>,
    ) -> Self {
        let by_identity = || {
            let id = meshgate_identity::SpiffeId::parse(principal?).ok()?;
            let (ns, sa) = id.workload()?;
            Some(Arc::new(meshgate_model::peer::Peer::named(ns, sa)))
        };
        Named {
            source: peers.at(caller.ip()).cloned().or_else(by_identity),
            destination: peers.me.clone(),
            service: port.and_then(|p| peers.services.get(&p).cloned()),
            peers,
        }
    }
}

fn namespace_of(s: &Security) -> Option<&str> {
    match s {
        Security::Mutual(p) => p.id.workload().map(|(ns, _)| ns),
        Security::Plaintext(_) => None,
    }
}
