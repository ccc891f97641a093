//! Downstream timeouts, kept without a clock on the I/O path and without a timer per request:
//! the stream wrapper counts the bytes read and written (one relaxed atomic add per operation
//! that moved bytes; the connection's record reads them too), the request path marks where
//! each HTTP/1.1 request begins and ends (a store each), and one watcher per connection, woken
//! four times per timeout period, reads the counters.
//!
//! - Idle: a connection that moves no byte in either direction for the idle timeout is asked
//!   to finish (a request in flight completes first) and closed, between 1 and 1.25 timeouts
//!   after its last byte.
//! - Request head: an HTTP/1.1 client must send a complete request head within the header
//!   timeout — counted from the connection's start for its first request (as nginx's
//!   `client_header_timeout`), from the first byte after the previous response for the next
//!   ones (a quiet keep-alive connection is the idle timeout's business). A client that sent
//!   part of a head gets `408 Request Timeout` and the connection closes; one that sent nothing
//!   is closed. HTTP/2 and upgraded connections are exempt: their streams have their own flow.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// `head`: a request is being served (its head arrived, its response has not ended).
const IN_FLIGHT: u64 = u64::MAX;

/// `state` bits.
const EXEMPT: u8 = 1;
const TIMED_OUT: u8 = 2;

/// What a connection's stream wrapper, its request path and its watcher share.
#[derive(Debug, Default)]
pub struct ConnIo {
    /// Bytes read.
    reads: AtomicU64,
    /// Bytes written.
    writes: AtomicU64,
    /// `IN_FLIGHT`, or the value of `reads` when the last response ended: reads beyond it are
    /// the next request's head.
    head: AtomicU64,
    /// `EXEMPT` (not HTTP/1.1, or upgraded), `TIMED_OUT` (the watcher gave up on the head).
    state: AtomicU8,
}

impl ConnIo {
    /// A request's head has arrived.
    pub fn request_started(&self) {
        self.head.store(IN_FLIGHT, Ordering::Relaxed);
    }

    /// Its response has ended (or was abandoned): the next bytes are another head.
    pub fn request_ended(&self) {
        self.head.store(self.reads.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// No header timeout from now on (HTTP/2, or a connection upgraded to another protocol).
    pub fn exempt(&self) {
        self.state.fetch_or(EXEMPT, Ordering::Relaxed);
    }

    fn ops(&self) -> u64 {
        self.reads.load(Ordering::Relaxed).wrapping_add(self.writes.load(Ordering::Relaxed))
    }

    /// Bytes read from and written to the peer so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.reads.load(Ordering::Relaxed), self.writes.load(Ordering::Relaxed))
    }
}

/// What the HTTP/1.1 server answers a client whose head did not arrive in time.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 23\r\nconnection: close\r\n\r\nrequest header timeout\n";

/// A stream that counts its reads and writes for [`watch`].
#[derive(Debug)]
pub struct Activity<S> {
    inner: S,
    io: Arc<ConnIo>,
    first_read: bool,
}

impl<S> Activity<S> {
    /// Wraps `inner`; the counters are what [`watch`] reads.
    pub fn new(inner: S) -> (Self, Arc<ConnIo>) {
        let io = Arc::new(ConnIo::default());
        (Activity { inner, io: io.clone(), first_read: true }, io)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Activity<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.io.state.load(Ordering::Relaxed) & TIMED_OUT != 0 {
            // Best effort: a client that sent part of a head learns why (the write is small
            // and the socket's buffer empty); then end of stream ends the connection.
            if self.io.reads.load(Ordering::Relaxed) != self.io.head.load(Ordering::Relaxed) {
                let this = &mut *self;
                let _ = Pin::new(&mut this.inner).poll_write(cx, REQUEST_TIMEOUT);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if matches!(r, Poll::Ready(Ok(()))) && n > 0 {
            if self.first_read {
                // The HTTP/2 connection preface: no request-head timeout on this connection.
                self.first_read = false;
                if buf.filled()[before..].starts_with(b"PRI ") {
                    self.io.exempt();
                }
            }
            self.io.reads.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.io.writes.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.io.writes.fetch_add(n as u64, Ordering::Relaxed);
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

/// Why [`watch`] gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No byte moved for the idle timeout.
    Idle,
    /// A request head did not arrive within the header timeout; the stream now ends (after a
    /// 408 when part of a head had arrived).
    Header,
}

/// Resolves when the connection has been idle for `idle`, or a request head has taken longer
/// than `header`; never when both are `None`.
pub async fn watch(io: &ConnIo, idle: Option<Duration>, header: Option<Duration>) -> Expired {
    let step = match (idle, header) {
        (None, None) => return std::future::pending().await,
        (Some(i), Some(h)) => i.min(h),
        (Some(t), None) | (None, Some(t)) => t,
    };
    let step = (step / 4).max(Duration::from_millis(1));
    let mut seen = io.ops();
    let mut quiet = Duration::ZERO;
    // When the head now awaited began to be awaited: the connection's start, for the first.
    let mut head_since = Some(Instant::now());
    let mut last_head = io.head.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(step).await;
        let now = io.ops();
        if now == seen {
            quiet += step;
            if idle.is_some_and(|t| quiet >= t) {
                return Expired::Idle;
            }
        } else {
            seen = now;
            quiet = Duration::ZERO;
        }
        let Some(timeout) = header else { continue };
        if io.state.load(Ordering::Relaxed) & EXEMPT != 0 {
            head_since = None;
            continue;
        }
        let head = io.head.load(Ordering::Relaxed);
        let reads = io.reads.load(Ordering::Relaxed);
        if head == IN_FLIGHT {
            head_since = None;
        } else if head != last_head {
            // A response ended since the last look: the clock starts with the next head's bytes.
            last_head = head;
            head_since = (reads != head).then(Instant::now);
        } else if reads != head && head_since.is_none() {
            head_since = Some(Instant::now());
        }
        if head_since.is_some_and(|since| since.elapsed() >= timeout) {
            io.state.fetch_or(TIMED_OUT, Ordering::Relaxed);
            return Expired::Header;
        }
    }
}
