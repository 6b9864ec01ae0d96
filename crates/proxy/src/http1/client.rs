//! The HTTP/1.1 client side: one [`UpstreamConn`] per keep-alive connection
//! to an upstream. The request's own future writes the request head (and
//! streams its body), reads the response head, and the response body reads
//! straight from the same `TcpStream` while the client is sent what
//! arrived: no connection task, no channels, no buffering beyond one read.
//!
//! - A request body streams after the head (`Content-Length` when its size
//!   is known, else chunked). Response bytes arriving meanwhile are parsed:
//!   an early final response stops the upload, and the connection is not
//!   reused.
//! - Response framing as in `head`; 1xx heads other than 101 are skipped; a
//!   101 to a request that asked for an upgrade hands the connection over
//!   (`into_upgraded`), any other 101 is an error.
//! - A connection goes back to the pool only after a complete response
//!   whose framing allows reuse, with nothing unexpected left in its buffer.
//! - On a worker with an io_uring (`[proxy] io`), a bodiless request's head
//!   is queued on the worker's ring instead of written at once: it goes to
//!   the kernel with every other send of the same event-loop turn (see
//!   `cutover_uring`). A send that failed makes the request unsent, as a
//!   failed write would.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::WriteHalf;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::body::Decoder;
use super::encode::{self, RequestFraming};
use super::head::{self, HeadError, ParsedResponse, ResponseHead};
use super::io::{write_chunk, Prefixed};
use crate::body::RequestBodyError;
use crate::settings::deadline_after;

/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;

/// A request head that can write itself out.
pub(crate) trait OutgoingHead {
    fn method(&self) -> &Method;
    /// Whether the request asks to switch protocols.
    fn upgrade(&self) -> bool;
    /// Appends the request line, the headers, the framing header for a body
    /// sent as `framing`, and the empty line.
    fn encode(&self, out: &mut Vec<u8>, framing: RequestFraming);
}

/// A request body as the client sends it (the proxy's is
/// [`crate::body::RequestBody`]).
pub(crate) trait RequestBodySource:
    Body<Data = Bytes, Error = RequestBodyError> + Unpin
{
}

impl<B: Body<Data = Bytes, Error = RequestBodyError> + Unpin> RequestBodySource for B {}

/// One keep-alive HTTP/1.1 connection to an upstream.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    /// Declared before `stream`: dropped first, so that a queued send
    /// reaches the kernel before the socket closes.
    sending: cutover_uring::Outbox,
    stream: TcpStream,
    /// Bytes read but not yet used.
    buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    head: Vec<u8>,
    /// Response timeout; reset per request. Moving a deadline later is an
    /// atomic store in tokio's timer, not a re-registration.
    timer: Pin<Box<Sleep>>,
    /// Informational (1xx) heads skipped in the current exchange.
    informational: u8,
}

/// How long a failed exchange waits to learn whether its queued head went
/// out (the connection failed, so the send ends at once in practice).
const UNSENT_CHECK: Duration = Duration::from_secs(1);

/// Informational heads one response may be preceded by; more is a flood.
const MAX_INFORMATIONAL: u8 = 16;

