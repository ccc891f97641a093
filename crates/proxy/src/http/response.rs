//! The response body on its way to the client: streamed from upstream (returning its HTTP/1
//! connection to the pool when it ends, cut when the request timeout fires) or produced by the
//! proxy; and the request's record, completed when the body ends or the client goes away.

use std::cell::RefCell;
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
        recording: Option<Boxed>,
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

/// Boxes for records kept by each thread for the next requests, at most.
const SPARE_BOXES: usize = 256;

thread_local! {
    /// This thread's spare boxes, empty.
    #[allow(clippy::vec_box, reason = "the boxes are what is kept: each is an allocation to hand out again")]
    static SPARE: RefCell<Vec<Box<Option<Recording>>>> = const { RefCell::new(Vec::new()) };
}

/// A record in its box, which goes back to its thread's spares when the record is done, so
/// that a recording proxy does not allocate and free a box per request. With the header values
/// of [`crate::headers::unique_value`], two sidecars went from 30.9 to 25.6 `malloc` calls per
/// request (bench/mesh `ALLOCS=1`, 2026-12-04); CPU per request did not change measurably. The
/// spares are bounded ([`SPARE_BOXES`] per thread, each under 512 bytes: under 128 KiB) and
/// hold no record, so nothing a record refers to (a configuration's names, the sink) outlives
/// it.
#[derive(Debug)]
pub(crate) struct Boxed(Box<Option<Recording>>);

impl Boxed {
    /// The record (there is one until [`Boxed::finish`]).
    fn get_mut(&mut self) -> Option<&mut Recording> {
        (*self.0).as_mut()
    }

    /// Completes the record in its box (not moved out of it: it is large), hands it on and
    /// keeps the box for another.
    fn finish(mut self, completed: bool) {
        if let Some(r) = self.get_mut() {
            r.record.duration = r.started.elapsed();
            r.record.request_bytes = r.received.get();
            if !completed {
                r.record.flags.insert(Flags::DOWNSTREAM_DISCONNECT);
            }
            r.sink.request(&r.record);
        }
        *self.0 = None;
        let spare = self.0;
        // While the thread is ending its spares are gone: the box is freed instead.
        let _ = SPARE.try_with(move |s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && s.len() < SPARE_BOXES
            {
                s.push(spare);
            }
        });
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
    /// The record in a box: a spare one of this thread's if there is one.
    pub(crate) fn boxed(self) -> Boxed {
        let spare = SPARE.try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop())).ok().flatten();
        match spare {
            Some(mut b) => {
                *b = Some(self);
                Boxed(b)
            }
            None => Boxed(Box::new(Some(self))),
        }
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
    pub(crate) fn record(&mut self, recording: Boxed) {
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
        if let Some(recording) = this.recording.as_mut().and_then(Boxed::get_mut) {
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;
    use crate::telemetry::{ConnRecord, TelemetrySink};

    /// A sink that keeps the records handed to it.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<RequestRecord>>);

    impl TelemetrySink for Kept {
        fn request(&self, record: &RequestRecord) {
            if let Ok(mut kept) = self.0.lock() {
                kept.push(record.clone());
            }
        }
        fn connection(&self, _: &ConnRecord) {}
    }

    fn recording(sink: &Arc<Kept>, status: u16) -> Recording {
        Recording {
            record: RequestRecord { response_bytes: 0, ..crate::telemetry::test_record(status) },
            started: Instant::now(),
            sink: sink.clone(),
            received: RequestBytes::default(),
        }
    }

    fn address(b: &Boxed) -> usize {
        std::ptr::from_ref::<Option<Recording>>(&*b.0) as usize
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_records_box_is_used_again_and_holds_nothing_meanwhile() {
        // What the spares' bound in their doc rests on.
        assert!(std::mem::size_of::<Option<Recording>>() < 512, "{}", std::mem::size_of::<Option<Recording>>());
        let sink = Arc::new(Kept::default());
        // Two bodies in flight at once: two boxes.
        let (first, second) = (recording(&sink, 200).boxed(), recording(&sink, 201).boxed());
        let (a, b) = (address(&first), address(&second));
        assert_ne!(a, b);
        let mut one = ResponseBody::local("four");
        one.recording = Some(first);
        let mut two = ResponseBody::local("");
        two.record(second);
        // An empty body is done at once; its record is handed on, its box kept, the sink not.
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        assert_eq!(Arc::strong_count(&sink), 2, "the spare box holds no record (nor its sink)");
        let again = recording(&sink, 202).boxed();
        assert_eq!(address(&again), b, "the box of the finished record");
        let mut three = ResponseBody::local("lost");
        three.recording = Some(again);
        // Dropped before its end: the client went away.
        drop(three);
        assert_eq!(sink.0.lock().unwrap().last().map(|r| r.flags), Some(Flags::DOWNSTREAM_DISCONNECT));
        assert_eq!(one.collect().await.map(|b| b.to_bytes()).ok().as_deref(), Some(&b"four"[..]));
        let kept = sink.0.lock().unwrap();
        assert_eq!(kept.iter().map(|r| r.status).collect::<Vec<_>>(), [201, 202, 200]);
        assert_eq!(kept[2].response_bytes, 4);
        assert!(!kept[2].flags.contains(Flags::DOWNSTREAM_DISCONNECT));
        drop(kept);
        assert_eq!(Arc::strong_count(&sink), 1);
        // Both boxes are spare now; the next two records get them back.
        let (c, d) = (recording(&sink, 203).boxed(), recording(&sink, 204).boxed());
        let mut got = [address(&c), address(&d)];
        got.sort_unstable();
        let mut had = [a, b];
        had.sort_unstable();
        assert_eq!(got, had);
    }
}
