//! The HTTP/1.1 server side: reading request heads, streaming request
//! bodies, writing responses, keep-alive, upgrades, and the client timeouts.
//!
//! hyper serves HTTP/2 (see `server`); HTTP/1.1 connections are served here
//! because a reverse proxy needs less than a general server and pays for
//! the rest on every request and every idle connection:
//!
//! - an idle keep-alive connection holds no buffer at all (TCP: the wait for
//!   the next request needs none), so ten thousand idle clients cost little;
//! - a request head is parsed once (httparse) into `http` types whose header
//!   values share the read buffer;
//! - a response head and a small body go out in one write.
//!
//! # Protocol
//!
//! - Heads up to 64 KiB (else 431) with up to 100 headers; malformed: 400.
//! - Request bodies: `Transfer-Encoding: chunked` (a last coding other than
//!   chunked: 400) or `Content-Length` (conflicting values: 400); none
//!   otherwise. `Expect: 100-continue` is answered when the body will be
//!   read.
//! - Keep-alive: HTTP/1.1 unless `Connection: close`; HTTP/1.0 with
//!   `Connection: keep-alive`. A request whose body was not read to its end
//!   closes the connection after its response.
//! - Responses: `Content-Length` when the body's size is known, else
//!   chunked (HTTP/1.1) or delimited by the close (HTTP/1.0). No body for
//!   HEAD, 1xx, 204 and 304. A `Date` header is added when missing.
//! - Upgrades: after a `101` the connection (with any bytes already read)
//!   goes to the tunnel (`tunnel`).
//! - Timeouts: `header_read_timeout` from a request's first byte until its
//!   head is complete (a slowloris client is closed); `idle_timeout`
//!   between requests; none while a request is being served.
//! - Graceful shutdown: idle connections close at once; a busy one answers
//!   its request with `Connection: close`, then closes.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Sleep;

use crate::body::{ClientBody, ResponseBody};
use crate::conn_io::TimedIo;
use crate::forward::{self, ConnCtx};
use crate::h1::{self, Chunked, Step};
use crate::settings::deadline_after;

/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Headers a request head may have.
const MAX_HEADERS: usize = 100;
/// Read buffer taken when a request starts arriving.
const HEAD_BUFFER: usize = 4096;
/// Bytes asked of the transport per body read.
const BODY_READ: usize = 16 * 1024;
/// Bytes set aside per response for its head (and a small body).
const RESPONSE_BUFFER: usize = 512;
/// A first body frame up to this size is copied behind the response head
/// so that both go out in one write.
const COALESCE: usize = 16 * 1024;

/// A TLS client connection (its handshake ran over the timed socket).
pub(crate) type TlsConn = tokio_rustls::server::TlsStream<TimedIo>;

/// A client connection's transport.
pub(crate) enum ClientIo {
    Tcp(TcpStream),
    Tls(Box<TlsConn>),
}

enum ReadSide {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<Box<TlsConn>>),
}

enum WriteSide {
    Tcp(OwnedWriteHalf),
    Tls(WriteHalf<Box<TlsConn>>),
}

impl ClientIo {
    fn split(self) -> (ReadSide, WriteSide) {
        match self {
            ClientIo::Tcp(stream) => {
                let (r, w) = stream.into_split();
                (ReadSide::Tcp(r), WriteSide::Tcp(w))
            }
            ClientIo::Tls(stream) => {
                let (r, w) = tokio::io::split(stream);
                (ReadSide::Tls(r), WriteSide::Tls(w))
            }
        }
    }

    fn rejoin(read: ReadSide, write: WriteSide) -> Option<ClientIo> {
        match (read, write) {
            (ReadSide::Tcp(r), WriteSide::Tcp(w)) => r.reunite(w).ok().map(ClientIo::Tcp),
            (ReadSide::Tls(r), WriteSide::Tls(w)) => Some(ClientIo::Tls(r.unsplit(w))),
            _ => None,
        }
    }
}

