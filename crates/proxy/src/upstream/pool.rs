//! Connections to one endpoint of one backend: a keep-alive pool of HTTP/1.1 connections, or
//! one multiplexed HTTP/2 connection, plus what the balancer and outlier detection learn about
//! the endpoint. Each endpoint has its own small lock (held for a push or a pop), so no lock is
//! shared across endpoints or held while waiting on the network.
//!
//! Why not hyper-util's pooled client: it keys one pool map by authority behind one mutex,
//! and the balancer, circuit breakers and outlier detection need per-endpoint state and
//! per-service connection counts anyway, as in Linkerd's and Envoy's own pools.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_model::rule::UpstreamProtocol;
use tokio::net::TcpStream;

use super::state::BackendState;
use crate::body::RequestBody;
use crate::clock::{nanos, now_nanos};
use crate::headers::{REINDEX_EVERY, index_unique_names};

/// Why a request could not be handed to (or answered by) an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// TCP connect did not finish in time.
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The connection limit was reached and no connection freed up in time.
    #[error("{0}")]
    Overflow(String),
    /// The mTLS handshake failed, or the peer is not who it should be.
    #[error("mTLS to {addr} failed: {reason}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// Why (the SPIFFE verifier's reason, or the identity mismatch).
        reason: String,
    },
    /// The HTTP handshake or exchange failed before response headers.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// True when the request never reached the endpoint's application.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_) | UpstreamError::Tls { .. })
    }
}

/// A failed send; carries the request back when it was never written, so it can be retried
/// whatever its method.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub error: UpstreamError,
    /// The request, if it was not sent at all.
    pub request: Option<Request<RequestBody>>,
}

/// Outlier-detection state of one endpoint.
#[derive(Debug, Default)]
pub struct Health {
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) consecutive_connect: AtomicU32,
    /// Until when the endpoint is ejected (0: not ejected).
    pub(crate) ejected_until: AtomicU64,
    pub(crate) times_ejected: AtomicU32,
    /// Peak-EWMA latency in nanoseconds (f64 bits) and when it was last updated.
    pub(crate) ewma: AtomicU64,
    pub(crate) ewma_at: AtomicU64,
}

/// How to dial an endpoint over mTLS, and whom to expect there.
#[derive(Debug, Clone)]
pub struct TlsDial {
    /// This proxy's TLS state (its SVID and trust bundle, rotated in place).
    pub mesh: Arc<meshgate_tls::MeshTls>,
    /// The SPIFFE ID the endpoint must present.
    pub expected: meshgate_identity::SpiffeId,
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    /// The endpoint.
    pub addr: SocketAddr,
    tls: Option<TlsDial>,
    protocol: UpstreamProtocol,
    state: Arc<BackendState>,
    connect_timeout: Duration,
    idle_timeout: u64,
    idle: Mutex<Vec<(http1::SendRequest<RequestBody>, u64)>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Requests sent on the current HTTP/2 connection (wrapping): see [`index_unique_names`].
    h2_sent: AtomicU32,
    /// Held while dialling the HTTP/2 connection.
    h2_dial: tokio::sync::Mutex<()>,
    /// TLS to an endpoint outside the mesh (BackendTLSPolicy).
    origination: Option<Arc<meshgate_model::rule::BackendTls>>,
    in_flight: AtomicUsize,
    /// The SPIFFE ID expected of it (mTLS), for records.
    identity: Option<Arc<str>>,
    /// The workload behind it, for records.
    workload: Option<Arc<meshgate_model::peer::Peer>>,
    /// Tests: connections are pipes to this in-memory server instead of TCP.
    #[cfg(test)]
    pub(crate) memory: Option<super::memory::Upstream>,
    /// What the balancer and outlier detection know.
    pub health: Health,
}

/// Gives an HTTP/1.1 connection back to its pool when the response body has ended, and
/// counts the request as in flight until then.
#[derive(Debug)]
pub struct Returner {
    pool: Arc<EndpointPool>,
    sender: Option<http1::SendRequest<RequestBody>>,
}

impl Returner {
    /// The response ended cleanly: the connection may carry another request.
    pub fn finish(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put_idle(sender);
        }
    }
}

impl Drop for Returner {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.pool.state.freed.notify_one();
    }
}

