//! One client connection of the loop: reading request heads, the exchange
//! with an upstream for each, and the response relayed back.
//!
//! The client socket has a multishot receive armed for its life (paused
//! while too much is read ahead) and at most one send in flight; an
//! upstream link likewise. A link stops reading while the client is far
//! behind (the client's pace bounds what is buffered). A connection closes
//! by shutting its sockets down, which ends whatever is in flight, and is
//! freed once nothing is.

use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use cutover_uring::ops::{self, Completion};
use http::Version;
use tokio::sync::watch;

use super::bulk;
use super::exchange::{Exchange, Origin, Phase};
use super::idle::Links;
use super::{kind, token, Adopted};
use crate::forward::{self, ConnCtx};
use crate::http1::head::{self, BodyLength, HeadError, RequestHead};
use crate::http1::server::{head_error_response, ConnLife, Exits};
use crate::pool::ConnectError;

/// A request head still incomplete at this size goes to the full path
/// (which answers 431 when it is too large).
const MAX_HEAD: usize = 64 * 1024;

/// Where the client side is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Waiting for a request: the idle timeout runs.
    Idle,
    /// Part of a head came: the header read timeout runs.
    Head,
    /// A request is being served; nothing is read.
    Busy,
}

/// What becomes of the connection once nothing is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open,
    Close,
    /// To the full path, with the bytes read so far.
    FullPath,
}

pub(super) struct Conn {
    slot: u32,
    id: u64,
    client: std::net::TcpStream,
    ctx: Arc<ConnCtx>,
    life: ConnLife,
    exits: Exits,
    stopped: watch::Receiver<bool>,
    /// Bytes read and not yet parsed.
    inbuf: BytesMut,
    reading: Reading,
    deadline: Option<Instant>,
    read_in_flight: bool,
    /// Its receive was cancelled while too much is read ahead.
    read_paused: bool,
    send_in_flight: bool,
    exchange: Option<Box<Exchange>>,
    /// The response being sent is the connection's last.
    close_after_response: bool,
    fate: Fate,
}

impl Conn {
    pub(super) fn new(slot: u32, id: u64, adopted: Adopted) -> Conn {
        let Adopted {
            stream,
            first,
            ctx,
            life,
            exits,
            stopped,
        } = adopted;
        Conn {
            slot,
            id,
            client: stream,
            ctx,
            life,
            exits,
            stopped,
            inbuf: first,
            reading: Reading::Head,
            deadline: None,
            read_in_flight: false,
            read_paused: false,
            send_in_flight: false,
            exchange: None,
            close_after_response: false,
            fate: Fate::Open,
        }
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    fn origin(&self) -> Origin<'_> {
        Origin {
            slot: self.slot,
            conn: self.id,
            ctx: &self.ctx,
        }
    }

    /// Starts on the bytes the full path read (the sniffed start of the
    /// first request).
    pub(super) fn start(&mut self, links: &mut Links) {
        if *self.stopped.borrow() {
            return self.hand_to_full_path();
        }
        let settings = &self.ctx.shared.settings;
        self.deadline = Some(Instant::now() + settings.header_read_timeout);
        self.reading = Reading::Head;
        self.next_request(links);
    }

    /// Closed or handed on, and nothing of it in flight: its slot can go.
    pub(super) fn is_finished(&self) -> bool {
        self.fate != Fate::Open && self.is_quiet()
    }

    fn is_quiet(&self) -> bool {
        !self.read_in_flight
            && !self.send_in_flight
            && self.exchange.as_ref().is_none_or(|x| x.is_quiet())
    }