impl ReadSide {
    /// Waits until a read would not block. Needs no buffer on TCP; a TLS
    /// stream may hold decrypted bytes already, so there it returns at once.
    async fn readable(&self) -> io::Result<()> {
        match self {
            ReadSide::Tcp(r) => r.readable().await,
            ReadSide::Tls(_) => Ok(()),
        }
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteSide::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Tcp(w) => w.is_write_vectored(),
            WriteSide::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connection with bytes already read from it: they are read again
/// first.
pub(crate) struct Prefixed<T> {
    pub(crate) prefix: Bytes,
    pub(crate) io: T,
}

/// An upgraded client connection (with what was read past the request).
pub(crate) type Upgraded = Prefixed<ClientIo>;

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Put in a request's extensions when it asks for an upgrade: receives the
/// connection once the `101` has been sent.
/// (Extensions must be `Clone`: the receiver sits in a shared slot.)
#[derive(Clone)]
pub(crate) struct NativeUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl NativeUpgrade {
    pub(crate) fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The reading side of a connection and the bytes read ahead of what was
/// parsed.
struct Reader {
    io: ReadSide,
    buf: BytesMut,
}

/// Where a request body hands the connection back once it was read to its
/// end (the next request can then be read).
type ReaderSlot = Arc<Mutex<Option<Reader>>>;

/// A request body read from the connection while the request is served.
pub(crate) struct NativeBody {
    reader: Option<Reader>,
    state: BodyState,
    slot: ReaderSlot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Exact(u64),
    Chunked(Chunked),
    Done,
}

impl std::fmt::Debug for NativeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeBody")
            .field("state", &self.state)
            .finish()
    }
}

impl NativeBody {
    /// The body was read to its end: the connection goes back at once (the
    /// upstream client may never poll an ended body again).
    fn done(&mut self) {
        self.state = BodyState::Done;
        if let Some(reader) = self.reader.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(reader);
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        // The connection is out of step: it closes after the response.
        self.reader = None;
        self.state = BodyState::Done;
        Poll::Ready(Some(Err(e)))
    }
}

/// Reads more of the connection into the reader's buffer; `Ok(0)` at EOF.
fn poll_fill(reader: &mut Reader, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if reader.buf.capacity() - reader.buf.len() < BODY_READ / 4 {
        reader.buf.reserve(BODY_READ);
    }
    let read = reader.io.read_buf(&mut reader.buf);
    pin!(read).poll(cx)
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the client closed the connection before the end of the request body",
    )
}