/// A response head, and the connection its body will be read from.
#[derive(Debug)]
pub(crate) struct Exchanged {
    pub(crate) head: ResponseHead,
    pub(crate) conn: Box<UpstreamConn>,
    /// The upstream switched protocols, as the request asked.
    pub(crate) switched: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The connection failed while the request head was written; nothing of
    /// the request body was read: the request may go out on another one.
    #[error("the connection closed before the request was sent")]
    Unsent(#[source] io::Error),
    /// The connection ended (EOF, reset, broken pipe) before any byte of a
    /// response: the request may be replayed if it is bodiless and
    /// idempotent.
    #[error("the connection closed before a response")]
    ClosedBeforeResponse(#[source] Option<io::Error>),
    #[error("reading or writing the upstream connection failed")]
    Io(#[source] io::Error),
    #[error("the upstream sent an invalid response")]
    Invalid(#[from] HeadError),
    #[error("the upstream switched protocols without being asked to")]
    UnexpectedSwitch,
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the request body could not be sent")]
    Body(#[source] RequestBodyError),
}

/// A final response head: switching protocols, or not.
enum FinalHead {
    Final(ResponseHead),
    Switching(ResponseHead),
}

impl UpstreamConn {
    pub(crate) fn new(stream: TcpStream) -> Box<UpstreamConn> {
        Box::new(UpstreamConn {
            sending: cutover_uring::Outbox::reusing(),
            stream,
            buf: BytesMut::new(),
            head: Vec::with_capacity(512),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            informational: 0,
        })
    }

    /// Whether a pooled connection still looks open: no EOF and no stray
    /// bytes waiting. Costs a syscall only if the socket was reported
    /// readable since its last use.
    pub(crate) fn looks_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// A connection about to carry a request must have said nothing since
    /// its last response: bytes that arrived while it was idle (an
    /// unsolicited response, a response-splitting attempt) or an EOF make
    /// it unusable; the request has not been sent and may go elsewhere.
    /// Costs a syscall only if the socket was reported readable.
    fn check_silent(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the upstream sent bytes while idle",
            ));
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the upstream sent bytes while idle",
            )),
            Err(e) => Err(e),
        }
    }

    /// Sends a request (head, then `body` if any) and reads the response
    /// head, within `timeout` from the end of the request head.
    pub(crate) async fn exchange<H: OutgoingHead, B: RequestBodySource>(
        mut self: Box<Self>,
        req: &H,
        body: Option<&mut B>,
        timeout: Duration,
    ) -> Result<Exchanged, ExchangeError> {
        // Checked here, not only by the pool: a replayable request skips
        // `looks_open`, and a connection that spoke out of turn would hand
        // it someone else's response.
        if let Err(e) = self.check_silent() {
            return Err(ExchangeError::Unsent(e));
        }
        self.informational = 0;
        let body = body.filter(|body| !body.is_end_stream());
        let framing = match &body {
            None => RequestFraming::None,
            Some(body) => match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            },
        };
        self.head.clear();
        req.encode(&mut self.head, framing);
        let queued = body.is_none() && self.queue_head().await;
        if !queued {
            // After the previous request's queued head: bytes keep order.
            let _ = self.sending.sent().await;
            if let Err(e) = self.stream.write_all(&self.head).await {
                return Err(if is_closed(&e) {
                    ExchangeError::Unsent(e)
                } else {
                    ExchangeError::Io(e)
                });
            }
        }
        self.timer.as_mut().reset(deadline_after(timeout));
        let to_head = *req.method() == Method::HEAD;
        let early = match body {
            Some(body) => {
                let chunked = framing == RequestFraming::Chunked;
                self.send_body(body, chunked, to_head, timeout).await?
            }
            None => None,
        };
        let sent_all = early.is_none();
        let parsed = match early {
            Some(head) => head,
            None => match self.read_head(to_head, timeout).await {
                Ok(head) => head,
                Err(e) => return Err(self.unsent_instead(e).await),
            },
        };
        let (mut head, switched) = match parsed {
            FinalHead::Final(head) => (head, false),
            FinalHead::Switching(head) if req.upgrade() => (head, true),
            FinalHead::Switching(_) => return Err(ExchangeError::UnexpectedSwitch),
        };
        // An upload cut short by an early response leaves the connection
        // out of step.
        head.reusable &= sent_all;
        Ok(Exchanged {
            head,
            conn: self,
            switched,
        })
    }

    /// Queues the encoded head on this worker's ring, after the previous
    /// request's send ended (sends on one socket must not overlap). False:
    /// no ring here; write it as usual.
    async fn queue_head(&mut self) -> bool {
        if !cutover_uring::is_installed() {
            return false;
        }
        // A failure of the previous send showed in its exchange already.
        let _ = self.sending.sent().await;
        let spare = self.sending.buffer(0);
        let head = std::mem::replace(&mut self.head, spare);
        match self.sending.queue(&self.stream, head) {
            Ok(()) => true,
            Err(head) => {
                self.head = head;
                false
            }
        }
    }

    /// A connection that failed before its response, when the queued head
    /// never went out, failed before the request was sent (it may go out
    /// elsewhere), as a failed write would have said.
    async fn unsent_instead(&mut self, error: ExchangeError) -> ExchangeError {
        let early = matches!(
            error,
            ExchangeError::ClosedBeforeResponse(_) | ExchangeError::Io(_)
        );
        if !early {
            return error;
        }
        // The connection failed, so its send ends at once (bounded anyway).
        // As a failed write: only a closed connection makes it unsent.
        match tokio::time::timeout(UNSENT_CHECK, self.sending.sent()).await {
            Ok(Err(e)) if is_closed(&e) => ExchangeError::Unsent(e),
            _ => error,
        }
    }

    /// Streams the request body while watching for the response. `Some`:
    /// a final response head arrived before the body was all sent.
    async fn send_body<B: RequestBodySource>(
        &mut self,
        body: &mut B,
        chunked: bool,
        to_head: bool,
        timeout: Duration,
    ) -> Result<Option<FinalHead>, ExchangeError> {
        let UpstreamConn {
            stream,
            buf,
            timer,
            informational,
            ..
        } = self;
        let (mut read, mut write) = stream.split();
        let mut sending = pin!(write_body(&mut write, body, chunked));
        let mut received = false;
        loop {
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            tokio::select! {
                biased;
                () = timer.as_mut() => return Err(ExchangeError::Timeout(timeout)),
                sent = &mut sending => return sent.map(|()| None),
                got = read.read_buf(buf) => match got {
                    Ok(0) => return Err(closed_early(received)),
                    Ok(_) => {
                        received = true;
                        if let Some(head) = next_head(buf, to_head, informational)? {
                            return Ok(Some(head));
                        }
                    }
                    Err(e) => return Err(closed_or_io(e, !received)),
                },
            }
        }
    }

    /// Reads until a final response head is buffered, then parses it.
    async fn read_head(
        &mut self,
        to_head: bool,
        timeout: Duration,
    ) -> Result<FinalHead, ExchangeError> {
        let mut received = !self.buf.is_empty();
        loop {
            if let Some(head) = next_head(&mut self.buf, to_head, &mut self.informational)? {
                return Ok(head);
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
                return Err(closed_early(received));
            }
            received = true;
        }
    }

    /// The connection after a 101, with what was read past the head.
    pub(crate) fn into_upgraded(self) -> Prefixed<TcpStream> {
        let UpstreamConn { stream, buf, .. } = self;
        Prefixed {
            prefix: buf.freeze(),
            io: stream,
        }
    }
}

