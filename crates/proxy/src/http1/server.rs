//! The HTTP/1.1 server side: one [`ServerConn`] per client connection reads
//! request heads, lends the connection to a request's streamed body, writes
//! responses, keeps the connection alive between requests, hands it over
//! on an upgrade, and enforces the client timeouts.
//!
//! hyper serves HTTP/2 (see `server`); HTTP/1.1 connections are served here
//! because a reverse proxy needs less than a general server and pays for
//! the rest on every request and every idle connection:
//!
//! - an idle keep-alive connection holds no buffer at all (TCP: the wait for
//!   the next request needs none), so ten thousand idle clients cost little;
//! - a request head is parsed once into `http` types whose header values
//!   share the read buffer;
//! - a response head and a small body go out in one write.
//!
//! # Protocol
//!
//! - Heads up to 64 KiB (else 431) with up to 100 headers; malformed: 400.
//!   Body framing as in `head` (conflicting or unknowable lengths: 400).
//!   `Expect: 100-continue` is answered when the body will be read.
//! - A request whose body was not read to its end closes the connection
//!   after its response.
//! - Responses: `Content-Length` when the body's size is known, else
//!   chunked (HTTP/1.1) or delimited by the close (HTTP/1.0). No body for
//!   HEAD, 1xx, 204 and 304. A `Date` header is added when missing.
//! - Upgrades: after a `101` the connection (with any bytes already read)
//!   goes to the tunnel (`tunnel`).
//! - Timeouts: `header_read_timeout` from a request's first byte until its
//!   head is complete (a slowloris client is closed); `idle_timeout`
//!   between requests; none while a request is being served.
//! - At `max_connections` an idle connection may be asked to close (oldest
//!   first, see `admission`): it closes as on its idle timeout.
//! - A plain TCP connection idle for `park::PARK_AFTER` parks: it leaves its
//!   task for its listener's `ParkingLot` and resumes in a new task when
//!   its socket turns readable (see `park`).
//! - Graceful shutdown: idle connections close at once; a busy one answers
//!   its request with `Connection: close`, then closes. During an upgrade
//!   (the listener's `Handoff` armed) a plain TCP connection is handed to
//!   the new process instead, at its next request boundary: at once when
//!   idle, else right after the response in progress (with any pipelined
//!   bytes already read); a TLS one answers its next request with
//!   `Connection: close`.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{HeaderMap, HeaderName, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Sleep;

use super::body::Decoder;
use super::encode;
use super::head::{self, BodyLength, HeadError, RequestHead};
use super::io::{write_chunk, ClientIo, ReadSide, Upgraded, WriteSide};
use super::park::{Parked, ParkingLot, PARK_AFTER};
use crate::admission::IdleSignal;
use crate::body::{ClientBody, ResponseBody};
use crate::forward::{self, ConnCtx};
use crate::handoff::Handoff;
use crate::server::ConnGuards;
use crate::settings::deadline_after;

/// Read buffer taken when a request starts arriving.
const HEAD_BUFFER: usize = 4096;
/// Bytes asked of the transport per body read.
const BODY_READ: usize = 16 * 1024;
/// Bytes set aside per response for its head (and a small body).
const RESPONSE_BUFFER: usize = 512;
/// A first body frame up to this size is copied behind the response head
/// so that both go out in one write.
const COALESCE: usize = 16 * 1024;

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

/// What a client connection carries for its whole life, whichever task
/// serves it (between two requests it may park and resume in another).
pub(crate) struct ConnLife {
    /// Marks it idle between requests, and asks it to close to make room
    /// for a new one at `max_connections` (see `admission`).
    pub(crate) idle: Option<Arc<IdleSignal>>,
    /// Count it as open until it closes.
    pub(crate) _guards: ConnGuards,
}