    /// Its slot is freed: closes, or goes to the full path.
    pub(super) fn finish(mut self, links: &mut Links) {
        if let Some(exchange) = self.exchange.take() {
            exchange.release(links);
        }
        if self.fate != Fate::FullPath {
            return;
        }
        let stream = match tokio::net::TcpStream::from_std(self.client) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "a connection cannot rejoin the event loop");
                return;
            }
        };
        crate::http1::server::serve_resumed(
            stream,
            self.inbuf,
            self.ctx,
            self.stopped,
            self.life,
            self.exits,
        );
    }

    /// Deadlines and signals nothing completes for.
    pub(super) fn tick(&mut self, now: Instant) {
        if self.fate != Fate::Open {
            return;
        }
        let stopping = *self.stopped.borrow();
        if self.reading != Reading::Busy {
            let asked = self.life.idle.as_ref().is_some_and(|i| i.asked_to_close());
            if asked || self.deadline.is_some_and(|d| now >= d) {
                if self.reading == Reading::Head && !asked {
                    tracing::debug!("client did not send a complete request head in time");
                }
                return self.close();
            }
            if stopping {
                self.hand_to_full_path();
            }
        } else if let Some(exchange) = &mut self.exchange {
            if exchange.phase() == Phase::Waiting && self.deadline.is_some_and(|d| now >= d) {
                exchange.time_out();
            }
        }
    }

    /// Closes: both sockets shut down, so that everything in flight ends.
    fn close(&mut self) {
        self.fate = Fate::Close;
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(exchange) = &mut self.exchange {
            exchange.shut_down_links();
        }
    }

    /// Hands the connection to the full path once nothing is in flight
    /// (its receive is cancelled first).
    fn hand_to_full_path(&mut self) {
        self.fate = Fate::FullPath;
        if self.read_in_flight {
            ops::cancel(token(self.slot, kind::CLIENT_RECV));
        }
    }

    pub(super) fn complete(&mut self, id: u32, kind: u8, done: Completion, links: &mut Links) {
        match kind {
            kind::CLIENT_RECV => self.received(done, links),
            kind::CLIENT_SEND => self.sent(done, links),
            _ => self.link_completed(id, kind, done, links),
        }
    }

    /// Waits for the client's next bytes.
    /// Arms the client's receive unless it is armed: it stays armed while
    /// the connection lives (paused only while too much is read ahead).
    fn read(&mut self) {
        if self.read_in_flight {
            return;
        }
        if ops::recv_multishot(self.client.as_fd(), token(self.slot, kind::CLIENT_RECV)).is_err() {
            return self.close();
        }
        self.read_in_flight = true;
        self.read_paused = false;
    }

    fn received(&mut self, done: Completion, links: &mut Links) {
        if !done.more {
            self.read_in_flight = false;
        }
        if let Some(buf) = done.buf {
            if self.fate != Fate::Close {
                // Even on the way to the full path: those bytes go with it.
                self.inbuf.extend_from_slice(&buf);
            }
            links.recycle(buf);
        }
        if self.fate != Fate::Open {
            return;
        }
        let errno = |e: rustix::io::Errno| -e.raw_os_error();
        if done.result == errno(rustix::io::Errno::NOBUFS)
            || (done.result == errno(rustix::io::Errno::CANCELED) && self.read_paused)
        {
            // Out of receive buffers for a moment, or paused on purpose.
            if self.reading != Reading::Busy {
                self.read();
            }
            return;
        }
        if done.result <= 0 {
            return self.close();
        }
        if self.reading == Reading::Busy {
            // Pipelined: read on the next request's turn; not too far.
            if self.inbuf.len() > MAX_HEAD && self.read_in_flight && !self.read_paused {
                self.read_paused = true;
                ops::cancel(token(self.slot, kind::CLIENT_RECV));
            }
            return;
        }
        if self.reading == Reading::Idle {
            // A request starts arriving; one asked to close meanwhile
            // closes instead (as after a timeout).
            if self.life.idle.as_ref().is_some_and(|i| !i.set_busy()) {
                return self.close();
            }
            self.reading = Reading::Head;
            self.deadline = Some(Instant::now() + self.ctx.shared.settings.header_read_timeout);
        }
        self.next_request(links);
    }

    /// Parses the next request head if one is complete, and serves it,
    /// hands it to the full path, or reads on.
    fn next_request(&mut self, links: &mut Links) {
        if self.inbuf.is_empty() {
            return self.read();
        }
        let head = match head::parse_request(&mut self.inbuf) {
            Ok(Some(head)) => head,
            Ok(None) if self.inbuf.len() < MAX_HEAD => return self.read(),
            // The full path answers 431 (it reads no further).
            Ok(None) => return self.hand_to_full_path(),
            Err(bad) => return self.refuse(bad),
        };
        if !self.serves(&head) {
            return self.hand_on(&head);
        }
        let host = forward::requested_host(head.request.uri(), head.request.headers());
        let started = forward::start_on_http1_app(
            &self.ctx,
            host.as_ref().and_then(|h| h.to_str().ok()),
            head.request.uri().path(),
            head.request.headers(),
        );
        let Some(started) = started else {
            return self.hand_on(&head);
        };
        self.reading = Reading::Busy;
        self.deadline = None;
        let mut exchange = Exchange::new(&self.ctx, head, host.as_ref(), started);
        exchange.next_attempt(&self.origin(), links);
        self.exchange = Some(exchange);
        self.advance(links);
    }

    /// Hands the connection to the full path with `head` as it came in
    /// front of what was read after it.
    fn hand_on(&mut self, head: &RequestHead) {
        let mut whole = BytesMut::with_capacity(head.raw.len() + self.inbuf.len());
        whole.extend_from_slice(&head.raw);
        whole.extend_from_slice(&self.inbuf);
        self.inbuf = whole;
        self.hand_to_full_path();
    }

    /// Answers a head that could not be read (as the full path does), then
    /// closes.
    fn refuse(&mut self, bad: HeadError) {
        self.reading = Reading::Busy;
        self.deadline = None;
        self.close_after_response = true;
        let out = head_error_response(bad);
        match ops::send(
            self.client.as_fd(),
            out,
            token(self.slot, kind::CLIENT_SEND),
        ) {
            Ok(()) => self.send_in_flight = true,
            Err(_) => self.close(),
        }
    }

    /// Whether the loop serves this request itself (see the module docs).
    fn serves(&self, head: &RequestHead) -> bool {
        let shared = &self.ctx.shared;
        head.request.version() == Version::HTTP_11
            && matches!(head.body, BodyLength::Empty | BodyLength::Exact(0))
            && !head.upgrade
            && !head.expect_continue
            && head.request.method().is_idempotent()
            && shared.redirect_https.is_none()
            && shared.acme_http01.is_none()
    }

    /// Moves the exchange on after any event: sends what is ready for the
    /// client, reads more from the upstream, or ends the exchange.
    fn advance(&mut self, links: &mut Links) {
        let Some(exchange) = &mut self.exchange else {
            return;
        };
        if exchange.failed_mid_body() {
            // What came before the fault still goes out; then the client
            // learns from the close that the response was cut short.
            exchange.drop_link(links);
        }
        if exchange.phase() == Phase::Waiting && self.deadline.is_none() {
            self.deadline =
                Some(Instant::now() + self.ctx.shared.settings.upstream_response_timeout);
        }
        if self.send_in_flight || self.fate == Fate::Close {
            return;
        }
        if let Some(body) = exchange.take_bulk(&self.client) {
            return super::relay_bulk(self.slot, self.id, body);
        }
        if exchange.awaits_bulk() {
            return;
        }
        let done = exchange.phase() == Phase::Done;
        if let Some(out) = exchange.take_output(links) {
            match ops::send(
                self.client.as_fd(),
                out,
                token(self.slot, kind::CLIENT_SEND),
            ) {
                Ok(()) => self.send_in_flight = true,
                Err((buf, _)) => {
                    links.recycle(buf);
                    return self.close();
                }
            }
            if done {
                // Its last bytes are the kernel's: the request is over (as
                // the full path's ends with its body's last frame).
                self.end_exchange(links);
            }
            return;
        }
        if exchange.failed_mid_body() {
            return self.close();
        }
        match exchange.phase() {
            Phase::Relaying | Phase::Waiting => exchange.read_link(),
            Phase::Done => {
                self.end_exchange(links);
                self.after_response(links);
            }
            Phase::Connecting => {}
        }
    }

    fn sent(&mut self, done: Completion, links: &mut Links) {
        self.send_in_flight = false;
        if let Some(buf) = done.buf {
            links.recycle(buf);
        }
        if done.result < 0 {
            // The client is gone; the response cannot be finished.
            return self.close();
        }
        if self.exchange.is_some() {
            return self.advance(links);
        }
        if self.fate == Fate::Open {
            self.after_response(links);
        }
    }

    /// The response is complete: counts it, keeps the upstream link, and
    /// releases the request's guards.
    fn end_exchange(&mut self, links: &mut Links) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        self.close_after_response = exchange.close_client();
        exchange.finish(links);
    }

    /// The response went out: the next request, or the connection's end.
    fn after_response(&mut self, links: &mut Links) {
        if self.close_after_response {
            return self.close();
        }
        if *self.stopped.borrow() {
            return self.hand_to_full_path();
        }
        self.reading = Reading::Idle;
        if self.life.idle.as_ref().is_some_and(|i| !i.set_idle()) {
            return self.close();
        }
        if self.inbuf.is_empty() {
            // An idle connection keeps no buffer (this one may still hold
            // the allocation the last head was read into).
            self.inbuf = BytesMut::new();
            self.deadline = Some(Instant::now() + self.ctx.shared.settings.idle_timeout);
            return self.read();
        }
        // Pipelined: the next head is already here.
        if self.life.idle.as_ref().is_some_and(|i| !i.set_busy()) {
            return self.close();
        }
        self.reading = Reading::Head;
        self.deadline = Some(Instant::now() + self.ctx.shared.settings.header_read_timeout);
        self.next_request(links);
    }

    /// The relay task of the current request's body ended.
    pub(super) fn relayed(&mut self, relayed: bulk::Relayed, links: &mut Links) {
        let Some(exchange) = &mut self.exchange else {
            return;
        };
        if !exchange.relayed(relayed) {
            // The client is gone; the response cannot be finished.
            return self.close();
        }
        self.advance(links);
    }

    /// A new upstream connection for the current request (or none).
    pub(super) fn connected(
        &mut self,
        result: Result<std::net::TcpStream, ConnectError>,
        links: &mut Links,
    ) {
        let Some(exchange) = &mut self.exchange else {
            return;
        };
        if exchange.phase() != Phase::Connecting || self.fate == Fate::Close {
            return;
        }
        let origin = Origin {
            slot: self.slot,
            conn: self.id,
            ctx: &self.ctx,
        };
        exchange.connected(result, &origin, links);
        self.advance(links);
    }

    fn link_completed(&mut self, id: u32, kind: u8, done: Completion, links: &mut Links) {
        let Some(exchange) = &mut self.exchange else {
            return;
        };
        let origin = Origin {
            slot: self.slot,
            conn: self.id,
            ctx: &self.ctx,
        };
        let closing = self.fate == Fate::Close;
        exchange.link_completed(id, kind, done, closing, &origin, links);
        if closing {
            return;
        }
        if exchange.phase() != Phase::Waiting {
            self.deadline = None;
        }
        self.advance(links);
    }
}
