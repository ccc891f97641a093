//! Test-only upstreams in memory: an endpoint whose "connections" are in-process pipes to a
//! hyper server running a test's handler. Nothing waits on real I/O, so tests with paused time
//! (`start_paused`) see timeouts, retries and backoff happen at exactly the virtual instants
//! the policy says.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;

type Handler = dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync;

/// An upstream server in memory.
#[derive(Clone)]
pub(crate) struct Upstream {
    handler: Arc<Handler>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory::Upstream")
    }
}

impl Upstream {
    /// A server answering every request with `handler`.
    pub(crate) fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Upstream { handler: Arc::new(move |req| Box::pin(handler(req))) }
    }

    /// A new connection to it.
    pub(crate) fn dial(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let handler = self.handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service).await;
        });
        client
    }
}
