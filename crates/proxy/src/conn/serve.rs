//! Serving one downstream HTTP connection (HTTP/1.1 or HTTP/2 by preface) for every role:
//! the hyper server settings, the connection's idle and request-head timeouts, the `Host`
//! rules of RFC 9112, and a graceful finish when the role drains.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use super::timeouts::{Activity, ConnIo, Expired, watch};
use crate::body::BoxError;
use crate::telemetry::CloseReason;

/// Limits on downstream connections.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// Time an HTTP/1.1 client has to send a complete request head (`--header-timeout`):
    /// when set, it overrides the configuration's (MeshConfig `spec.downstream.headerTimeout`,
    /// default 10 s); zero turns the timeout off. See [`crate::timeouts`].
    pub header_timeout: Option<Duration>,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// A client connection that moves no byte for this long is closed (after the request in
    /// flight, if any); Envoy's default of one hour. `None` keeps idle connections forever.
    pub idle_timeout: Option<Duration>,
    /// Time a client has to complete a TLS handshake on a listener that terminates TLS
    /// (nginx's `ssl_handshake_timeout` is 60 s; 10 s is ample on a working network).
    pub handshake_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_timeout: None,
            max_concurrent_streams: 1024,
            idle_timeout: Some(Duration::from_secs(3600)),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The downstream HTTP server settings as a hyper builder (HTTP/1.1 and HTTP/2 by preface).
pub(crate) fn http_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    // Not hyper's header_read_timeout: it arms a timer per request and also runs while a
    // keep-alive connection is quiet (closing it like an idle timeout would); the request-head
    // timeout is `crate::timeouts`'.
    http1.max_buf_size(settings.max_header_bytes.max(8192)).max_headers(settings.max_headers).keep_alive(true);
    http1.header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        // Extended CONNECT (RFC 8441): WebSockets over HTTP/2.
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

pin_project_lite::pin_project! {
    /// The handler's response as the `Result` hyper's service wants, or the proxy's own answer
    /// to a request it refuses before routing. Not an `async` block: one of those would hold
    /// the handler's future twice (as captured value and as awaited state), and hyper moves
    /// the service future once per request.
    #[project = AnswerProj]
    enum Answer<F, B> {
        Handler {
            #[pin]
            inner: F,
            io: Option<Arc<ConnIo>>,
        },
        Refused {
            resp: Option<Response<B>>,
        },
    }
}

/// What every role's response body is: streamed bytes, or bytes the proxy wrote itself.
pub(crate) trait LocalBody:
    http_body::Body<Data = Bytes, Error = BoxError> + From<Bytes> + Send + 'static
{
}

impl<B: http_body::Body<Data = Bytes, Error = BoxError> + From<Bytes> + Send + 'static> LocalBody for B {}

