//! Connections to one endpoint: a keep-alive pool of HTTP/1.1 connections, or one multiplexed
//! HTTP/2 connection. Each endpoint has its own small lock (held for a push or a pop), so no
//! lock is shared across endpoints or taken while waiting on the network.
//!
//! Why not hyper-util's pooled client: it keys one pool map by authority behind one mutex, and
//! the balancer (and later circuit breaking and outlier detection) needs per-endpoint state
//! and in-flight counts anyway, as in Linkerd's and Envoy's own pools.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_model::rule::UpstreamProtocol;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// Limits and timeouts for upstream connections.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint.
    pub max_idle: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { connect_timeout: Duration::from_secs(5), max_idle: 64 }
    }
}

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
    /// The HTTP handshake or exchange failed before response headers.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// True when the request never reached the endpoint's application.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_))
    }
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    /// The endpoint.
    pub addr: SocketAddr,
    protocol: UpstreamProtocol,
    settings: Arc<PoolSettings>,
    idle: Mutex<Vec<http1::SendRequest<RequestBody>>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    in_flight: AtomicUsize,
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
    }
}

impl EndpointPool {
    /// A pool for `addr` speaking `protocol`.
    pub fn new(addr: SocketAddr, protocol: UpstreamProtocol, settings: Arc<PoolSettings>) -> Self {
        EndpointPool {
            addr,
            protocol,
            settings,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
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

    /// Sends a request; the returner (always present) must live as long as the response body.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Returner), UpstreamError> {
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
    ) -> Result<Response<Incoming>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.take_idle().await {
                Some(s) => (s, true),
                None => (self.connect_h1().await?, false),
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
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    async fn send_h2(&self, mut req: Request<RequestBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut fresh = false;
        loop {
            let existing = self.h2.lock().ok().and_then(|g| g.as_ref().filter(|s| !s.is_closed()).cloned());
            let mut sender = match existing {
                Some(s) => s,
                None => {
                    fresh = true;
                    self.connect_h2().await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) if !fresh => {
                        if let Ok(mut g) = self.h2.lock() {
                            *g = None;
                        }
                        req = r;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    async fn take_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        loop {
            let mut sender = self.idle.lock().ok()?.pop()?;
            if sender.is_closed() {
                continue;
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
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.settings.max_idle
        {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, UpstreamError> {
        let stream = match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr: self.addr, source }),
            Err(_) => return Err(UpstreamError::ConnectTimeout(self.addr)),
        };
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect().await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new()).handshake(io).await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection closed with error");
            }
        });
        if let Ok(mut g) = self.h2.lock() {
            *g = Some(sender.clone());
        }
        Ok(sender)
    }
}
