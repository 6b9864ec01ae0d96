//! A lean HTTP/1.1 client for the proxy's hot path: bodiless idempotent
//! requests (GET, HEAD, OPTIONS, DELETE, PUT without a body…), which is what
//! almost all traffic is.
//!
//! hyper's client connection runs in its own task and hands requests and
//! responses over channels; for a proxy that is two task hand-offs and a
//! second copy of the header machinery per request. Here the request future
//! itself writes the request head and reads the response head on a pooled
//! `TcpStream`, and the response body reads straight from that stream while
//! the client is sent what arrived (no buffering beyond one read).
//!
//! Requests with a body and upgrades still go through hyper (`pool.rs`): a
//! body must be sent while the response may already be coming, which is
//! what hyper's connection task is for.
//!
//! Response framing follows RFC 9112 section 6.3: no body for HEAD, 1xx,
//! 204 and 304; `Transfer-Encoding: chunked` (trailers are passed on);
//! `Content-Length`; otherwise the body ends when the connection closes.
//! A connection goes back to the pool only after a complete response whose
//! framing allows reuse, with nothing unexpected left in its buffer.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::settings::deadline_after;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Headers a response head may have.
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line or trailer section.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;

/// One keep-alive HTTP/1.1 connection to an upstream.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet used.
    buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    head: Vec<u8>,
    /// Response timeout; reset per request. Moving a deadline later is an
    /// atomic store in tokio's timer, not a re-registration.
    timer: Pin<Box<Sleep>>,
    /// Requests sent on this connection so far.
    pub(crate) used: u64,
}

/// A response head, and the connection its body will be read from.
pub(crate) struct Exchanged {
    pub(crate) head: Response<()>,
    pub(crate) framing: Framing,
    /// The head has hop-by-hop headers to strip.
    pub(crate) hop_by_hop: bool,
    pub(crate) conn: Box<Conn>,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The connection ended (EOF, reset, broken pipe) before any byte of a
    /// response: the request may be replayed if idempotent.
    #[error("the connection closed before a response")]
    ClosedBeforeResponse(#[source] Option<io::Error>),
    #[error("reading or writing the upstream connection failed")]
    Io(#[source] io::Error),
    #[error("the upstream sent an invalid response: {0}")]
    Invalid(&'static str),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Box<Conn> {
        Box::new(Conn {
            stream,
            buf: BytesMut::new(),
            head: Vec::with_capacity(512),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            used: 0,
        })
    }

    /// Sends a bodiless request and reads the response head.
    pub(crate) async fn exchange<H: Head>(
        mut self: Box<Self>,
        req: &H,
        timeout: Duration,
    ) -> Result<Exchanged, ExchangeError> {
        self.used += 1;
        self.head.clear();
        req.encode(&mut self.head);
        if let Err(e) = self.stream.write_all(&self.head).await {
            return Err(closed_or_io(e, true));
        }
        self.timer.as_mut().reset(deadline_after(timeout));
        let head_only = *req.method() == Method::HEAD;
        loop {
            match self.read_head(timeout).await? {
                Parsed::Informational => continue,
                Parsed::Head(response, facts) => {
                    let framing = framing(&response, &facts, head_only)?;
                    return Ok(Exchanged {
                        head: response,
                        framing,
                        hop_by_hop: facts.hop_by_hop,
                        conn: self,
                    });
                }
            }
        }
    }

    /// Reads until a complete response head is buffered, then parses it.
    async fn read_head(&mut self, timeout: Duration) -> Result<Parsed, ExchangeError> {
        let mut received = !self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf)? {
                    Some(parsed) => return Ok(parsed),
                    None if self.buf.len() > MAX_HEAD => {
                        return Err(ExchangeError::Invalid("response head too large"))
                    }
                    None => {}
                }
            }
            let read = poll_fn(|cx| {
                if self.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(ExchangeError::Timeout(timeout)));
                }
                read_more(&mut self.stream, &mut self.buf, cx)
                    .map_err(|e| closed_or_io(e, !received))
            })
            .await?;
            if read == 0 {
                return Err(if received {
                    ExchangeError::Invalid("connection closed in the middle of the response head")
                } else {
                    ExchangeError::ClosedBeforeResponse(None)
                });
            }
            received = true;
        }
    }
}