/// Where an idle connection can go, by its listener and worker.
#[derive(Clone, Default)]
pub(crate) struct Exits {
    /// To the new process at shutdown once an upgrade armed the handoff,
    /// tagged with its listener's address.
    pub(crate) handoff: Option<(Handoff, std::net::SocketAddr)>,
    /// To its worker's parking lot once idle for a while; `None`: it waits
    /// in its task.
    pub(crate) lot: Option<ParkingLot>,
}

/// Serves HTTP/1.1 requests on `io` until the client closes, a timeout
/// passes, or shutdown is asked. `prefix`: bytes already read from it.
pub(crate) async fn serve(
    io: ClientIo,
    prefix: BytesMut,
    ctx: Arc<ConnCtx>,
    stopped: watch::Receiver<bool>,
    life: ConnLife,
    exits: Exits,
) {
    // Only a plain TCP socket can be handed to another process or parked.
    let exits = match io {
        ClientIo::Tcp(_) => exits,
        ClientIo::Tls(_) => Exits::default(),
    };
    ServerConn::new(io, prefix, ctx, stopped, life, exits, true)
        .run()
        .await;
}

/// Serves a parked connection that turned readable (or was asked to close),
/// in a new task of the current runtime; it closes instead if it was asked
/// to close, or cannot rejoin the event loop.
pub(crate) fn resume(parked: Parked, lot: &ParkingLot, stopped: &watch::Receiver<bool>) {
    let Parked {
        stream,
        listener,
        peer,
        life,
    } = parked;
    if life.idle.as_ref().is_some_and(|idle| !idle.set_busy()) {
        return;
    }
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(error = %e, "a parked connection cannot rejoin the event loop");
            return;
        }
    };
    let exits = Exits {
        handoff: lot.handoff(),
        lot: Some(lot.clone()),
    };
    let ctx = ConnCtx::new(listener, peer);
    let conn = ServerConn::new(
        ClientIo::Tcp(stream),
        BytesMut::new(),
        ctx,
        stopped.clone(),
        life,
        exits,
        false,
    );
    tokio::spawn(conn.run());
}

/// Serves a connection the io_uring loop hands on at a request boundary
/// (see `ring`), with the bytes it read of the next request; it closes
/// instead if it was asked to close.
pub(crate) fn serve_resumed(
    stream: tokio::net::TcpStream,
    prefix: BytesMut,
    ctx: Arc<ConnCtx>,
    stopped: watch::Receiver<bool>,
    life: ConnLife,
    exits: Exits,
) {
    // The loop may have left it marked idle; the server marks it as it goes.
    if life.idle.as_ref().is_some_and(|idle| !idle.set_busy()) {
        return;
    }
    let io = ClientIo::Tcp(stream);
    let conn = ServerConn::new(io, prefix, ctx, stopped, life, exits, false);
    // At shutdown during an upgrade it is at a request boundary: it moves
    // to the new process now, as after a response here.
    if *conn.stopped.borrow() && conn.hands_over() {
        tokio::spawn(conn.hand_over_or_close());
    } else {
        tokio::spawn(conn.run());
    }
}