impl Body for NativeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state {
                BodyState::Done | BodyState::Exact(0) => {
                    this.done();
                    return Poll::Ready(None);
                }
                BodyState::Exact(remaining) => {
                    if !reader.buf.is_empty() {
                        let (data, left) = h1::split_body_part(&mut reader.buf, remaining);
                        this.state = BodyState::Exact(left);
                        if this.state == BodyState::Exact(0) {
                            this.done();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(poll_fill(reader, cx)) {
                        Ok(0) => return this.fail(truncated()),
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    }
                }
                BodyState::Chunked(chunked) => match h1::step_chunked(chunked, &mut reader.buf) {
                    Ok(Step::Data(data, next)) => {
                        this.state = BodyState::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Next(next)) => this.state = BodyState::Chunked(next),
                    Ok(Step::Trailers(trailers)) => {
                        this.done();
                        if !trailers.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => match ready!(poll_fill(reader, cx)) {
                        Ok(0) => return this.fail(truncated()),
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    },
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Exact(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Exact(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) => SizeHint::default(),
        }
    }
}

/// Why a request head could not be read; answered with the status, then
/// the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadHead {
    Malformed,
    TooLarge,
    BadFraming,
}

impl BadHead {
    fn status(self) -> StatusCode {
        match self {
            BadHead::Malformed | BadHead::BadFraming => StatusCode::BAD_REQUEST,
            BadHead::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}

/// A parsed request head and what the connection needs to know about it.
struct Head {
    request: Request<()>,
    body: RequestFraming,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    None,
    Exact(u64),
    Chunked,
}

/// Facts about a head's headers, noted while parsing.
#[derive(Default)]
struct Facts {
    content_lengths: u8,
    content_length: Option<u64>,
    transfer_encoding: bool,
    connection: bool,
    upgrade: bool,
    expect: bool,
}

/// Parses a complete request head at the front of `buf` (consuming it), or
/// `None` if more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, BadHead> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(BadHead::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(BadHead::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(BadHead::TooLarge),
        Err(_) => return Err(BadHead::Malformed),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| BadHead::Malformed)?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let path = parsed.path.unwrap_or("");
    let path_span = (path.as_ptr() as usize - base, path.len());
    let count = parsed.headers.len();
    let mut facts = Facts::default();
    let mut spans = Vec::with_capacity(count);
    for header in parsed.headers.iter() {
        note(&mut facts, header.name, header.value);
        spans.push((
            header.name.as_ptr() as usize - base,
            header.name.len(),
            header.value.as_ptr() as usize - base,
            header.value.len(),
        ));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_span.0..path_span.0 + path_span.1))
        .map_err(|_| BadHead::Malformed)?;
    // Room for the headers the proxy may add.
    let mut headers = HeaderMap::with_capacity(count + 2);
    for (name_at, name_len, value_at, value_len) in spans {
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| BadHead::Malformed)?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| BadHead::Malformed)?;
        headers.append(name, value);
    }

    let body = if facts.transfer_encoding {
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        if !chunked || version == Version::HTTP_10 {
            return Err(BadHead::BadFraming);
        }
        RequestFraming::Chunked
    } else {
        match (facts.content_lengths, facts.content_length) {
            (0, _) => RequestFraming::None,
            (1, Some(0)) => RequestFraming::None,
            (1, Some(n)) => RequestFraming::Exact(n),
            _ => {
                let mut length = None;
                for value in headers.get_all(CONTENT_LENGTH) {
                    for part in value.to_str().unwrap_or("x").split(',') {
                        let n: u64 = part.trim().parse().map_err(|_| BadHead::BadFraming)?;
                        if length.is_some_and(|l| l != n) {
                            return Err(BadHead::BadFraming);
                        }
                        length = Some(n);
                    }
                }
                match length {
                    Some(0) | None => RequestFraming::None,
                    Some(n) => RequestFraming::Exact(n),
                }
            }
        }
    };
    let keep_alive = match version {
        Version::HTTP_10 => {
            facts.connection && crate::headers::connection_has(&headers, "keep-alive")
        }
        _ => !(facts.connection && crate::headers::connection_has(&headers, "close")),
    } && !(facts.transfer_encoding && facts.content_lengths > 0);
    let expect_continue = facts.expect
        && body != RequestFraming::None
        && headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = facts.upgrade
        && version == Version::HTTP_11
        && facts.connection
        && crate::headers::connection_has(&headers, "upgrade");

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        body,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

fn note(facts: &mut Facts, name: &str, value: &[u8]) {
    let is = |known: &str| name.len() == known.len() && name.eq_ignore_ascii_case(known);
    match name.len() {
        14 if is("content-length") => {
            facts.content_lengths = facts.content_lengths.saturating_add(1);
            facts.content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        17 if is("transfer-encoding") => facts.transfer_encoding = true,
        10 if is("connection") => facts.connection = true,
        7 if is("upgrade") => facts.upgrade = true,
        6 if is("expect") => facts.expect = true,
        _ => {}
    }
}

/// What the response writer needs to know about the request.
struct Asked {
    head_method: bool,
    version: Version,
    keep_alive: bool,
}

/// Serves HTTP/1.1 requests on `io` until the client closes, a timeout
/// passes, or shutdown is asked. `prefix`: bytes already read from it.
pub(crate) async fn serve(
    io: ClientIo,
    prefix: BytesMut,
    ctx: Arc<ConnCtx>,
    mut stopped: watch::Receiver<bool>,
) {
    let settings = ctx.shared.settings;
    let (read, mut write) = io.split();
    let mut reader = Reader {
        io: read,
        buf: prefix,
    };
    let mut timer = Box::pin(tokio::time::sleep_until(deadline_after(
        settings.header_read_timeout,
    )));
    let mut first = true;
    loop {
        let head = match read_head(&mut reader, &mut timer, first, &ctx, &mut stopped).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(bad) => {
                let _ = write_error(&mut write, bad.status()).await;
                return;
            }
        };
        first = false;
        // Boxed: what serving a request needs is large, and only exists
        // while one is served; an idle connection's task stays small.
        let served = Box::pin(serve_request(head, reader, write, &ctx, &stopped)).await;
        let Some((back, same)) = served else {
            return;
        };
        reader = back;
        write = same;
        if reader.buf.is_empty() {
            // An idle connection keeps no buffer.
            reader.buf = BytesMut::new();
        }
    }
}