/// An I/O error: before any response byte, a close of the connection is
/// `ClosedBeforeResponse` (replayable).
fn closed_or_io(e: io::Error, before_response: bool) -> ExchangeError {
    let closed = matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    );
    if closed && before_response {
        ExchangeError::ClosedBeforeResponse(Some(e))
    } else {
        ExchangeError::Io(e)
    }
}

/// Reads what is available into `buf`; `Ok(0)` on EOF.
///
/// Through `poll_read` on purpose: a read that does not fill the buffer
/// clears the socket's readiness (epoll is edge-triggered), so the next
/// exchange on this connection waits for its response to be announced
/// instead of first trying a read that finds nothing.
fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    let read = stream.read_buf(buf);
    std::pin::pin!(read).poll(cx)
}

/// A bodiless request head that can write itself out.
pub(crate) trait Head {
    fn method(&self) -> &Method;
    /// Appends `METHOD target HTTP/1.1\r\n`, the headers and the empty line.
    fn encode(&self, out: &mut Vec<u8>);
}

impl Head for Request<()> {
    fn method(&self) -> &Method {
        Request::method(self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        request_line(out, self.method(), self.uri());
        for (name, value) in self.headers() {
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        end_head(
            out,
            self.method(),
            self.headers().contains_key(CONTENT_LENGTH),
        );
    }
}

/// `GET /path HTTP/1.1\r\n`
pub(crate) fn request_line(out: &mut Vec<u8>, method: &Method, uri: &http::Uri) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// `name: value\r\n`
pub(crate) fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The empty line ending a head; a method that usually has a body but has
/// none here says so first.
pub(crate) fn end_head(out: &mut Vec<u8>, method: &Method, has_length: bool) {
    if !has_length && matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

enum Parsed {
    /// A 1xx other than 101: skipped.
    Informational,
    Head(Response<()>, Facts),
}

/// What the header names of a response head say, noted while parsing so
/// that framing and hop-by-hop stripping need no map lookups when the
/// headers concerned are absent (the usual case).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    connection: bool,
    transfer_encoding: bool,
    /// `Content-Length` headers seen, and the value of the single one.
    content_lengths: u8,
    content_length: Option<u64>,
    /// Any hop-by-hop header (they are stripped before the client).
    pub(crate) hop_by_hop: bool,
}

impl Facts {
    fn note(&mut self, name: &str, value: &[u8]) {
        let is = |known: &str| name.len() == known.len() && name.eq_ignore_ascii_case(known);
        if is("content-length") {
            self.content_lengths = self.content_lengths.saturating_add(1);
            self.content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if is("connection") {
            self.connection = true;
            self.hop_by_hop = true;
        } else if is("transfer-encoding") {
            self.transfer_encoding = true;
            self.hop_by_hop = true;
        } else if is("keep-alive")
            || is("proxy-connection")
            || is("te")
            || is("trailer")
            || is("upgrade")
            || is("proxy-authorization")
        {
            self.hop_by_hop = true;
        }
    }
}

/// Headers up to which a head's value positions are kept on the stack.
const STACK_HEADERS: usize = 32;

/// Parses a complete head at the front of `buf` (consuming it), or `None`
/// if more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, ExchangeError> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Invalid("too many response headers"))
        }
        Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
    };
    let code = parsed.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Invalid("invalid status code"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Invalid(
                "switched protocols without being asked to",
            ));
        }
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    // Header values share the head's bytes (no copy): note where each one
    // is (names and values as offsets), then split the head off the buffer.
    let base = buf.as_ptr() as usize;
    let count = parsed.headers.len();
    let mut facts = Facts::default();
    let mut on_stack = [(0u32, 0u32, 0u32, 0u32); STACK_HEADERS];
    let mut on_heap = Vec::new();
    for (i, header) in parsed.headers.iter().enumerate() {
        facts.note(header.name, header.value);
        let span = (
            (header.name.as_ptr() as usize - base) as u32,
            header.name.len() as u32,
            (header.value.as_ptr() as usize - base) as u32,
            header.value.len() as u32,
        );
        match on_stack.get_mut(i) {
            Some(slot) => *slot = span,
            None => on_heap.push(span),
        }
    }
    let head = buf.split_to(len).freeze();
    // Room for the headers the proxy adds (X-Request-Id, a cookie).
    let mut map = HeaderMap::with_capacity(count + 4);
    let spans = on_stack[..count.min(STACK_HEADERS)]
        .iter()
        .chain(on_heap.iter());
    for &(name_at, name_len, value_at, value_len) in spans {
        let (name_at, value_at) = (name_at as usize, value_at as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
            .map_err(|_| ExchangeError::Invalid("invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len as usize))
                .map_err(|_| ExchangeError::Invalid("invalid header value"))?;
        map.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some(Parsed::Head(response, facts)))
}

/// How the body of a response is delimited, and whether the connection may
/// carry another exchange afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    pub(crate) length: Length,
    pub(crate) reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    Empty,
    Exact(u64),
    Chunked,
    UntilClose,
}

fn framing(
    response: &Response<()>,
    facts: &Facts,
    head_request: bool,
) -> Result<Framing, ExchangeError> {
    let headers = response.headers();
    let status = response.status();
    let keep_alive = match response.version() {
        Version::HTTP_10 => {
            facts.connection && crate::headers::connection_has(headers, "keep-alive")
        }
        _ => !(facts.connection && crate::headers::connection_has(headers, "close")),
    };
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing {
            length: Length::Empty,
            reusable: keep_alive,
        });
    }
    if facts.transfer_encoding {
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing {
                length: Length::Chunked,
                reusable: keep_alive,
            }
        } else {
            Framing {
                length: Length::UntilClose,
                reusable: false,
            }
        });
    }
    let length = match (facts.content_lengths, facts.content_length) {
        (0, _) => None,
        (1, Some(n)) => Some(n),
        // Several, or a list: all must agree.
        _ => {
            let mut length = None;
            for value in headers.get_all(CONTENT_LENGTH) {
                for part in value.to_str().unwrap_or("x").split(',') {
                    let n: u64 = part
                        .trim()
                        .parse()
                        .map_err(|_| ExchangeError::Invalid("invalid content-length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(ExchangeError::Invalid("conflicting content-length"));
                    }
                    length = Some(n);
                }
            }
            length
        }
    };
    Ok(match length {
        Some(0) => Framing {
            length: Length::Empty,
            reusable: keep_alive,
        },
        Some(n) => Framing {
            length: Length::Exact(n),
            reusable: keep_alive,
        },
        None => Framing {
            length: Length::UntilClose,
            reusable: false,
        },
    })
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section after the last chunk.
    Trailers,
}

