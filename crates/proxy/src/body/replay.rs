//! A request body that can be sent again: frames are kept (up to a cap) as the first attempt
//! streams them, and a retry replays them before reading on from the client. When the body
//! outgrows the cap the copy is dropped and no further attempt can be made (flag RBX); the
//! attempt in progress is unaffected. Nothing is buffered before it is sent.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::{BoxError, ClientBody};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

#[derive(Debug)]
struct Shared {
    frames: Vec<Bytes>,
    bytes: usize,
    overflowed: bool,
    /// The client's body while no attempt is reading it.
    source: Option<ClientBody>,
    trailers: Option<HeaderMap>,
    done: bool,
}

/// One attempt's view of a replayable body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Frames of `shared.frames` this attempt has sent.
    pos: usize,
    /// The client's body, while this attempt reads it.
    source: Option<ClientBody>,
    max: usize,
    hint: SizeHint,
    trailers_sent: bool,
}

impl ReplayBody {
    /// Wraps the client's body; at most `max` bytes are kept for replay.
    pub fn new(body: ClientBody, max: usize) -> Self {
        let hint = body.size_hint();
        let shared =
            Shared { frames: Vec::new(), bytes: 0, overflowed: false, source: Some(body), trailers: None, done: false };
        ReplayBody { shared: Arc::new(Mutex::new(shared)), pos: 0, source: None, max, hint, trailers_sent: false }
    }

    /// A fresh view for another attempt; `None` when the body outgrew the replay buffer.
    pub fn try_clone(&self) -> Option<ReplayBody> {
        let shared = self.shared.lock().ok()?;
        if shared.overflowed {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            source: None,
            max: self.max,
            hint: self.hint,
            trailers_sent: false,
        })
    }

    /// True when the body grew past the replay buffer.
    pub fn overflowed(&self) -> bool {
        self.shared.lock().map(|s| s.overflowed).unwrap_or(true)
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(source) = self.source.take()
            && let Ok(mut shared) = self.shared.lock()
        {
            shared.source = Some(source);
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        {
            let Ok(mut shared) = this.shared.lock() else {
                return Poll::Ready(Some(Err("replay buffer poisoned".into())));
            };
            if this.pos < shared.frames.len() {
                let data = shared.frames[this.pos].clone();
                this.pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if shared.done && this.source.is_none() {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(t) = shared.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                return Poll::Ready(None);
            }
            if this.source.is_none() {
                this.source = shared.source.take();
            }
            if this.source.is_none() {
                return Poll::Ready(Some(Err("request body is held by another attempt".into())));
            }
        }
        let Some(source) = this.source.as_mut() else { return Poll::Ready(None) };
        let frame = match Pin::new(source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(f) => f,
        };
        let Ok(mut shared) = this.shared.lock() else {
            return Poll::Ready(Some(Err("replay buffer poisoned".into())));
        };
        match frame {
            None => {
                shared.done = true;
                if let Some(s) = this.source.take() {
                    shared.source = Some(s);
                }
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !shared.overflowed {
                        if shared.bytes + data.len() <= this.max {
                            shared.bytes += data.len();
                            shared.frames.push(data.clone());
                            this.pos = shared.frames.len();
                        } else {
                            shared.overflowed = true;
                            shared.frames = Vec::new();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    shared.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .lock()
            .map(|s| s.done && self.pos >= s.frames.len() && self.trailers_sent && self.source.is_none())
            .unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