impl EndpointPool {
    /// A pool for `addr` speaking `protocol`, counting its connections in `state`.
    pub fn new(
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        state: Arc<BackendState>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self::with_tls(addr, protocol, None, state, connect_timeout, idle_timeout)
    }

    /// A pool that dials mTLS (HTTP/2 over it) when `tls` is set.
    pub fn with_tls(
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        tls: Option<TlsDial>,
        state: Arc<BackendState>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        // Between meshgate proxies: one multiplexed HTTP/2 connection over mTLS.
        let protocol = if tls.is_some() { UpstreamProtocol::H2c } else { protocol };
        let identity = tls.as_ref().map(|t| Arc::from(t.expected.as_str()));
        EndpointPool {
            identity,
            workload: None,
            #[cfg(test)]
            memory: None,
            addr,
            tls,
            protocol,
            state,
            connect_timeout,
            idle_timeout: nanos(idle_timeout),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_sent: AtomicU32::new(0),
            h2_dial: tokio::sync::Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            health: Health::default(),
            origination: None,
        }
    }

    /// Dials TLS (a BackendTLSPolicy) to the endpoint: the server verified against the
    /// policy's roots as its hostname, ALPN as the protocol spoken. Not for meshed endpoints
    /// (their sidecar's mTLS is the TLS).
    pub fn originate_tls(&mut self, tls: Arc<meshgate_model::rule::BackendTls>) {
        if self.tls.is_none() {
            self.origination = Some(tls);
        }
    }

    /// Names the workload behind the endpoint, for records.
    pub fn set_workload(&mut self, workload: Option<Arc<meshgate_model::peer::Peer>>) {
        self.workload = workload;
    }

    /// The workload behind the endpoint, when known.
    pub fn workload(&self) -> Option<&Arc<meshgate_model::peer::Peer>> {
        self.workload.as_ref()
    }

    /// The SPIFFE ID it must present (when reached over mTLS).
    pub fn identity(&self) -> Option<&Arc<str>> {
        self.identity.as_ref()
    }

    /// How requests to it are secured.
    pub fn security(&self) -> crate::telemetry::Security {
        if self.tls.is_some() {
            crate::telemetry::Security::Mutual
        } else if self.origination.is_some() {
            crate::telemetry::Security::Tls
        } else {
            crate::telemetry::Security::Plaintext(crate::telemetry::PlaintextReason::NotMeshed)
        }
    }

