//! Request bodies on their way upstream: streamed end to end (never buffered whole), with the
//! wrappers the request path needs: a tee for mirrors, and a replay buffer for retries. Every
//! one reads the client's body through [`ClientBody`], which sizes it for the request's record.

pub mod replay;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::mpsc;

use replay::ReplayBody;

/// Errors crossing body boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Capacity of a mirror's body channel, in frames; when full, the mirror is abandoned rather
/// than slowing the primary request.
const MIRROR_FRAMES: usize = 16;

pin_project! {
    /// The client's request body. A body of undeclared length (chunked, or HTTP/2 without
    /// Content-Length) counts the data bytes read from it for the request's record; a declared
    /// one is recorded at its declared length (hyper holds the client to it: a shorter body is
    /// an error), so the common request costs no counter and no allocation.
    #[derive(Debug)]
    pub struct ClientBody {
        #[pin]
        body: Incoming,
        seen: Option<Arc<AtomicU64>>,
        // When the rule limits bodies and the length is not declared: the bytes still
        // allowed, the limit, and where going past it is told.
        left: Option<(u64, u64, Arc<std::sync::atomic::AtomicBool>)>,
    }
}

/// A request body longer than its rule allows (an HTTPRouteFilter's `maxRequestBodyBytes`):
/// the attempt that streams it fails with this, and the request is answered 413.
#[derive(Debug, thiserror::Error)]
#[error("request body longer than the route's limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A request body's size for its record: declared, or counted as it streams.
#[derive(Debug, Default)]
pub struct RequestBytes {
    declared: u64,
    seen: Option<Arc<AtomicU64>>,
}

impl RequestBytes {
    /// The bytes so far (all of them once the body has ended).
    pub fn get(&self) -> u64 {
        self.seen.as_ref().map_or(self.declared, |s| s.load(Ordering::Relaxed))
    }
}

impl ClientBody {
    /// Wraps the client's body; the returned size is read when the response ends. With
    /// `count` false (no record wants it) nothing is counted.
    pub fn new(body: Incoming, count: bool) -> (ClientBody, RequestBytes) {
        let declared = if body.is_end_stream() || !count { Some(0) } else { body.size_hint().exact() };
        match declared {
            Some(declared) => (ClientBody { body, seen: None, left: None }, RequestBytes { declared, seen: None }),
            None => {
                let seen = Arc::new(AtomicU64::new(0));
                let body = ClientBody { body, seen: Some(seen.clone()), left: None };
                (body, RequestBytes { declared: 0, seen: Some(seen) })
            }
        }
    }

    /// Limits the body to `max` bytes: `Err` at once when its declared length is longer;
    /// an undeclared one fails with [`BodyTooLarge`] where it goes past the limit, and the
    /// returned flag says so (the upstream client's error may not carry the cause: HTTP/2
    /// resets the stream without it).
    pub fn limit(&mut self, max: u64) -> Result<Option<Arc<std::sync::atomic::AtomicBool>>, BodyTooLarge> {
        match self.body.size_hint().exact() {
            Some(n) if n > max => Err(BodyTooLarge(max)),
            Some(_) => Ok(None),
            None => {
                let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
                self.left = Some((max, max, over.clone()));
                Ok(Some(over))
            }
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            let n = data.len() as u64;
            if let Some(seen) = this.seen.as_ref() {
                seen.fetch_add(n, Ordering::Relaxed);
            }
            if let Some((left, max, over)) = this.left.as_mut() {
                match left.checked_sub(n) {
                    Some(l) => *left = l,
                    None => {
                        over.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*max)))));
                    }
                }
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A request body on its way upstream.
    #[project = RequestBodyProj]
    #[derive(Debug)]
    #[allow(missing_docs)] // pin-project-lite takes no docs on fields; the variants say it all.
    pub enum RequestBody {
        /// The client's body, as is.
        Client {
            #[pin] body: ClientBody,
        },
        /// The client's body, with each data frame also offered to mirrors.
        Tee {
            #[pin] body: ClientBody,
            mirrors: Vec<mpsc::Sender<Bytes>>,
        },
        /// A mirror's copy of a body.
        Mirror {
            rx: mpsc::Receiver<Bytes>,
        },
        /// A body kept for retries.
        Replay {
            #[pin] body: ReplayBody,
        },
        /// No body.
        Empty,
    }
}

impl RequestBody {
    /// Wraps the client's body, creating one receiving body per mirror.
    pub fn tee(body: ClientBody, mirrors: usize) -> (RequestBody, Vec<RequestBody>) {
        if mirrors == 0 {
            return (RequestBody::Client { body }, Vec::new());
        }
        if body.is_end_stream() {
            return (RequestBody::Client { body }, (0..mirrors).map(|_| RequestBody::Empty).collect());
        }
        let mut senders = Vec::with_capacity(mirrors);
        let mut copies = Vec::with_capacity(mirrors);
        for _ in 0..mirrors {
            let (tx, rx) = mpsc::channel(MIRROR_FRAMES);
            senders.push(tx);
            copies.push(RequestBody::Mirror { rx });
        }
        (RequestBody::Tee { body, mirrors: senders }, copies)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RequestBodyProj::Client { body } => body.poll_frame(cx).map_err(Into::into),
            RequestBodyProj::Tee { body, mirrors } => {
                let frame = std::task::ready!(body.poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(data) = f.data_ref() {
                            // A full or closed mirror is dropped: mirrors never slow the primary.
                            mirrors.retain(|tx| tx.try_send(data.clone()).is_ok());
                        }
                    }
                    Some(Err(_)) | None => mirrors.clear(),
                }
                Poll::Ready(frame)
            }
            RequestBodyProj::Mirror { rx } => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Replay { body } => body.poll_frame(cx),
            RequestBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body } | RequestBody::Tee { body, .. } => body.is_end_stream(),
            RequestBody::Mirror { .. } => false,
            RequestBody::Replay { body } => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body } | RequestBody::Tee { body, .. } => body.size_hint(),
            RequestBody::Mirror { .. } => SizeHint::default(),
            RequestBody::Replay { body } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