/// The next final head in `buf`, skipping informational ones (at most
/// [`MAX_INFORMATIONAL`], counted in `skipped`).
fn next_head(
    buf: &mut BytesMut,
    to_head: bool,
    skipped: &mut u8,
) -> Result<Option<FinalHead>, HeadError> {
    while !buf.is_empty() {
        match head::parse_response(buf, to_head)? {
            None => return Ok(None),
            Some(ParsedResponse::Informational) => {
                *skipped += 1;
                if *skipped > MAX_INFORMATIONAL {
                    return Err(HeadError::Malformed("too many informational responses"));
                }
            }
            Some(ParsedResponse::Switching(head)) => return Ok(Some(FinalHead::Switching(head))),
            Some(ParsedResponse::Final(head)) => return Ok(Some(FinalHead::Final(head))),
        }
    }
    Ok(None)
}

/// Writes the body's frames as they come: as is, or as chunks.
async fn write_body<B: RequestBodySource>(
    write: &mut WriteHalf<'_>,
    body: &mut B,
    chunked: bool,
) -> Result<(), ExchangeError> {
    let mut scratch = Vec::new();
    while let Some(frame) = body.frame().await {
        // Trailers: an HTTP/1.1 upstream gets none.
        let Ok(data) = frame.map_err(ExchangeError::Body)?.into_data() else {
            continue;
        };
        let written = if chunked {
            write_chunk(write, &mut scratch, &data).await
        } else {
            write.write_all(&data).await
        };
        written.map_err(ExchangeError::Io)?;
    }
    if chunked {
        write
            .write_all(encode::LAST_CHUNK)
            .await
            .map_err(ExchangeError::Io)?;
    }
    Ok(())
}

