//! The downstream idle timeout: a connection that moves no byte in either direction for the
//! timeout is asked to finish (a request in flight completes first) and closed. Activity is
//! counted by the stream wrapper — one relaxed atomic add per read or write that moved bytes,
//! no clock read on the I/O path — and checked four times per timeout period, so a connection
//! closes between 1 and 1.25 timeouts after its last byte.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that counts its reads and writes.
#[derive(Debug)]
pub struct Activity<S> {
    inner: S,
    ops: Arc<AtomicU64>,
}

impl<S> Activity<S> {
    /// Wraps `inner`; the counter is what [`idle`] watches.
    pub fn new(inner: S) -> (Self, Arc<AtomicU64>) {
        let ops = Arc::new(AtomicU64::new(0));
        (Activity { inner, ops: ops.clone() }, ops)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.ops.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.ops.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.ops.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once `ops` has not moved for `timeout` (never, when `timeout` is `None`).
pub async fn idle(ops: &AtomicU64, timeout: Option<Duration>) {
    let Some(timeout) = timeout else { return std::future::pending().await };
    let step = (timeout / 4).max(Duration::from_millis(1));
    let mut seen = ops.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        tokio::time::sleep(step).await;
        let now = ops.load(Ordering::Relaxed);
        if now == seen {
            quiet += 1;
            if quiet >= 4 {
                return;
            }
        } else {
            seen = now;
            quiet = 0;
        }
    }
}
