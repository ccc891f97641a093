//! The response body on its way to the client: streamed from upstream (returning its HTTP/1
//! connection to the pool when it ends, cut when the request timeout fires) or produced by the
//! proxy; and the request's record, completed when the body ends or the client goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::body::{BoxError, RequestBytes};
use crate::flags::Flags;
use crate::telemetry::{RequestRecord, Sink};
use crate::upstream::pool::Returner;
use crate::upstream::state::ActiveGuard;

pin_project! {
    /// A response body on its way to the client.
    #[derive(Debug)]
    pub struct ResponseBody {
        #[pin]
        inner: Inner,
        // Boxed: hyper moves the body several times per request, and a record is large.
        recording: Option<Box<Recording>>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its end: the client went away (or the connection broke).
            if let Some(r) = this.project().recording.take() {
                r.finish(false);
            }
        }
    }
}

/// A request's record while its response streams.
#[derive(Debug)]
pub(crate) struct Recording {
    /// The record, completed when the response ends.
    pub(crate) record: RequestRecord,
    /// When the request arrived.
    pub(crate) started: Instant,
    /// Where the record goes.
    pub(crate) sink: Sink,
    /// The request body's size ([`crate::body::ClientBody`]).
    pub(crate) received: RequestBytes,
}

impl Recording {
    /// Completes the record in its box (not moved out of it: it is large) and hands it on.
    fn finish(mut self: Box<Self>, completed: bool) {
        self.record.duration = self.started.elapsed();
        self.record.request_bytes = self.received.get();
        if !completed {
            self.record.flags.insert(Flags::DOWNSTREAM_DISCONNECT);
        }
        self.sink.request(&self.record);
    }
}

/// The error of a response body cut by the request timeout.
#[derive(Debug)]
struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream request timeout: response body cut")
    }
}

impl std::error::Error for Cut {}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    #[allow(missing_docs)] // pin-project-lite takes no docs on fields; the variants say it all.
    enum Inner {
        /// Streamed from upstream; the connection goes back to the pool at the end.
        Upstream {
            #[pin] body: Incoming,
            returner: Option<Returner>,
            active: Option<ActiveGuard>,
            deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        },
        /// Produced by the proxy (errors, redirects).
        Local {
            data: Option<Bytes>,
        },
    }
}

impl ResponseBody {
    /// A body produced by the proxy.
    pub fn local(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ResponseBody { inner: Inner::Local { data: (!data.is_empty()).then_some(data) }, recording: None }
    }

    /// The bytes of a body the proxy produced (`None` for a streamed one).
    pub(crate) fn local_bytes(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Local { data } => Some(data.as_deref().unwrap_or_default()),
            Inner::Upstream { .. } => None,
        }
    }

    /// Completes the record of `recording` (and hands it to its sink) when this body ends or
    /// is dropped. Takes the body by reference: moved, it would be copied, and hyper moves it
    /// enough.
    pub(crate) fn record(&mut self, recording: Box<Recording>) {
        if self.is_end_stream() {
            recording.finish(true);
        } else {
            self.recording = Some(recording);
        }
    }

    /// Wraps an upstream body; an already finished body returns its connection at once.
    /// `active` counts the request as in flight until the body ends; when `deadline` (the
    /// request timeout, already armed) fires the body is cut.
    pub fn upstream(
        body: Incoming,
        returner: Option<Returner>,
        active: Option<ActiveGuard>,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Self {
        let done = body.is_end_stream();
        let returner = match returner {
            Some(r) if done => {
                r.finish();
                None
            }
            other => other,
        };
        let active = if done { None } else { active };
        let deadline = deadline.filter(|_| !done);
        ResponseBody { inner: Inner::Upstream { body, returner, active, deadline }, recording: None }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(data: Bytes) -> Self {
        ResponseBody::local(data)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = std::task::ready!(inner.as_mut().poll_frame(cx));
        if let Some(recording) = this.recording.as_mut() {
            let ended = match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        recording.record.response_bytes += data.len() as u64;
                    } else if recording.record.grpc
                        && let Some(trailers) = f.trailers_ref()
                    {
                        recording.record.grpc_status = super::grpc::status_of(trailers);
                    }
                    inner.is_end_stream()
                }
                Some(Err(e)) => {
                    let flag = if e.is::<Cut>() { Flags::UPSTREAM_TIMEOUT } else { Flags::UPSTREAM_RESET };
                    recording.record.flags.insert(flag);
                    true
                }
                None => true,
            };
            if ended && let Some(r) = this.recording.take() {
                r.finish(true);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for Inner {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            InnerProj::Upstream { mut body, returner, active, deadline } => {
                if let Some(d) = deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    returner.take();
                    active.take();
                    *deadline = None;
                    return Poll::Ready(Some(Err(Box::new(Cut))));
                }
                let frame = std::task::ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Err(_)) => {
                        // A broken response: the connection is not reused.
                        returner.take();
                    }
                    // The server may stop polling once the body reports its end: return the
                    // connection as soon as that is known.
                    Some(Ok(_)) if !body.is_end_stream() => {}
                    None | Some(Ok(_)) => {
                        if let Some(r) = returner.take() {
                            r.finish();
                        }
                        active.take();
                        *deadline = None;
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            InnerProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Upstream { body, .. } => body.is_end_stream(),
            Inner::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Upstream { body, .. } => body.size_hint(),
            Inner::Local { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
