//! Body types that stream through the proxy without buffering.
//!
//! - [`RequestBody`]: the client's body on its way upstream, cut off at
//!   `max_body` bytes.
//! - [`ResponseBody`]: what the client receives: either a short proxy
//!   message or the upstream's body. It owns the request's guards (the
//!   upstream's in-flight count, the connection's activity) and the upstream
//!   connection, so all of them are released exactly when the body has been
//!   sent completely or dropped, and a cleanly finished upstream connection
//!   goes back to its pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::{AccessLog, Entry};
use crate::conn_io::ConnGuard;
use crate::http1::client::Http1Body;
use crate::http1::server::NativeBody;
use crate::metrics::SlotMetrics;
use crate::upstream::{InFlightGuard, Upstream};

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body from the client failed")]
    Client(#[source] BoxError),
}

/// A client's request body, whichever server read the request head: hyper
/// (HTTP/2) or the proxy's own HTTP/1.1 server.
#[derive(Debug)]
pub(crate) enum ClientBody {
    Hyper(Incoming),
    Native(NativeBody),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            ClientBody::Native(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Native(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Native(body) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The client's request body, limited to `limit` bytes while it streams.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: ClientBody,
    remaining: u64,
    limit: u64,
}

impl RequestBody {
    pub(crate) fn new(inner: ClientBody, limit: u64) -> Self {
        RequestBody {
            inner,
            remaining: limit,
            limit,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                            limit: this.limit,
                        })));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of every response the proxy sends to a client.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    kind: Kind,
    /// Marks the client connection busy until the response is done.
    conn: Option<ConnGuard>,
    /// Recorded (metrics, access log) once, when the response has ended.
    exchange: Option<Exchange>,
}

/// One request/response exchange as metrics and the access log see it.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) start: Instant,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    /// Where to count a response the proxy made itself; an upstream's body
    /// counts in its upstream's slot.
    pub(crate) metrics: Option<Arc<SlotMetrics>>,
    /// The request's facts, when the access log is on.
    pub(crate) log: Option<(Box<Entry>, AccessLog)>,
}

impl Exchange {
    /// Counts the ended exchange in the metrics (in `upstream`'s slot when
    /// an upstream answered) and queues its access log line.
    pub(crate) fn record(self, upstream: Option<&Arc<Upstream>>) {
        let elapsed = self.start.elapsed();
        match (upstream, &self.metrics) {
            (Some(upstream), _) => upstream.metrics().record(self.status, elapsed),
            (None, Some(metrics)) => metrics.record(self.status, elapsed),
            (None, None) => {}
        }
        if let Some((mut entry, log)) = self.log {
            entry.status = self.status;
            entry.bytes = self.bytes;
            entry.duration = elapsed;
            if entry.upstream.is_none() {
                entry.upstream = upstream.cloned();
            }
            log.log(entry);
        }
    }
}

#[derive(Debug)]
enum Kind {
    /// A short message generated by the proxy (errors).
    Full(Option<Bytes>),
    /// The upstream's response body, streamed.
    Upstream(UpstreamBody),
}

#[derive(Debug)]
struct UpstreamBody {
    source: Source,
    /// Keeps the upstream's in-flight count up until the body ends.
    in_flight: Option<InFlightGuard>,
    ended: bool,
}

/// Where an upstream body comes from.
#[derive(Debug)]
pub(crate) enum Source {
    /// An HTTP/1.1 connection, owned until the body ends, then recycled.
    Http1(Http1Body),
    /// hyper's HTTP/2 client (h2c upstreams).
    Http2(Incoming),
}

/// Errors of a response body, whichever client read it.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Source {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Source::Http1(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Source::Http2(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Http1(body) => body.is_done(),
            Source::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Http1(body) => body.size_hint(),
            Source::Http2(body) => body.size_hint(),
        }
    }
}

impl UpstreamBody {
    /// Gives the connection back (if the exchange ended cleanly), then
    /// releases the in-flight count. In this order, so that a drain that
    /// sees zero can clear the pool knowing nothing is added to it later.
    fn release(&mut self, clean: bool) {
        // Taken either way: a connection that is not reusable closes now.
        if let Source::Http1(body) = &mut self.source {
            if let (Some(conn), true) = (body.take_reusable(), clean) {
                if let Some(guard) = &self.in_flight {
                    guard.recycle(conn);
                }
            }
        }
        self.in_flight = None;
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let clean = self.ended || self.source.is_end_stream();
        self.release(clean);
    }
}

impl ResponseBody {
    /// A complete body from the proxy itself.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            conn: None,
            exchange: None,
        }
    }

    /// The bytes of a complete body from the proxy itself.
    pub(crate) fn full_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(bytes) => bytes.as_ref(),
            Kind::Upstream(_) => None,
        }
    }

    /// No body (a 101 response).
    pub(crate) fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full(None),
            conn: None,
            exchange: None,
        }
    }

    /// An upstream's body; `in_flight` (and an HTTP/1.1 connection) live
    /// until it ends.
    pub(crate) fn upstream(source: Source, in_flight: InFlightGuard) -> Self {
        ResponseBody {
            kind: Kind::Upstream(UpstreamBody {
                source,
                in_flight: Some(in_flight),
                ended: false,
            }),
            conn: None,
            exchange: None,
        }
    }

    /// Ties the client connection's activity mark to this body.
    pub(crate) fn hold(&mut self, guard: ConnGuard) {
        self.conn = Some(guard);
    }

    /// Records `exchange` when this body ends (or is dropped).
    pub(crate) fn record(&mut self, exchange: Exchange) {
        self.exchange = Some(exchange);
    }

    /// Counts the exchange in the metrics and queues its access log line.
    /// Runs once, before the upstream guards are released.
    fn finish(&mut self) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        let upstream = match &self.kind {
            Kind::Upstream(up) => up.in_flight.as_ref().map(InFlightGuard::upstream),
            Kind::Full(_) => None,
        };
        exchange.record(upstream);
    }

    /// The upstream body ended (`clean`) or failed: releases its guards.
    fn release(&mut self, clean: bool) {
        if let Kind::Upstream(up) = &mut self.kind {
            if clean {
                up.ended = true;
            }
            up.release(clean);
        }
        self.conn = None;
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(exchange), Some(data)) = (&mut self.exchange, frame.data_ref()) {
            exchange.bytes += data.len() as u64;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(bytes) => match bytes.take() {
                Some(bytes) => {
                    let frame = Frame::data(bytes);
                    this.count(&frame);
                    Poll::Ready(Some(Ok(frame)))
                }
                None => {
                    this.finish();
                    this.conn = None;
                    Poll::Ready(None)
                }
            },
            Kind::Upstream(up) => match up.source.poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let ended = up.source.is_end_stream();
                    this.count(&frame);
                    if ended {
                        this.finish();
                        this.release(true);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    this.finish();
                    this.release(true);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish();
                    this.release(false);
                    Poll::Ready(Some(Err(e)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(up) => up.ended || up.source.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) => up.source.size_hint(),
        }
    }
}
