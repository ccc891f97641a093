//! TLS accept for every role that terminates TLS: the ClientHello is read first, the server
//! configuration chosen for its SNI and ALPN (the inbound proxy has one, its SVID; the
//! gateway's HTTPS listeners choose among their certificates here), then the handshake, the
//! whole bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::server::TlsStream;

/// Why a TLS accept failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcceptError {
    /// The handshake did not complete within the timeout.
    #[error("TLS handshake timed out")]
    Timeout,
    /// No configuration serves the name the client asked for.
    #[error("no certificate for server name {0:?}")]
    NoConfig(Option<String>),
    /// The handshake failed (with the peer's or our alert).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// Accepts TLS on `stream`: `select` gets the ClientHello's SNI and ALPN protocols and names
/// the server configuration to answer with.
pub(crate) async fn accept<S, F>(stream: S, select: F, timeout: Duration) -> Result<TlsStream<S>, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Option<&str>, &mut dyn Iterator<Item = &[u8]>) -> Option<Arc<ServerConfig>>,
{
    let handshake = async {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(Acceptor::default(), stream).await.map_err(AcceptError::Handshake)?;
        let chosen = {
            let hello = start.client_hello();
            let sni = hello.server_name().map(str::to_ascii_lowercase);
            let mut alpn = hello.alpn().into_iter().flatten();
            select(sni.as_deref(), &mut alpn).ok_or(AcceptError::NoConfig(sni))
        };
        start.into_stream(chosen?).await.map_err(AcceptError::Handshake)
    };
    use crate::telemetry::handshakes::{Outcome, Side, count};
    let result = match tokio::time::timeout(timeout, handshake).await {
        Ok(r) => r,
        Err(_) => Err(AcceptError::Timeout),
    };
    count(
        Side::Server,
        match &result {
            Ok(_) => Outcome::Ok,
            Err(AcceptError::Timeout) => Outcome::Timeout,
            Err(AcceptError::NoConfig(_)) => Outcome::UnknownServerName,
            Err(AcceptError::Handshake(e)) => Outcome::of_io(e),
        },
    );
    result
}