/// A response body read from a lean connection. When it ends cleanly and
/// the connection may be reused, `on_reusable` gets the connection back.
pub(crate) struct LeanBody {
    conn: Option<Box<Conn>>,
    state: BodyState,
    reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Exact(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl std::fmt::Debug for LeanBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanBody")
            .field("state", &self.state)
            .finish()
    }
}

impl LeanBody {
    pub(crate) fn new(conn: Box<Conn>, framing: Framing) -> LeanBody {
        let state = match framing.length {
            Length::Empty => BodyState::Done,
            Length::Exact(n) => BodyState::Exact(n),
            Length::Chunked => BodyState::Chunked(Chunked::Size),
            Length::UntilClose => BodyState::UntilClose,
        };
        LeanBody {
            conn: Some(conn),
            state,
            reusable: framing.reusable,
        }
    }

    /// The connection, if the body ended cleanly and it may be reused.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<Conn>> {
        let clean = self.state == BodyState::Done && self.reusable;
        let conn = self.conn.take()?;
        // Bytes after the response: the upstream is out of step; do not reuse.
        (clean && conn.buf.is_empty()).then_some(conn)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == BodyState::Done
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.state = BodyState::Done;
        self.reusable = false;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

/// The part of a body of `remaining` bytes that is in `buf` (not empty),
/// and how many bytes of the body are left after it.
pub(crate) fn split_body_part(buf: &mut BytesMut, remaining: u64) -> (Bytes, u64) {
    let n = buf
        .len()
        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
    (buf.split_to(n).freeze(), remaining - n as u64)
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn premature() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the upstream closed the connection before the end of the response body",
    )
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Exact(remaining) => {
                    if !conn.buf.is_empty() {
                        let (data, left) = split_body_part(&mut conn.buf, remaining);
                        this.state = if left == 0 {
                            BodyState::Done
                        } else {
                            BodyState::Exact(left)
                        };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(read_more(&mut conn.stream, &mut conn.buf, cx)) {
                        Ok(0) => return this.fail(premature()),
                        Ok(_) => continue,
                        Err(e) => return this.fail(e),
                    }
                }
                BodyState::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(read_more(&mut conn.stream, &mut conn.buf, cx)) {
                        Ok(0) => {
                            this.state = BodyState::Done;
                            this.reusable = false;
                            return Poll::Ready(None);
                        }
                        Ok(_) => continue,
                        Err(e) => return this.fail(e),
                    }
                }
                BodyState::Chunked(chunked) => match step_chunked(chunked, &mut conn.buf) {
                    Ok(Step::Data(data, next)) => {
                        this.state = BodyState::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Next(next)) => this.state = BodyState::Chunked(next),
                    Ok(Step::Trailers(trailers)) => {
                        this.state = BodyState::Done;
                        if !trailers.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {
                        match ready!(read_more(&mut conn.stream, &mut conn.buf, cx)) {
                            Ok(0) => return this.fail(premature()),
                            Ok(_) => continue,
                            Err(e) => return this.fail(e),
                        }
                    }
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Exact(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

pub(crate) enum Step {
    Data(Bytes, Chunked),
    Next(Chunked),
    Trailers(HeaderMap),
    NeedMore,
}

/// One step of the chunked decoder over the buffered bytes.
pub(crate) fn step_chunked(state: Chunked, buf: &mut BytesMut) -> io::Result<Step> {
    match state {
        Chunked::Size => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(invalid("chunk size line too long"));
                }
                return Ok(Step::NeedMore);
            };
            let line = &buf[..end];
            // `1a;name=value`: extensions are ignored.
            let digits = line.split(|b| *b == b';').next().unwrap_or_default();
            let digits = digits.trim_ascii();
            if digits.is_empty() || digits.len() > 16 {
                return Err(invalid("invalid chunk size"));
            }
            let mut size: u64 = 0;
            for &d in digits {
                let v = match d {
                    b'0'..=b'9' => d - b'0',
                    b'a'..=b'f' => d - b'a' + 10,
                    b'A'..=b'F' => d - b'A' + 10,
                    _ => return Err(invalid("invalid chunk size")),
                };
                size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(v)))
                    .ok_or_else(|| invalid("chunk size overflows"))?;
            }
            buf.advance(end + 2);
            Ok(Step::Next(if size == 0 {
                Chunked::Trailers
            } else {
                Chunked::Data(size)
            }))
        }
        Chunked::Data(remaining) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let left = remaining - n as u64;
            Ok(Step::Data(
                data,
                if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                },
            ))
        }
        Chunked::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("missing CRLF after chunk data"));
            }
            buf.advance(2);
            Ok(Step::Next(Chunked::Size))
        }
        Chunked::Trailers => {
            // The trailer section ends with an empty line.
            let end = if buf.starts_with(b"\r\n") {
                Some(0)
            } else {
                buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2)
            };
            let Some(end) = end else {
                if buf.len() > MAX_TRAILERS {
                    return Err(invalid("trailer section too large"));
                }
                return Ok(Step::NeedMore);
            };
            let section = buf.split_to(end + 2).freeze();
            let mut trailers = HeaderMap::new();
            for line in section[..end].split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    continue;
                }
                let Some(colon) = line.iter().position(|b| *b == b':') else {
                    return Err(invalid("malformed trailer"));
                };
                let name = HeaderName::from_bytes(&line[..colon])
                    .map_err(|_| invalid("invalid trailer name"))?;
                let value = HeaderValue::from_maybe_shared(
                    section.slice_ref(line[colon + 1..].trim_ascii()),
                )
                .map_err(|_| invalid("invalid trailer value"))?;
                trailers.append(name, value);
            }
            Ok(Step::Trailers(trailers))
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Whether a request can take the lean path: no body, no upgrade, and a
/// method that may be repeated if a reused connection closes under it.
pub(crate) fn eligible(method: &Method, body_done: bool) -> bool {
    body_done
        && matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::DELETE
                | Method::TRACE
                | Method::PUT
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8], pieces: usize) -> (Vec<u8>, HeaderMap) {
        let mut buf = BytesMut::new();
        let mut state = Chunked::Size;
        let mut out = Vec::new();
        let chunk = input.len().div_ceil(pieces).max(1);
        let mut fed = 0;
        loop {
            match step_chunked(state, &mut buf).expect("valid") {
                Step::Data(data, next) => {
                    out.extend_from_slice(&data);
                    state = next;
                }
                Step::Next(next) => state = next,
                Step::Trailers(t) => return (out, t),
                Step::NeedMore => {
                    assert!(fed < input.len(), "ran out of input");
                    let end = (fed + chunk).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let input = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\nx-t: y\r\n\r\n";
        for pieces in [1, 2, 5, 17, input.len()] {
            let (body, trailers) = decode(input, pieces);
            assert_eq!(body, b"hello 0123456789");
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
            assert_eq!(trailers.len(), 2);
        }
        let (body, trailers) = decode(b"0\r\n\r\n", 1);
        assert!(body.is_empty() && trailers.is_empty());
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"fffffffffffffffff\r\n"] {
            let mut buf = BytesMut::from(bad);
            let mut state = Chunked::Size;
            let failed = loop {
                match step_chunked(state, &mut buf) {
                    Err(_) => break true,
                    Ok(Step::Next(next)) | Ok(Step::Data(_, next)) => state = next,
                    Ok(_) => break false,
                }
            };
            assert!(failed, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn head(text: &str) -> (Response<()>, Facts) {
        let mut buf = BytesMut::from(text.as_bytes());
        match parse_head(&mut buf).expect("valid").expect("complete") {
            Parsed::Head(r, facts) => (r, facts),
            Parsed::Informational => panic!("informational"),
        }
    }

    fn framed(text: &str, head_request: bool) -> Result<Framing, ExchangeError> {
        let (response, facts) = head(text);
        framing(&response, &facts, head_request)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |text: &str, head_request: bool| framed(text, head_request).expect("framing");
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false).length,
            Length::Exact(5)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).length,
            Length::Empty
        );
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\n\r\n", false).length,
            Length::Empty
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            )
            .length,
            Length::Empty
        );
        let chunked = f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
            false,
        );
        assert_eq!(
            chunked,
            Framing {
                length: Length::Chunked,
                reusable: true
            }
        );
        let close = f("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(
            close,
            Framing {
                length: Length::UntilClose,
                reusable: false
            }
        );
        assert!(
            !f(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            )
            .reusable
        );
        assert!(!f("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false).reusable);
        assert!(
            f(
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                false
            )
            .reusable
        );
        assert!(framed(
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", false).length,
            Length::Exact(3)
        );
        assert!(framed("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf),
            Ok(Some(Parsed::Informational))
        ));
        assert!(matches!(parse_head(&mut buf), Ok(None)));
        buf.extend_from_slice(b"content-length: 0\r\n\r\n");
        assert!(matches!(parse_head(&mut buf), Ok(Some(Parsed::Head(..)))));
        assert!(buf.is_empty());
        let mut garbage = BytesMut::from(&b"NOT HTTP\r\n\r\n"[..]);
        assert!(parse_head(&mut garbage).is_err());
    }

    #[test]
    fn request_heads_are_encoded_with_their_headers() {
        let mut req = Request::new(());
        *req.method_mut() = Method::PUT;
        *req.uri_mut() = "/a?b=c".parse().expect("uri");
        req.headers_mut()
            .insert("host", HeaderValue::from_static("example.com"));
        let mut out = Vec::new();
        Head::encode(&req, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "PUT /a?b=c HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