pub(crate) fn closed_early(received: bool) -> ExchangeError {
    if received {
        ExchangeError::Invalid(HeadError::Malformed(
            "connection closed in the middle of the response head",
        ))
    } else {
        ExchangeError::ClosedBeforeResponse(None)
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// An I/O error: before any response byte, a close of the connection is
/// `ClosedBeforeResponse` (replayable).
fn closed_or_io(e: io::Error, before_response: bool) -> ExchangeError {
    if before_response && is_closed(&e) {
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
    pin!(read).poll(cx)
}

/// A response body read from an upstream connection. When it ends cleanly
/// and the connection may be reused, `take_reusable` gives it back.
pub(crate) struct Http1Body {
    conn: Option<Box<UpstreamConn>>,
    decoder: Decoder,
    reusable: bool,
}

impl std::fmt::Debug for Http1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Body")
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl Http1Body {
    pub(crate) fn new(conn: Box<UpstreamConn>, head: &ResponseHead) -> Http1Body {
        Http1Body {
            conn: Some(conn),
            decoder: Decoder::new(head.body),
            reusable: head.reusable,
        }
    }

    /// The connection, if the body ended cleanly and it may be reused.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<UpstreamConn>> {
        let clean = self.decoder.is_done() && self.reusable;
        let conn = self.conn.take()?;
        // Bytes after the response: the upstream is out of step; do not reuse.
        // A head still queued (an upstream that answered before it was
        // even submitted) is out of step too, and keeps it on this thread.
        (clean && conn.buf.is_empty() && conn.sending.is_idle()).then_some(conn)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.decoder.is_done()
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let UpstreamConn { stream, buf, .. } = &mut **conn;
        let polled = ready!(this
            .decoder
            .poll_frame(buf, cx, |buf, cx| read_more(stream, buf, cx)));
        if let Some(Err(_)) = &polled {
            this.reusable = false;
            this.conn = None;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BoxError;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const TIMEOUT: Duration = Duration::from_secs(5);

    struct TestHead {
        method: Method,
        upgrade: bool,
    }

    impl OutgoingHead for TestHead {
        fn method(&self) -> &Method {
            &self.method
        }

        fn upgrade(&self) -> bool {
            self.upgrade
        }

        fn encode(&self, out: &mut Vec<u8>, framing: RequestFraming) {
            encode::request_line(out, &self.method, &http::Uri::from_static("/"));
            encode::header_line(out, b"host", b"test");
            if self.upgrade {
                out.extend_from_slice(b"connection: upgrade\r\nupgrade: test\r\n");
            }
            encode::end_request_head(out, &self.method, framing, false);
        }
    }

    fn get() -> TestHead {
        TestHead {
            method: Method::GET,
            upgrade: false,
        }
    }

    fn post() -> TestHead {
        TestHead {
            method: Method::POST,
            upgrade: false,
        }
    }

    /// A body of unknown length fed through a channel.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = RequestBodyError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|data| data.map(|d| Ok(Frame::data(d))))
        }
    }

    type NoBody = ChannelBody;

    /// A backend answering each connection's first request with `answer`
    /// once it has read `until` (the end of the head, or of the body).
    async fn backend(
        until: &'static [u8],
        answer: &'static [u8],
    ) -> (TcpStream, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (seen_tx, seen) = mpsc::channel(1);
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while !request.windows(until.len()).any(|w| w == until) {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream.write_all(answer).await;
            let _ = seen_tx.send(request).await;
            // Keep the connection open (and unread) until the test ends.
            std::future::pending::<()>().await;
        });
        (TcpStream::connect(addr).await.expect("connect"), seen)
    }

    async fn read_body(body: &mut Http1Body) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_body_of_unknown_size_goes_chunked_and_the_connection_stays_reusable() {
        let (stream, mut seen) = backend(
            b"0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        let (tx, rx) = mpsc::channel(4);
        let mut body = ChannelBody(rx);
        tx.send(Bytes::from_static(b"hello ")).await.expect("send");
        tx.send(Bytes::from_static(b"world")).await.expect("send");
        drop(tx);
        let exchanged = UpstreamConn::new(stream)
            .exchange(&post(), Some(&mut body), TIMEOUT)
            .await
            .expect("exchange");
        assert_eq!(exchanged.head.status, 200);
        let request = String::from_utf8(seen.recv().await.expect("request")).expect("utf-8");
        assert!(
            request.contains("transfer-encoding: chunked\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
            "{request}"
        );
        let mut body = Http1Body::new(exchanged.conn, &exchanged.head);
        let data = read_body(&mut body).await.expect("body");
        assert_eq!(data, b"ok");
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn an_early_response_stops_the_upload_and_the_connection_is_not_reused() {
        let (stream, _seen) = backend(
            b"\r\n\r\n",
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!",
        )
        .await;
        // A body that never ends: only the early response can end the exchange.
        let (tx, rx) = mpsc::channel(1);
        let mut body = ChannelBody(rx);
        let exchanged = UpstreamConn::new(stream)
            .exchange(&post(), Some(&mut body), TIMEOUT)
            .await
            .expect("exchange");
        drop(tx);
        assert_eq!(exchanged.head.status, 413);
        assert!(!exchanged.head.reusable);
        let mut body = Http1Body::new(exchanged.conn, &exchanged.head);
        let data = read_body(&mut body).await.expect("body");
        assert_eq!(data, b"big!");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn a_101_hands_the_connection_over_only_when_the_request_asked_to_switch() {
        const SWITCH: &[u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\nearly bytes";
        let (stream, _seen) = backend(b"\r\n\r\n", SWITCH).await;
        let asked = TestHead {
            method: Method::GET,
            upgrade: true,
        };
        let exchanged = UpstreamConn::new(stream)
            .exchange(&asked, None::<&mut NoBody>, TIMEOUT)
            .await
            .expect("exchange");
        assert!(exchanged.switched);
        let upgraded = (*exchanged.conn).into_upgraded();
        assert_eq!(&upgraded.prefix[..], b"early bytes");

        let (stream, _seen) = backend(b"\r\n\r\n", SWITCH).await;
        let unasked = UpstreamConn::new(stream)
            .exchange(&get(), None::<&mut NoBody>, TIMEOUT)
            .await;
        assert!(matches!(unasked, Err(ExchangeError::UnexpectedSwitch)));
    }

    #[tokio::test]
    async fn a_close_before_any_response_byte_is_told_apart_from_a_cut_head() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for answer in [&b""[..], b"HTTP/1.1 200 OK\r\ncontent-"] {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut chunk = [0u8; 1024];
                let _ = stream.read(&mut chunk).await;
                let _ = stream.write_all(answer).await;
            }
        });
        let conn = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
        let closed = conn.exchange(&get(), None::<&mut NoBody>, TIMEOUT).await;
        assert!(
            matches!(closed, Err(ExchangeError::ClosedBeforeResponse(_))),
            "{closed:?}"
        );
        let conn = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
        let cut = conn.exchange(&get(), None::<&mut NoBody>, TIMEOUT).await;
        assert!(matches!(cut, Err(ExchangeError::Invalid(_))), "{cut:?}");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_no_longer_looks_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut open = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
        let (_kept, _) = listener.accept().await.expect("accept");
        let mut closed = UpstreamConn::new(TcpStream::connect(addr).await.expect("connect"));
        drop(listener.accept().await.expect("accept"));
        // The FIN arrives and the reactor marks the socket readable.
        let deadline = Instant::now() + TIMEOUT;
        while closed.looks_open() {
            assert!(Instant::now() < deadline, "the close was never seen");
            closed.stream.readable().await.expect("readable");
        }
        assert!(open.looks_open());
    }
}