/// Serves one request whose head was read: its body is read from `reader`
/// while the request is forwarded, and the response written to `write`.
/// Returns both when the connection goes on with another request.
async fn serve_request(
    head: Head,
    reader: Reader,
    mut write: WriteSide,
    ctx: &Arc<ConnCtx>,
    stopped: &watch::Receiver<bool>,
) -> Option<(Reader, WriteSide)> {
    let Head {
        request,
        body: framing,
        keep_alive,
        expect_continue,
        upgrade,
    } = head;
    let asked = Asked {
        head_method: request.method() == Method::HEAD,
        version: request.version(),
        keep_alive,
    };
    let (parts, ()) = request.into_parts();

    // The body reads from the connection while the request is served.
    let slot: Option<ReaderSlot>;
    let mut held = None;
    let body = match framing {
        RequestFraming::None => {
            held = Some(reader);
            slot = None;
            ClientBody::Empty
        }
        framing => {
            if expect_continue
                && write
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return None;
            }
            let shared: ReaderSlot = Arc::new(Mutex::new(None));
            slot = Some(shared.clone());
            ClientBody::Native(NativeBody {
                reader: Some(reader),
                state: match framing {
                    RequestFraming::Exact(n) => BodyState::Exact(n),
                    _ => BodyState::Chunked(Chunked::Size),
                },
                slot: shared,
            })
        }
    };
    let mut request = Request::from_parts(parts, body);
    let mut upgraded_tx = None;
    if upgrade && held.is_some() {
        let (tx, rx) = oneshot::channel();
        request
            .extensions_mut()
            .insert(NativeUpgrade(Arc::new(Mutex::new(Some(rx)))));
        upgraded_tx = Some(tx);
    }

    let active = ctx.activity.begin();
    let response = forward::handle(Arc::clone(ctx), active, request).await;
    let closing = *stopped.borrow();
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // Room for a typical response head and a small body in one write.
    let mut out = Vec::with_capacity(RESPONSE_BUFFER);
    let keep = match write_response(&mut write, &mut out, response, &asked, closing).await {
        Ok(keep) => keep,
        Err(e) => {
            tracing::debug!(error = %e, "writing a response to the client failed");
            return None;
        }
    };
    if switching {
        if let (Some(tx), Some(reader)) = (upgraded_tx.take(), held.take()) {
            if let Some(io) = ClientIo::rejoin(reader.io, write) {
                let _ = tx.send(Upgraded {
                    prefix: reader.buf.freeze(),
                    io,
                });
            }
        }
        return None;
    }
    // The next request needs the connection back from the body; a body
    // not read to its end leaves the connection out of step: close.
    let back = match (held, slot) {
        (Some(reader), _) => Some(reader),
        (None, Some(slot)) => slot.lock().unwrap_or_else(PoisonError::into_inner).take(),
        (None, None) => None,
    };
    let (true, Some(back)) = (keep, back) else {
        let _ = write.shutdown().await;
        return None;
    };
    Some((back, write))
}

