//! One response body type for every route, without boxing: a static or
//! shared buffer (no per-request allocation), a repeated shared chunk for
//! `/bytes`, the request body itself for `/echo`, and a channel for `/sse`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

pub enum Body {
    /// The whole body at once (taken on the first poll).
    Full(Option<Bytes>),
    /// `remaining` bytes made of slices of `chunk` (refcounted, no copy).
    Repeat { chunk: Bytes, remaining: u64 },
    /// The request body, streamed back as it arrives.
    Echo(Incoming),
    /// Chunks sent by a task, flushed as they come (server-sent events).
    Stream(mpsc::Receiver<Bytes>),
}

impl Body {
    pub fn empty() -> Self {
        Body::Full(None)
    }

    pub fn from_static(s: &'static str) -> Self {
        Body::Full(Some(Bytes::from_static(s.as_bytes())))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Repeat { chunk, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (chunk.len() as u64).min(*remaining) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
            }
            Body::Echo(inc) => Pin::new(inc).poll_frame(cx),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Body::Repeat { remaining, .. } => *remaining == 0,
            Body::Echo(inc) => inc.is_end_stream(),
            Body::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Repeat { remaining, .. } => SizeHint::with_exact(*remaining),
            Body::Echo(inc) => inc.size_hint(),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
