//! Request bodies on their way upstream: streamed end to end (never buffered whole), with the
//! wrappers the request path needs: a tee for mirrors, and a replay buffer for retries.

pub mod replay;

use std::pin::Pin;
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
    /// A request body on its way upstream.
    #[project = RequestBodyProj]
    #[derive(Debug)]
    #[allow(missing_docs)] // pin-project-lite takes no docs on fields; the variants say it all.
    pub enum RequestBody {
        /// The client's body, as is.
        Incoming {
            #[pin] body: Incoming,
        },
        /// The client's body, with each data frame also offered to mirrors.
        Tee {
            #[pin] body: Incoming,
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
    pub fn tee(body: Incoming, mirrors: usize) -> (RequestBody, Vec<RequestBody>) {
        if mirrors == 0 {
            return (RequestBody::Incoming { body }, Vec::new());
        }
        if body.is_end_stream() {
            return (RequestBody::Incoming { body }, (0..mirrors).map(|_| RequestBody::Empty).collect());
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
            RequestBodyProj::Incoming { body } => body.poll_frame(cx).map_err(Into::into),
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
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            RequestBodyProj::Mirror { rx } => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Replay { body } => body.poll_frame(cx),
            RequestBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming { body } | RequestBody::Tee { body, .. } => body.is_end_stream(),
            RequestBody::Mirror { .. } => false,
            RequestBody::Replay { body } => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming { body } | RequestBody::Tee { body, .. } => body.size_hint(),
            RequestBody::Mirror { .. } => SizeHint::default(),
            RequestBody::Replay { body } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