/// Waits for and reads the next request head. `Ok(None)`: the connection
/// is done (EOF, idle or header timeout, shutdown while idle).
async fn read_head(
    reader: &mut Reader,
    timer: &mut Pin<Box<Sleep>>,
    first: bool,
    ctx: &ConnCtx,
    stopped: &mut watch::Receiver<bool>,
) -> Result<Option<Head>, BadHead> {
    let settings = &ctx.shared.settings;
    // A first request (or pipelined bytes already here) starts the header
    // clock at once; otherwise the idle clock runs until the first byte, and
    // the header clock only if that byte did not bring a whole head (moving
    // a deadline earlier costs a timer re-registration; later is cheap).
    let mut header_clock = first || !reader.buf.is_empty();
    timer.as_mut().reset(deadline_after(if header_clock {
        settings.header_read_timeout
    } else {
        settings.idle_timeout
    }));
    loop {
        if !reader.buf.is_empty() {
            if let Some(head) = parse_head(&mut reader.buf)? {
                return Ok(Some(head));
            }
            if !header_clock {
                header_clock = true;
                timer
                    .as_mut()
                    .reset(deadline_after(settings.header_read_timeout));
            }
        } else if !header_clock {
            // Idle: wait without a buffer.
            tokio::select! {
                biased;
                ready = reader.io.readable() => if ready.is_err() { return Ok(None) },
                () = timer.as_mut() => return Ok(None),
                _ = stopped.wait_for(|stop| *stop) => return Ok(None),
            }
        }
        if reader.buf.capacity() - reader.buf.len() < 1024 {
            reader.buf.reserve(HEAD_BUFFER);
        }
        let read = tokio::select! {
            biased;
            read = reader.io.read_buf(&mut reader.buf) => read,
            () = timer.as_mut() => {
                if header_clock {
                    tracing::debug!("client did not send a complete request head in time");
                }
                return Ok(None);
            }
        };
        if matches!(read, Ok(0) | Err(_)) {
            return Ok(None);
        }
    }
}