/// The answer to a request head that could not be read; the connection
/// closes after it.
pub(crate) fn head_error_response(bad: HeadError) -> Vec<u8> {
    let status = bad.status();
    let body = format!("cutover: {bad}\n");
    let mut out = Vec::with_capacity(160);
    encode::status_line(&mut out, status);
    encode::header_line(&mut out, b"content-type", b"text/plain; charset=utf-8");
    encode::content_length_line(&mut out, body.len() as u64);
    encode::date_line(&mut out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// Resolves when the connection is asked to close to make room; never
/// without a signal.
async fn asked_to_close(idle: Option<&IdleSignal>) {
    match idle {
        Some(idle) => idle.closing().await,
        None => std::future::pending().await,
    }
}

/// One client connection served in HTTP/1.1.
struct ServerConn {
    /// `None` while a request's body reads from the connection.
    reader: Option<Reader>,
    write: WriteSide,
    /// The header-read or idle deadline. Moving a deadline later is an
    /// atomic store in tokio's timer, not a re-registration.
    timer: Pin<Box<Sleep>>,
    ctx: Arc<ConnCtx>,
    stopped: watch::Receiver<bool>,
    /// No request was read yet.
    first: bool,
    life: ConnLife,
    exits: Exits,
}

/// What waiting for the next request brought.
enum Incoming {
    Head(RequestHead),
    /// EOF, a timeout, or no reader: the connection is done.
    Closed,
    /// Shutdown while idle: close, or hand the connection over.
    StoppedIdle,
    /// Idle for `PARK_AFTER`: wait in the parking lot.
    Park,
}

/// What the connection does after a response.
enum Next {
    KeepAlive,
    Close,
    /// Switched protocols: the connection goes to the tunnel.
    Upgrade(oneshot::Sender<Upgraded>),
}

/// What the response writer needs to know about the request.
pub(crate) struct Asked {
    pub(crate) head_method: bool,
    pub(crate) version: Version,
    pub(crate) keep_alive: bool,
}

impl ServerConn {
    fn new(
        io: ClientIo,
        prefix: BytesMut,
        ctx: Arc<ConnCtx>,
        stopped: watch::Receiver<bool>,
        life: ConnLife,
        exits: Exits,
        first: bool,
    ) -> ServerConn {
        let (read, write) = io.split();
        let timer = Box::pin(tokio::time::sleep_until(deadline_after(
            ctx.shared.settings.header_read_timeout,
        )));
        ServerConn {
            reader: Some(Reader {
                io: read,
                buf: prefix,
            }),
            write,
            timer,
            ctx,
            stopped,
            first,
            life,
            exits,
        }
    }

    async fn run(mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(Incoming::Head(head)) => head,
                Ok(Incoming::Closed) => return,
                Ok(Incoming::StoppedIdle) => return self.hand_over_or_close().await,
                Ok(Incoming::Park) => match self.park().await {
                    Some(conn) => {
                        self = conn;
                        continue;
                    }
                    None => return,
                },
                Err(bad) => {
                    let _ = self.write_error(bad).await;
                    return;
                }
            };
            self.first = false;
            // Boxed: what serving a request needs is large, and only exists
            // while one is served; an idle connection's task stays small.
            match Box::pin(self.serve_request(head)).await {
                Next::KeepAlive => {}
                Next::Close => {
                    let _ = self.write.shutdown().await;
                    return;
                }
                Next::Upgrade(handover) => {
                    if let Some(upgraded) = self.into_upgraded().await {
                        let _ = handover.send(upgraded);
                    }
                    return;
                }
            }
            if *self.stopped.borrow() && self.hands_over() {
                // A request boundary during an upgrade.
                return self.hand_over_or_close().await;
            }
            if let Some(reader) = &mut self.reader {
                if reader.buf.is_empty() {
                    // An idle connection keeps no buffer.
                    reader.buf = BytesMut::new();
                }
            }
        }
    }

    /// Whether this connection goes to the new process at its next request
    /// boundary: an upgrade armed the handoff (only plain TCP has one).
    fn hands_over(&self) -> bool {
        self.exits
            .handoff
            .as_ref()
            .is_some_and(|(h, _)| h.is_armed())
    }

    /// Leaves the task for the parking lot. Gives the connection back when
    /// it cannot park (the lot shut down: it waits here from now on);
    /// `None`: parked, or closed.
    async fn park(mut self) -> Option<ServerConn> {
        // Its last response out first: the socket leaves this loop's ring.
        if !self.response_sent().await {
            return None;
        }
        let ServerConn {
            reader,
            write,
            ctx,
            stopped,
            life,
            mut exits,
            ..
        } = self;
        let (Some(lot), Some(reader)) = (exits.lot.clone(), reader) else {
            return None;
        };
        let Some(ClientIo::Tcp(stream)) = ClientIo::rejoin(reader.io, write) else {
            return None;
        };
        // Leaves this event loop: the lot watches it from now on.
        let stream = stream
            .into_std()
            .inspect_err(|e| tracing::debug!(error = %e, "cannot park a client connection"))
            .ok()?;
        let settings = &ctx.shared.settings;
        let deadline = deadline_after(settings.idle_timeout.saturating_sub(PARK_AFTER));
        let parked = Parked {
            stream,
            listener: Arc::clone(&ctx.shared),
            peer: ctx.peer,
            life,
        };
        let Parked { stream, life, .. } = lot.park(parked, deadline)?;
        // Marked idle when it started waiting: busy again, unless it was
        // asked to close meanwhile (then it closes).
        if life.idle.as_ref().is_some_and(|idle| !idle.set_busy()) {
            return None;
        }
        exits.lot = None;
        let stream = tokio::net::TcpStream::from_std(stream).ok()?;
        Some(ServerConn::new(
            ClientIo::Tcp(stream),
            BytesMut::new(),
            ctx,
            stopped,
            life,
            exits,
            false,
        ))
    }

    /// Waits until the response queued on the worker's ring went out (at
    /// once on epoll): false if it failed, or if the client did not take
    /// it within the idle timeout (it then closes).
    async fn response_sent(&mut self) -> bool {
        let limit = self.ctx.shared.settings.idle_timeout;
        matches!(
            tokio::time::timeout(limit, self.write.sent()).await,
            Ok(Ok(()))
        )
    }

    /// Stopping between two requests: the socket and the bytes read ahead
    /// go to the new process if an upgrade armed the handoff; otherwise (or
    /// if nobody takes it) the connection closes as it is dropped.
    async fn hand_over_or_close(mut self) {
        let Some((handoff, listener)) = self.exits.handoff.clone() else {
            return;
        };
        if !handoff.is_armed() {
            return;
        }
        // Its last response out first: the new process writes next.
        if !self.response_sent().await {
            return;
        }
        let Some(reader) = self.reader else { return };
        let prefix = reader.buf.freeze();
        if let Some(ClientIo::Tcp(stream)) = ClientIo::rejoin(reader.io, self.write) {
            handoff.hand_tcp(listener, stream, prefix, false);
        }
    }

    /// Waits for and reads the next request head.
    async fn read_head(&mut self) -> Result<Incoming, HeadError> {
        let settings = &self.ctx.shared.settings;
        let Some(reader) = &mut self.reader else {
            return Ok(Incoming::Closed);
        };
        // A first request (or pipelined bytes already here) starts the header
        // clock at once; otherwise the idle clock runs until the first byte,
        // and the header clock only if that byte did not bring a whole head
        // (moving a deadline earlier costs a timer re-registration; later is
        // cheap).
        let mut header_clock = self.first || !reader.buf.is_empty();
        // An idle wait that would outlast `PARK_AFTER` ends in the parking
        // lot instead (the lot keeps the rest of the idle timeout).
        let parks = self.exits.lot.is_some() && settings.idle_timeout > PARK_AFTER;
        let idle_wait = if parks {
            PARK_AFTER
        } else {
            settings.idle_timeout
        };
        self.timer.as_mut().reset(deadline_after(if header_clock {
            settings.header_read_timeout
        } else {
            idle_wait
        }));
        let idle_over = || {
            if parks {
                Incoming::Park
            } else {
                Incoming::Closed
            }
        };
        loop {
            if !reader.buf.is_empty() {
                if let Some(head) = head::parse_request(&mut reader.buf)? {
                    return Ok(Incoming::Head(head));
                }
                if !header_clock {
                    header_clock = true;
                    self.timer
                        .as_mut()
                        .reset(deadline_after(settings.header_read_timeout));
                }
            } else if !header_clock {
                // Idle: wait without a buffer.
                let idle = self.life.idle.as_deref();
                if idle.is_some_and(|idle| !idle.set_idle()) {
                    return Ok(Incoming::Closed);
                }
                tokio::select! {
                    biased;
                    ready = reader.io.readable() => if ready.is_err() { return Ok(Incoming::Closed) },
                    // Still marked idle: it parks (or closes) as such.
                    () = self.timer.as_mut() => return Ok(idle_over()),
                    _ = self.stopped.wait_for(|stop| *stop) => return Ok(Incoming::StoppedIdle),
                    () = asked_to_close(idle) => return Ok(Incoming::Closed),
                }
                // Closed to make room while it woke up: the request is
                // not read (the client sees the close, as after a timeout).
                if idle.is_some_and(|idle| !idle.set_busy()) {
                    return Ok(Incoming::Closed);
                }
            }
            if reader.buf.capacity() - reader.buf.len() < 1024 {
                reader.buf.reserve(HEAD_BUFFER);
            }
            let read = tokio::select! {
                biased;
                read = reader.io.read_buf(&mut reader.buf) => read,
                () = self.timer.as_mut() => {
                    if !header_clock {
                        // Readable, but nothing came (or only the idle
                        // clock ran): idle as before.
                        if self.life.idle.as_deref().is_some_and(|idle| !idle.set_idle()) {
                            return Ok(Incoming::Closed);
                        }
                        return Ok(idle_over());
                    }
                    tracing::debug!("client did not send a complete request head in time");
                    return Ok(Incoming::Closed);
                }
            };
            if matches!(read, Ok(0) | Err(_)) {
                return Ok(Incoming::Closed);
            }
        }
    }

    /// Serves one request whose head was read: its body is read from the
    /// connection while the request is forwarded, then the response is
    /// written.
    async fn serve_request(&mut self, head: RequestHead) -> Next {
        let asked = Asked {
            head_method: head.request.method() == Method::HEAD,
            version: head.request.version(),
            keep_alive: head.keep_alive,
        };
        let Some((request, handover, slot)) = self.start_request(head).await else {
            return Next::Close;
        };
        let active = self.ctx.activity.begin();
        let response = forward::handle(Arc::clone(&self.ctx), active, request).await;
        // During an upgrade a plain connection moves on after this
        // response instead of closing.
        let closing = *self.stopped.borrow() && !self.hands_over();
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let keep = match self.write_response(response, &asked, closing).await {
            Ok(keep) => keep,
            Err(e) => {
                tracing::debug!(error = %e, "writing a response to the client failed");
                return Next::Close;
            }
        };
        match handover {
            Some(handover) if switching && self.reader.is_some() => return Next::Upgrade(handover),
            _ if switching => return Next::Close,
            _ => {}
        }
        // The next request needs the connection back from the body; a body
        // not read to its end leaves the connection out of step: close.
        if let Some(slot) = slot {
            self.reader = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
        if keep && self.reader.is_some() {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// The request to forward: its body lent the connection's reader (a
    /// `100 Continue` first if asked), and an upgrade handle if it asks to
    /// switch protocols. `None`: the connection failed.
    async fn start_request(
        &mut self,
        head: RequestHead,
    ) -> Option<(
        Request<ClientBody>,
        Option<oneshot::Sender<Upgraded>>,
        Option<ReaderSlot>,
    )> {
        let (parts, ()) = head.request.into_parts();
        let mut slot = None;
        let body = match head.body {
            BodyLength::Empty | BodyLength::UntilClose => ClientBody::Empty,
            length => {
                if head.expect_continue
                    && self
                        .write
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .is_err()
                {
                    return None;
                }
                let shared: ReaderSlot = Arc::new(Mutex::new(None));
                slot = Some(Arc::clone(&shared));
                ClientBody::Native(NativeBody {
                    reader: self.reader.take(),
                    decoder: Decoder::new(length),
                    slot: shared,
                })
            }
        };
        let mut request = Request::from_parts(parts, body);
        let mut handover = None;
        if head.upgrade && self.reader.is_some() {
            let (tx, rx) = oneshot::channel();
            request
                .extensions_mut()
                .insert(NativeUpgrade(Arc::new(Mutex::new(Some(rx)))));
            handover = Some(tx);
        }
        Some((request, handover, slot))
    }

    /// The connection for the tunnel, with what was read past the request.
    async fn into_upgraded(mut self) -> Option<Upgraded> {
        if !self.response_sent().await {
            return None;
        }
        let reader = self.reader?;
        let io = ClientIo::rejoin(reader.io, self.write)?;
        Some(Upgraded {
            prefix: reader.buf.freeze(),
            io,
        })
    }

    /// A minimal response for a request that could not be read, saying
    /// what was wrong with it; the connection closes after it.
    async fn write_error(&mut self, bad: HeadError) -> io::Result<()> {
        self.write.write_all(&head_error_response(bad)).await?;
        self.write.shutdown().await
    }

    /// Writes a response head and streams its body. Returns whether the
    /// connection stays open for another request.
    async fn write_response(
        &mut self,
        response: Response<ResponseBody>,
        asked: &Asked,
        closing: bool,
    ) -> io::Result<bool> {
        let (parts, body) = response.into_parts();
        let framing = ResponseFraming::new(
            parts.status,
            crate::headers::connection_has(&parts.headers, "close"),
            body.size_hint(),
            asked,
            closing,
        );
        // Room for a typical response head and a small body in one write.
        let mut out = self.write.buffer(RESPONSE_BUFFER);
        let fields = map_fields(&parts.headers);
        encode_response_head(&mut out, parts.status, fields, &framing, asked.version);
        if framing.bodyless {
            send_head(&mut self.write, out, framing.close).await?;
        } else {
            write_body(&mut self.write, out, body, &framing).await?;
        }
        Ok(!framing.close)
    }
}

/// How a response goes out to this client.
pub(crate) struct ResponseFraming {
    pub(crate) bodyless: bool,
    /// The body's size, when known.
    pub(crate) exact: Option<u64>,
    pub(crate) chunked: bool,
    pub(crate) close: bool,
    switching: bool,
}

impl ResponseFraming {
    /// `connection_close`: the response's own `Connection` says `close`.
    pub(crate) fn new(
        status: StatusCode,
        connection_close: bool,
        size: SizeHint,
        asked: &Asked,
        closing: bool,
    ) -> ResponseFraming {
        let bodyless = asked.head_method
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let exact = size.exact();
        let chunked = !bodyless && exact.is_none() && asked.version == Version::HTTP_11;
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        let close = !switching
            && (!asked.keep_alive
                || closing
                || connection_close
                // An HTTP/1.0 client learns a body of unknown size ended by the close.
                || (!bodyless && exact.is_none() && !chunked));
        ResponseFraming {
            bodyless,
            exact,
            chunked,
            close,
            switching,
        }
    }
}

/// A map's fields as [`encode_response_head`] takes them.
pub(crate) fn map_fields(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
}

/// The status line, the response's fields (name, value; from a map or
/// read in place, names in any case) with framing headers of our own,
/// `Date` if missing, and the connection's fate. Names go out in lower
/// case whatever their source, so both paths write the same head.
pub(crate) fn encode_response_head<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    framing: &ResponseFraming,
    version: Version,
) {
    encode::status_line(out, status);
    // HEAD and 304 keep the length the body would have had.
    let keeps_length =
        framing.bodyless && status != StatusCode::NO_CONTENT && !status.is_informational();
    let mut has_date = false;
    for (name, value) in fields {
        let is = |known: &HeaderName| name.eq_ignore_ascii_case(known.as_str().as_bytes());
        let ours = (is(&CONNECTION) && !framing.switching)
            || (is(&CONTENT_LENGTH) && !keeps_length)
            || is(&TRANSFER_ENCODING);
        if ours {
            continue;
        }
        has_date |= is(&DATE);
        encode::lowercase_header_line(out, name, value);
    }
    if !framing.bodyless {
        match framing.exact {
            Some(n) => encode::content_length_line(out, n),
            None if framing.chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {}
        }
    }
    if !has_date {
        encode::date_line(out);
    }
    if framing.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response's head (with a small body, if any): queued on the worker's
/// ring while the connection stays open; written at once when it closes
/// after this response (the close would wait for the queued send anyway,
/// a turn of the event loop later).
async fn send_head(write: &mut WriteSide, out: Vec<u8>, closing: bool) -> io::Result<()> {
    if closing {
        write.write_all(&out).await
    } else {
        write.write_vec(out).await
    }
}

/// Writes the encoded head in `out` and streams `body` after it. The first
/// frame, if it is already there and small, goes out with the head.
async fn write_body(
    write: &mut WriteSide,
    mut out: Vec<u8>,
    mut body: ResponseBody,
    framing: &ResponseFraming,
) -> io::Result<()> {
    let chunked = framing.chunked;
    let first = match body.frame().now_or_never() {
        // Nothing yet (a stream that has not started): the head now, so that
        // the client sees the response begin.
        None => None,
        Some(None) => {
            if chunked {
                out.extend_from_slice(encode::LAST_CHUNK);
            }
            return send_head(write, out, framing.close).await;
        }
        Some(Some(frame)) => frame.map_err(body_error)?.into_data().ok(),
    };
    match first {
        Some(data) if data.len() <= COALESCE => {
            if chunked {
                encode::chunk(&mut out, &data);
            } else {
                out.extend_from_slice(&data);
            }
            let ended = body.is_end_stream();
            if ended && chunked {
                out.extend_from_slice(encode::LAST_CHUNK);
            }
            send_head(write, std::mem::take(&mut out), framing.close).await?;
            if ended {
                return Ok(());
            }
        }
        Some(data) => {
            send_head(write, std::mem::take(&mut out), framing.close).await?;
            write_data(write, &mut out, &data, chunked).await?;
        }
        // Not started, or trailers (HTTP/1.1 clients get none).
        None => send_head(write, std::mem::take(&mut out), framing.close).await?,
    }
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(body_error)?.into_data() {
            write_data(write, &mut out, &data, chunked).await?;
        }
    }
    if chunked {
        write.write_all(encode::LAST_CHUNK).await?;
    }
    Ok(())
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
    if chunked {
        write_chunk(write, scratch, data).await
    } else {
        write.write_all(data).await
    }
}

/// A request body read from the connection while the request is served.
pub(crate) struct NativeBody {
    reader: Option<Reader>,
    decoder: Decoder,
    slot: ReaderSlot,
}

impl std::fmt::Debug for NativeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeBody")
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl NativeBody {
    /// The body was read to its end: the connection goes back at once (the
    /// upstream client may never poll an ended body again).
    fn done(&mut self) {
        if let Some(reader) = self.reader.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(reader);
        }
    }
}

/// Reads more of the connection into `buf`; `Ok(0)` at EOF.
fn poll_fill(
    io: &mut ReadSide,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < BODY_READ / 4 {
        buf.reserve(BODY_READ);
    }
    let read = io.read_buf(buf);
    pin!(read).poll(cx)
}

impl Body for NativeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(Reader { io, buf }) = this.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(this
            .decoder
            .poll_frame(buf, cx, |buf, cx| poll_fill(io, buf, cx)));
        match &polled {
            // The connection is out of step: it closes after the response.
            Some(Err(_)) => this.reader = None,
            Some(Ok(_)) if !this.decoder.is_done() => {}
            _ => this.done(),
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