impl<F: Future<Output = Response<B>>, B: LocalBody> Future for Answer<F, B> {
    type Output = Result<Response<Ended<B>>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.project() {
            AnswerProj::Handler { inner, io } => inner.poll(cx).map(|resp| {
                let io = io.take();
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(io) = &io
                {
                    io.exempt();
                }
                Ok(resp.map(|body| Ended { body, io }))
            }),
            AnswerProj::Refused { resp } => {
                let resp = resp.take().unwrap_or_else(|| bad_request("request refused"));
                std::task::Poll::Ready(Ok(resp.map(|body| Ended { body, io: None })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that tells the connection's timeouts when the response has ended (or
    /// was abandoned): after it, the client's next bytes are a new request head.
    pub(crate) struct Ended<B> {
        #[pin]
        body: B,
        io: Option<Arc<ConnIo>>,
    }

    impl<B> PinnedDrop for Ended<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(io) = this.project().io.take() {
                io.request_ended();
            }
        }
    }
}

impl<B: LocalBody> http_body::Body for Ended<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[test]
fn host_values_are_checked_without_parsing_them_into_an_authority() {
    for ok in [
        "shop.example.com",
        "shop.example.com:8080",
        "10.0.0.1",
        "10.0.0.1:80",
        "[::1]",
        "[::1]:443",
        "a_b-c~d",
        "x%41",
    ] {
        assert!(valid_host(ok.as_bytes()), "{ok}");
    }
    for bad in ["", "user@host", "a b", "host:80x", "[::1", "[]", "host/path", "host?q", "a:b:c", ":80", "h\u{e9}"] {
        assert!(!valid_host(bad.as_bytes()), "{bad}");
    }
}

fn bad_request<B: LocalBody>(why: &str) -> Response<B> {
    let mut resp = Response::new(B::from(Bytes::from(format!("bad request: {why}\n"))));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// A `Host` value as RFC 9110 §7.2 has it: `uri-host [ ":" port ]`, the host an IP literal in
/// brackets or a reg-name (unreserved, percent-encoded and sub-delims characters), no userinfo.
/// Checked in place: parsing it into an `Authority` would copy it, once per request.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&c| c == b']') {
            Some(end) => (&v[..=end], &v[end + 1..]),
            None => return false,
        },
        _ => match v.iter().rposition(|&c| c == b':') {
            Some(at) => (&v[..at], &v[at..]),
            None => (v, &v[v.len()..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let host_ok = match host.first() {
        Some(b'[') => {
            host.len() > 2 && host[1..host.len() - 1].iter().all(|c| c.is_ascii_hexdigit() || b":.%vV-_~".contains(c))
        }
        Some(_) => host.iter().all(|c| c.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(c)),
        None => false,
    };
    port_ok && host_ok
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one `Host`, with a valid value; with an
/// absolute-form target the target's authority is the host (§3.2.2) and `Host` is ignored, but
/// more than one is still an error. HTTP/1.0 may omit it; HTTP/2 has `:authority`.
fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    if req.version() >= http::Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if req.uri().authority().is_some() {
        return Ok(());
    }
    match first {
        None if req.version() == http::Version::HTTP_11 => Err("HTTP/1.1 request without a Host header"),
        None => Ok(()),
        Some(v) if valid_host(v.as_bytes()) => Ok(()),
        Some(_) => Err("invalid Host header"),
    }
}

/// Serves one downstream HTTP connection with `handler` until it closes, until `stop` (if any)
/// asks it to finish its requests and go, until it has been idle for `idle_timeout`, or until
/// an HTTP/1.1 request head has taken longer than `header_timeout`. The one way every role
/// serves HTTP: gateway listeners, sidecar outbound, inbound. Requests without a valid `Host`
/// are answered 400 here, before any role sees them.
pub(crate) async fn serve<S, F, Fut, B>(
    stream: S,
    peer: SocketAddr,
    handler: F,
    builder: &auto::Builder<TokioExecutor>,
    stop: Option<watch::Receiver<bool>>,
    timeouts: Timeouts,
) -> Served
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: LocalBody,
{
    let (stream, io) = Activity::new(stream);
    let conn_io = io.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        if let Err(why) = check_host(&req) {
            return Answer::Refused { resp: Some(bad_request(why)) };
        }
        let io = if req.version() >= http::Version::HTTP_2 {
            conn_io.exempt();
            None
        } else {
            conn_io.request_started();
            Some(conn_io.clone())
        };
        Answer::Handler { inner: handler(req), io }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopped = async {
        match stop {
            Some(mut stop) => {
                // A drain that began before this connection was served counts too.
                if !*stop.borrow_and_update() {
                    let _ = stop.changed().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let (result, close) = tokio::select! {
        r = conn.as_mut() => (r, CloseReason::Closed),
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            (conn.await, CloseReason::Drained)
        }
        expired = watch(&io, timeouts.idle, timeouts.header) => match expired {
            Expired::Idle => {
                tracing::debug!(%peer, "idle timeout: closing the connection");
                conn.as_mut().graceful_shutdown();
                (conn.await, CloseReason::IdleTimeout)
            }
            Expired::Header => {
                tracing::debug!(%peer, "request header timeout: closing the connection");
                // The stream now ends (after a 408 if part of a head came): the connection
                // sees it at once; it is not waited for longer than a moment.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                (Ok(()), CloseReason::HeaderTimeout)
            }
        },
    };
    let close = match result {
        Err(e) => {
            tracing::debug!(%peer, error = %e, "downstream connection ended with error");
            if close == CloseReason::Closed { CloseReason::Error } else { close }
        }
        Ok(()) => close,
    };
    let (bytes_in, bytes_out) = io.bytes();
    Served { close, bytes_in, bytes_out }
}

/// How a served connection ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Served {
    /// Why it closed.
    pub(crate) close: CloseReason,
    /// Bytes from the client.
    pub(crate) bytes_in: u64,
    /// Bytes to the client.
    pub(crate) bytes_out: u64,
}

/// The timeouts of one downstream connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timeouts {
    /// Closed after this long without a byte moving.
    pub(crate) idle: Option<Duration>,
    /// An HTTP/1.1 request head must arrive within this.
    pub(crate) header: Option<Duration>,
}

/// A server's own connection settings (flags), fixed when it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    /// Idle timeout.
    pub(crate) idle: Option<Duration>,
    /// Request-head timeout override (zero: off; `None`: the configuration's).
    pub(crate) header: Option<Duration>,
}

impl ConnSettings {
    pub(crate) fn new(settings: &ServerSettings) -> Self {
        ConnSettings { idle: settings.idle_timeout, header: settings.header_timeout }
    }

    /// A new connection's timeouts: the header timeout is the flag's, else `configured` (the
    /// configuration in force when the connection arrives).
    pub(crate) fn timeouts(self, configured: Option<Duration>) -> Timeouts {
        let header = match self.header {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => configured,
        };
        Timeouts { idle: self.idle, header }
    }
}