/// A minimal response for a request that could not be read; the connection
/// closes after it.
async fn write_error(write: &mut WriteSide, status: StatusCode) -> io::Result<()> {
    let reason = status.canonical_reason().unwrap_or("");
    let body = format!("cutover: {reason}\n");
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    h1::header_line(&mut out, b"content-type", b"text/plain; charset=utf-8");
    h1::header_line(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    date_line(&mut out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Writes a response head and streams its body. Returns whether the
/// connection stays open for another request.
async fn write_response(
    write: &mut WriteSide,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    asked: &Asked,
    closing: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodyless = asked.head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let chunked = !bodyless && exact.is_none() && asked.version == Version::HTTP_11;
    let mut close = !asked.keep_alive
        || closing
        || crate::headers::connection_has(&parts.headers, "close")
        || (!bodyless && exact.is_none() && !chunked);
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        close = false;
    }

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if *name == CONNECTION && !switching {
            continue;
        }
        if *name == CONTENT_LENGTH
            && !(bodyless && status != StatusCode::NO_CONTENT && !status.is_informational())
        {
            // Written below from the body's actual size.
            continue;
        }
        if *name == TRANSFER_ENCODING {
            continue;
        }
        has_date |= *name == DATE;
        h1::header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !bodyless {
        match exact {
            Some(n) => h1::header_line(out, b"content-length", itoa(n, &mut [0u8; 20])),
            None if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {}
        }
    }
    if !has_date {
        date_line(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if asked.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if bodyless {
        write.write_all(out).await?;
        drop(body);
        return Ok(!close);
    }
    // The first frame, if it is already there, goes out with the head.
    match body.frame().now_or_never() {
        // Nothing yet (a stream that has not started): the head now, so that
        // the client sees the response begin.
        None => write.write_all(out).await?,
        Some(None) => {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            write.write_all(out).await?;
            return Ok(!close);
        }
        Some(Some(Err(e))) => return Err(body_error(e)),
        Some(Some(Ok(frame))) => match frame.data_ref() {
            Some(data) if data.len() <= COALESCE => {
                if chunked && !data.is_empty() {
                    chunk_header(out, data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(data);
                }
                let ended = body.is_end_stream();
                if ended && chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                write.write_all(out).await?;
                if ended {
                    drop(body);
                    return Ok(!close);
                }
            }
            Some(data) => {
                write.write_all(out).await?;
                write_data(write, out, data, chunked).await?;
            }
            // Trailers: HTTP/1.1 clients get none.
            None => write.write_all(out).await?,
        },
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(body_error)?;
        if let Some(data) = frame.data_ref() {
            write_data(write, out, data, chunked).await?;
        }
    }
    if chunked {
        write.write_all(b"0\r\n\r\n").await?;
    }
    Ok(!close)
}

fn body_error(e: crate::body::BoxError) -> io::Error {
    io::Error::other(e)
}

/// One body frame: as is, or as a chunk.
async fn write_data(
    write: &mut WriteSide,
    scratch: &mut Vec<u8>,
    data: &Bytes,
    chunked: bool,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if !chunked {
        return write.write_all(data).await;
    }
    scratch.clear();
    chunk_header(scratch, data.len());
    let parts = [
        IoSlice::new(scratch),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    write_all_vectored(write, &parts).await
}

fn chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// Writes all of `parts`, in as few writes as the transport allows.
async fn write_all_vectored(write: &mut WriteSide, parts: &[IoSlice<'_>]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        // Rebuild the slices past what was written.
        let mut skip = written;
        let mut rest: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            rest.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
        let n = poll_fn(|cx| Pin::new(&mut *write).poll_write_vectored(cx, &rest)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// Decimal digits of `n`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

thread_local! {
    /// `date: <IMF-fixdate>\r\n` for the current second.
    static DATE_LINE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Appends a `Date` header for now (formatted once per second per thread).
fn date_line(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_LINE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            cached.1.extend_from_slice(b"date: ");
            crate::access_log::http_date(&mut cached.1, now);
            cached.1.extend_from_slice(b"\r\n");
            cached.0 = secs;
        }
        out.extend_from_slice(&cached.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Head>, BadHead> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf)
    }

    #[test]
    fn request_heads_parse_with_their_body_framing_and_keep_alive() {
        let head = parse("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.request.uri(), "/a?b");
        assert_eq!(head.body, RequestFraming::None);
        assert!(head.keep_alive);
        let head = parse("POST / HTTP/1.1\r\ncontent-length: 5\r\nconnection: close\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.body, RequestFraming::Exact(5));
        assert!(!head.keep_alive);
        let head =
            parse("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert_eq!(head.body, RequestFraming::Chunked);
        assert!(head.expect_continue);
        let head = parse("GET / HTTP/1.0\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!head.keep_alive);
        let head = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(head.keep_alive);
        let head = parse("GET /ws HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(head.upgrade);
        assert!(
            parse("GET / HTTP/1.1\r\nHost: x\r\n")
                .expect("valid")
                .is_none(),
            "partial"
        );
    }

    #[test]
    fn bad_heads_are_refused_with_the_fitting_status() {
        assert_eq!(
            parse("NOT A REQUEST\r\n\r\n").err(),
            Some(BadHead::Malformed)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n").err(),
            Some(BadHead::BadFraming)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").err(),
            Some(BadHead::BadFraming)
        );
        let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&huge).err(), Some(BadHead::TooLarge));
        let whole = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&whole).err(), Some(BadHead::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(),
            Some(BadHead::TooLarge)
        );
    }

    #[test]
    fn numbers_and_dates_are_formatted_for_heads() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1_048_576, &mut [0; 20]), b"1048576");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut out = Vec::new();
        date_line(&mut out);
        let line = String::from_utf8(out).expect("ascii");
        assert!(
            line.starts_with("date: ") && line.ends_with(" GMT\r\n"),
            "{line}"
        );
    }
}