    /// Requests sent and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The protocol spoken to this endpoint.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Sends a request; the returner must live as long as the response body.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Returner), SendError> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut returner = Returner { pool: self.clone(), sender: None };
        let response = match self.protocol {
            UpstreamProtocol::Http1 => self.send_h1(req, &mut returner).await?,
            UpstreamProtocol::H2c => self.send_h2(req).await?,
        };
        Ok((response, returner))
    }

    async fn send_h1(
        &self,
        mut req: Request<RequestBody>,
        returner: &mut Returner,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut sender, reused) = match self.take_idle().await {
                Some(s) => (s, true),
                // Boxed: the wait for a freed connection and the dial are rare (no idle connection);
                // inline, their state would be moved with every request's future.
                None => match Box::pin(self.idle_or_connect_h1()).await {
                    Ok(s) => s,
                    Err(error) => return Err(SendError { error, request: Some(req) }),
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    returner.sender = Some(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // A kept-alive connection the server had just closed: the request was never
                    // written, so it is safe to send it again on a fresh connection.
                    Some(r) if reused => req = r,
                    request => return Err(SendError { error: UpstreamError::Http(e.into_error()), request }),
                },
            }
        }
    }

    async fn send_h2(&self, mut req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        let current = || self.h2.lock().ok().and_then(|g| g.as_ref().filter(|s| !s.is_closed()).cloned());
        let mut fresh = false;
        loop {
            let mut sender = match current() {
                Some(s) => s,
                None => {
                    // One dial at a time: requests arriving meanwhile share its connection
                    // instead of opening one each.
                    let _dialing = self.h2_dial.lock().await;
                    match current() {
                        Some(s) => s,
                        None => {
                            fresh = true;
                            match Box::pin(self.connect_h2()).await {
                                Ok(s) => s,
                                Err(error) => return Err(SendError { error, request: Some(req) }),
                            }
                        }
                    }
                }
            };
            if self.h2_sent.fetch_add(1, Ordering::Relaxed).is_multiple_of(REINDEX_EVERY) {
                index_unique_names(req.headers_mut());
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) if !fresh => {
                        if let Ok(mut g) = self.h2.lock() {
                            *g = None;
                        }
                        req = r;
                    }
                    request => return Err(SendError { error: UpstreamError::Http(e.into_error()), request }),
                },
            }
        }
    }

    async fn take_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        let now = now_nanos();
        loop {
            let (mut sender, since) = self.idle.lock().ok()?.pop()?;
            if sender.is_closed() || now.saturating_sub(since) > self.idle_timeout {
                continue; // Dropping the sender closes the connection.
            }
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put_idle(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((sender, now_nanos()));
        }
    }

    /// Closes idle connections unused for longer than the idle timeout.
    pub fn reap_idle(&self) {
        let now = now_nanos();
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|(s, since)| !s.is_closed() && now.saturating_sub(*since) <= self.idle_timeout);
        }
    }

    /// Opens a connection if the backend is below its connection limit; otherwise waits (as
    /// one of at most `maxPendingRequests`, for at most the connect timeout) for a connection
    /// of this endpoint to come back idle or for the count to drop.
    ///
    /// Dials are boxed here and in `send_h2`: they are rare and large (connect, TLS and HTTP
    /// handshakes), and inline they would grow every request's future, which hyper moves.
    async fn idle_or_connect_h1(&self) -> Result<(http1::SendRequest<RequestBody>, bool), UpstreamError> {
        let state = &self.state;
        if state.try_add_connection() {
            return Ok((Box::pin(self.connect_h1(ConnectionSlot(self.state.clone()))).await?, false));
        }
        let Some(_pending) = state.enter_pending() else {
            return Err(UpstreamError::Overflow(format!(
                "circuit breaker: {} connections open and {} requests already waiting (maxConnections, maxPendingRequests)",
                state.connections(),
                state.pending()
            )));
        };
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        loop {
            let freed = state.freed.notified();
            if let Some(s) = self.take_idle().await {
                return Ok((s, true));
            }
            if state.try_add_connection() {
                return Ok((Box::pin(self.connect_h1(ConnectionSlot(self.state.clone()))).await?, false));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(UpstreamError::Overflow(format!(
                    "circuit breaker: no connection freed within {:?} ({} open, maxConnections)",
                    self.connect_timeout,
                    state.connections()
                )));
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        dial(self.addr, self.connect_timeout).await
    }

    /// A connection for opaque TCP: mTLS (ALPN meshgate-tcp) to a meshed endpoint, plain TCP
    /// otherwise.
    pub async fn open_tcp(&self) -> Result<Opaque, UpstreamError> {
        let tcp = self.connect().await?;
        match (&self.tls, &self.origination) {
            (Some(dial), _) => Ok(Opaque::Tls(Box::new(self.tls_handshake_with(tcp, dial, true).await?))),
            (None, Some(o)) => Ok(Opaque::Tls(Box::new(self.originate(tcp, o, false).await?))),
            (None, None) => Ok(Opaque::Plain(tcp)),
        }
    }

    /// The TLS handshake of a BackendTLSPolicy, bounded by the connect timeout.
    async fn originate(
        &self,
        tcp: TcpStream,
        o: &meshgate_model::rule::BackendTls,
        h2: bool,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let fail = |reason: String| UpstreamError::Tls { addr: self.addr, reason };
        let name = rustls_pki_types::ServerName::try_from(o.hostname.clone())
            .map_err(|e| fail(format!("server name {:?}: {e}", o.hostname)))?;
        let config = if h2 { o.h2.clone() } else { o.http1.clone() };
        use crate::telemetry::handshakes::{Outcome, Side, count};
        match tokio::time::timeout(self.connect_timeout, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
            .await
        {
            Ok(Ok(s)) => {
                count(Side::Client, Outcome::Ok);
                Ok(s)
            }
            Ok(Err(e)) => {
                count(Side::Client, Outcome::of_io(&e));
                Err(fail(format!("{e} (BackendTLSPolicy {}, verifying {})", o.policy, o.hostname)))
            }
            Err(_) => {
                count(Side::Client, Outcome::Timeout);
                Err(fail("TLS handshake timed out".into()))
            }
        }
    }

    /// The mTLS handshake, then the identity check: the peer must be the one expected.
    async fn tls_handshake(
        &self,
        tcp: TcpStream,
        dial: &TlsDial,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        self.tls_handshake_with(tcp, dial, false).await
    }

    async fn tls_handshake_with(
        &self,
        tcp: TcpStream,
        dial: &TlsDial,
        opaque: bool,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let material = dial.mesh.material();
        let config = if opaque { material.client_tcp.clone() } else { material.client.clone() };
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls_pki_types::ServerName::IpAddress(self.addr.ip().into());
        let fail = |reason: String| UpstreamError::Tls { addr: self.addr, reason };
        use crate::telemetry::handshakes::{Outcome, Side, count};
        let tls = match tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                count(Side::Client, Outcome::of_io(&e));
                return Err(fail(e.to_string()));
            }
            Err(_) => {
                count(Side::Client, Outcome::Timeout);
                return Err(fail("handshake timed out".into()));
            }
        };
        let Some(peer) = meshgate_tls::PeerIdentity::from_connection(tls.get_ref().1) else {
            count(Side::Client, Outcome::BadCertificate);
            return Err(fail("the server presented no SPIFFE identity".into()));
        };
        if peer.id != dial.expected {
            count(Side::Client, Outcome::BadCertificate);
            return Err(fail(format!("server identity {} is not the expected {}", peer.id, dial.expected)));
        }
        count(Side::Client, Outcome::Ok);
        Ok(tls)
    }

    async fn connect_h1(&self, slot: ConnectionSlot) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        #[cfg(test)]
        if let Some(memory) = &self.memory {
            let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(memory.dial())).await?;
            tokio::spawn(async move {
                let _slot = slot;
                let _ = conn.with_upgrades().await;
            });
            return Ok(sender);
        }
        let tcp = self.connect().await?;
        let (sender, conn) = match &self.origination {
            Some(o) => {
                let tls = self.originate(tcp, o, false).await?;
                let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(tls)).await?;
                let addr = self.addr;
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(%addr, error = %e, "upstream TLS connection closed with error");
                    }
                });
                return Ok(sender);
            }
            None => http1::Builder::new().handshake(TokioIo::new(tcp)).await?,
        };
        let addr = self.addr;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        // One multiplexed connection: counted, but never waited for.
        let slot = ConnectionSlot::counted(self.state.clone());
        let tcp = self.connect().await?;
        let sender = match (&self.tls, &self.origination) {
            (None, Some(o)) => {
                let tls = self.originate(tcp, o, true).await?;
                spawn_h2(TokioIo::new(tls), slot, self.addr).await?
            }
            (None, None) => spawn_h2(TokioIo::new(tcp), slot, self.addr).await?,
            (Some(dial), _) => {
                let tls = self.tls_handshake(tcp, dial).await?;
                spawn_h2(TokioIo::new(tls), slot, self.addr).await?
            }
        };
        if let Ok(mut g) = self.h2.lock() {
            *g = Some(sender.clone());
            self.h2_sent.store(0, Ordering::Relaxed);
        }
        Ok(sender)
    }
}

async fn spawn_h2<I>(
    io: I,
    slot: ConnectionSlot,
    addr: SocketAddr,
) -> Result<http2::SendRequest<RequestBody>, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new()).handshake(io).await?;
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream h2 connection closed with error");
        }
    });
    Ok(sender)
}

/// A TCP connection to `addr` within `timeout`, with Nagle off.
pub async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout(addr)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// An opaque TCP connection upstream.
#[derive(Debug)]
pub enum Opaque {
    /// Plain TCP.
    Plain(TcpStream),
    /// mTLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Opaque {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Opaque::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Opaque::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Opaque {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Opaque::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Opaque::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Opaque::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Opaque::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Opaque::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Opaque::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One counted upstream connection; uncounted (and waiters woken) when dropped.
#[derive(Debug)]
struct ConnectionSlot(Arc<BackendState>);

impl ConnectionSlot {
    fn counted(state: Arc<BackendState>) -> Self {
        state.force_add_connection();
        ConnectionSlot(state)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.remove_connection();
    }
}
