//! Opaque TCP for every role: one bidirectional copy, counted in both directions (also when
//! it ends in an error), with the reason it ended.

use tokio::io::{AsyncRead, AsyncWrite};

use super::timeouts::Activity;
use crate::telemetry::CloseReason;

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Relayed {
    /// Bytes from the client.
    pub(crate) bytes_in: u64,
    /// Bytes to the client.
    pub(crate) bytes_out: u64,
    /// Closed by a side, or broken.
    pub(crate) close: CloseReason,
}

/// Copies between `client` and `upstream` until both directions are done.
pub(crate) async fn relay<A, B>(client: A, upstream: &mut B) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_idle(client, upstream, None).await
}

/// As [`relay`], and closed when no byte moves either way for `idle`.
pub(crate) async fn relay_idle<A, B>(client: A, upstream: &mut B, idle: Option<std::time::Duration>) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client, io) = Activity::new(client);
    let close = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, upstream) => match copied {
            Ok(_) => CloseReason::Closed,
            Err(_) => CloseReason::Error,
        },
        _ = super::timeouts::watch(&io, idle, None) => CloseReason::IdleTimeout,
    };
    let (bytes_in, bytes_out) = io.bytes();
    Relayed { bytes_in, bytes_out, close }
}
