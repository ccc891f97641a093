//! The response body on its way to the client: streamed from upstream (returning its HTTP/1
//! connection to the pool when it ends, cut when the request timeout fires) or produced by the
//! proxy.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::body::BoxError;
use crate::upstream::pool::Returner;
use crate::upstream::state::ActiveGuard;

pin_project! {
    /// A response body on its way to the client.
    #[project = ResponseBodyProj]
    #[derive(Debug)]
    #[allow(missing_docs)] // pin-project-lite takes no docs on fields; the variants say it all.
    pub enum ResponseBody {
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
        ResponseBody::Local { data: (!data.is_empty()).then_some(data) }
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
        ResponseBody::Upstream { body, returner, active, deadline }
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
        match self.project() {
            ResponseBodyProj::Upstream { mut body, returner, active, deadline } => {
                if let Some(d) = deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    returner.take();
                    active.take();
                    *deadline = None;
                    return Poll::Ready(Some(Err("upstream request timeout: response body cut".into())));
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
            ResponseBodyProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Local { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
