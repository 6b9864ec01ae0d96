//! One request's way through the loop: the attempts on upstream links
//! (pooled, then fresh, then another endpoint, as the full path's retry
//! rule says), the response head rewritten as the full path does, and the
//! body relayed in the framing the client gets.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use cutover_uring::ops::{self, Completion};
use http::header::SET_COOKIE;
use http::{HeaderValue, Method, StatusCode};
use hyper::body::SizeHint;

use super::bulk;
use super::idle::{Link, Links};
use super::{kind, token};
use crate::access_log::{AccessLog, Entry};
use crate::balance::Tried;
use crate::body;
use crate::conn_io::ConnGuard;
use crate::endpoint::EndpointGuard;
use crate::error::ForwardError;
use crate::forward::{self, ConnCtx};
use crate::headers::{self, X_REQUEST_ID};
use crate::http1::body::{Decoded, Decoder};
use crate::http1::client::{closed_early, ExchangeError, OutgoingHead};
use crate::http1::encode::{self, RequestFraming};
use crate::http1::head::{self, HeadError, ParsedResponse, RequestHead, ResponseHead};
use crate::http1::server::{encode_response_head, map_fields, Asked, ResponseFraming};
use crate::metrics::{self, SlotMetrics};
use crate::pool::ConnectError;
use crate::upstream::{retry_rule, Attempt, Failure, InFlightGuard, Retry, MAX_POOLED_ATTEMPTS};

/// Response bytes buffered for a client before the link stops reading
/// until the client took them.
const MAX_BUFFERED: usize = 256 * 1024;
/// A body longer than this (or chunked, or delimited by the close) is
/// relayed by a task of the worker's runtime (see [`bulk`]).
const BULK: usize = 128 * 1024;
/// Informational responses skipped before the final one; more is a flood.
const MAX_INFORMATIONAL: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// A new upstream connection is being opened.
    Connecting,
    /// The request went out; its response head is awaited.
    Waiting,
    /// The response is being relayed.
    Relaying,
    /// The whole response is in `out` (and `piled`), with a relay task,
    /// or sent.
    Done,
}

/// Where the request came from, for the attempts.
pub(super) struct Origin<'a> {
    pub(super) slot: u32,
    pub(super) conn: u64,
    pub(super) ctx: &'a ConnCtx,
}

pub(super) struct Exchange {
    start: Instant,
    request_id: HeaderValue,
    /// `None` for a request answered before it reached an upstream.
    in_flight: Option<InFlightGuard>,
    /// Where a response the loop made itself is counted.
    answered_metrics: Option<Arc<SlotMetrics>>,
    sticky: Option<HeaderValue>,
    log: Option<(Box<Entry>, AccessLog)>,
    asked: Asked,
    /// The request as it goes upstream (kept for another attempt).
    head: Vec<u8>,
    _active: ConnGuard,
    tried: Tried,
    endpoint: Option<EndpointGuard>,
    pooled_attempts: usize,
    fresh_attempts: usize,
    link: Option<Link>,
    phase: Phase,
    /// Response bytes read and not yet relayed.
    upbuf: BytesMut,
    /// Bytes for the client, not yet sent.
    out: Vec<u8>,
    /// Body bytes received behind `out` for a body relayed in bulk (the
    /// link's receive reads ahead of the head), in order.
    piled: Vec<Vec<u8>>,
    informational: u8,
    decoder: Decoder,
    chunked: bool,
    /// The body is relayed in bulk (see [`BULK`]).
    bulk: bool,
    /// A relay task has the rest of the body.
    in_task: bool,
    reusable: bool,
    close_client: bool,
    failed_mid_body: bool,
    status: u16,
    bytes: u64,
}

impl Exchange {
    /// A request that was routed (`started`), or answered at once (the
    /// routing error).
    pub(super) fn new(
        ctx: &ConnCtx,
        head: RequestHead,
        host: Option<&HeaderValue>,
        started: Result<(InFlightGuard, Option<HeaderValue>), ForwardError>,
    ) -> Box<Exchange> {
        let request_id = headers::request_id(head.request.headers());
        let log = ctx.shared.access_log.as_ref().map(|log| {
            (
                forward::log_entry(ctx, &head.request, &request_id),
                log.clone(),
            )
        });
        let asked = Asked {
            head_method: head.request.method() == Method::HEAD,
            version: head.request.version(),
            keep_alive: head.keep_alive,
        };
        let (parts, ()) = head.request.into_parts();
        let mut exchange = Box::new(Exchange {
            start: Instant::now(),
            request_id,
            in_flight: None,
            answered_metrics: None,
            sticky: None,
            log,
            asked,
            head: Vec::new(),
            _active: ctx.activity.begin(),
            tried: Tried::default(),
            endpoint: None,
            pooled_attempts: 0,
            fresh_attempts: 0,
            link: None,
            phase: Phase::Connecting,
            upbuf: BytesMut::new(),
            out: ops::buffer(0),
            piled: Vec::new(),
            informational: 0,
            decoder: Decoder::Done,
            chunked: false,
            bulk: false,
            in_task: false,
            reusable: false,
            close_client: false,
            failed_mid_body: false,
            status: 0,
            bytes: 0,
        });
        match started {
            Ok((in_flight, sticky)) => {
                let upstream = Arc::clone(in_flight.upstream());
                let proxied =
                    forward::proxied_head(ctx, &parts, host, &exchange.request_id, &upstream);
                let mut encoded = ops::buffer(512);
                proxied.encode(&mut encoded, RequestFraming::None);
                exchange.head = encoded;
                exchange.in_flight = Some(in_flight);
                exchange.sticky = sticky;
            }
            Err(e) => exchange.answer_error(&e),
        }
        exchange
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    pub(super) fn failed_mid_body(&self) -> bool {
        self.failed_mid_body
    }

    pub(super) fn close_client(&self) -> bool {
        self.close_client
    }

    pub(super) fn is_quiet(&self) -> bool {
        !self.in_task && self.link.as_ref().is_none_or(Link::is_quiet)
    }

    pub(super) fn shut_down_links(&mut self) {
        if let Some(link) = &self.link {
            link.shut_down();
        }
    }

    /// The response head is overdue: the link is shut down, and its
    /// receive ends as a timeout.
    pub(super) fn time_out(&mut self) {
        if let Some(link) = &mut self.link {
            link.timed_out = true;
            link.shut_down();
        }
    }

    /// The next attempt: a pooled link of the endpoint, else a new one.
    pub(super) fn next_attempt(&mut self, origin: &Origin<'_>, links: &mut Links) {
        let Some(in_flight) = &self.in_flight else {
            return;
        };
        if self.phase == Phase::Done {
            return;
        }
        let upstream = Arc::clone(in_flight.upstream());
        if self.endpoint.is_none() {
            match upstream.pick(&self.tried) {
                Some(endpoint) => self.endpoint = Some(endpoint),
                None => return self.answer_error(&upstream.no_endpoint()),
            }
        }
        let Some(endpoint) = &self.endpoint else {
            return;
        };
        if self.pooled_attempts < MAX_POOLED_ATTEMPTS {
            if let Some(link) = links.take_idle(endpoint.endpoint(), origin.slot) {
                self.pooled_attempts += 1;
                return self.send_on(link, links);
            }
        }
        self.fresh_attempts += 1;
        self.phase = Phase::Connecting;
        let timeout = origin.ctx.shared.settings.upstream_connect_timeout;
        super::connect(origin.slot, origin.conn, endpoint.addr(), timeout);
    }

    /// A new upstream connection (or why none) for this request.
    pub(super) fn connected(
        &mut self,
        result: Result<std::net::TcpStream, ConnectError>,
        origin: &Origin<'_>,
        links: &mut Links,
    ) {
        let (Some(in_flight), Some(endpoint)) = (&self.in_flight, &self.endpoint) else {
            return;
        };
        let upstream = Arc::clone(in_flight.upstream());
        match result {
            Ok(stream) => {
                endpoint.connected();
                let endpoint = Arc::clone(endpoint.endpoint());
                let link = links.open(stream, endpoint, upstream, origin.slot);
                self.send_on(link, links);
            }
            Err(e) => {
                let failed = upstream.connect_failed(endpoint, e, &origin.ctx.shared.settings);
                self.try_elsewhere(failed.error, failed.retry, origin, links);
            }
        }
    }

    /// Sends the request on `link` and starts reading its response.
    fn send_on(&mut self, mut link: Link, links: &mut Links) {
        let mut request = links.buffer(self.head.len());
        request.extend_from_slice(&self.head);
        match ops::send(link.fd(), request, token(link.id, kind::LINK_SEND)) {
            Ok(()) => link.sending = true,
            Err((buf, e)) => {
                links.recycle(buf);
                links.bury(link);
                let source = ExchangeError::Unsent(e);
                return self.answer_error(&ForwardError::Exchange {
                    app: self.app(),
                    source,
                });
            }
        }
        if link.read().is_err() {
            link.shut_down();
        }
        self.upbuf.clear();
        self.informational = 0;
        self.phase = Phase::Waiting;
        self.link = Some(link);
    }

    fn app(&self) -> Arc<str> {
        self.in_flight
            .as_ref()
            .map_or_else(|| Arc::from("-"), |g| g.upstream().app_name())
    }

    /// After a failed attempt on an endpoint: another endpoint if the rule
    /// allows and one is left, else the failure is the answer.
    fn try_elsewhere(
        &mut self,
        error: ForwardError,
        retry: Retry,
        origin: &Origin<'_>,
        links: &mut Links,
    ) {
        if let Some(endpoint) = self.endpoint.take() {
            self.tried.push(endpoint.addr());
        }
        let next = match (retry, &self.in_flight) {
            (Retry::OtherEndpoint, Some(in_flight)) => in_flight.upstream().pick(&self.tried),
            _ => None,
        };
        match next {
            Some(endpoint) => {
                tracing::debug!(to = %endpoint.addr(), %error,
                    "request not sent or replayable; trying another endpoint");
                self.endpoint = Some(endpoint);
                self.pooled_attempts = 0;
                self.fresh_attempts = 0;
                self.next_attempt(origin, links);
            }
            None => self.answer_error(&error),
        }
    }

    /// The current link failed before a response head: the retry rule
    /// says where the request goes next.
    fn link_failed(&mut self, error: ExchangeError, origin: &Origin<'_>, links: &mut Links) {
        let Some(link) = self.link.take() else {
            return;
        };
        let reused = link.reused;
        links.bury(link);
        let attempt = Attempt {
            reused,
            replayable: true,
            fresh_attempts: self.fresh_attempts,
        };
        match retry_rule(Failure::Exchange(&error), attempt) {
            Retry::SameEndpoint => {
                tracing::debug!(%error,
                    "upstream connection closed before a response; trying another connection");
                self.next_attempt(origin, links);
            }
            retry => {
                let (Some(in_flight), Some(endpoint)) = (&self.in_flight, &self.endpoint) else {
                    return;
                };
                endpoint.fail();
                let failed = in_flight.upstream().exchange_failed(endpoint, error);
                self.try_elsewhere(failed, retry, origin, links);
            }
        }
    }

    /// An operation on a link of this exchange ended. `closing`: the client
    /// connection is closing; only the bookkeeping is done.
    pub(super) fn link_completed(
        &mut self,
        id: u32,
        kind: u8,
        done: Completion,
        closing: bool,
        origin: &Origin<'_>,
        links: &mut Links,
    ) {
        let Some(link) = self.link.as_mut().filter(|link| link.id == id) else {
            if let Some(buf) = done.buf {
                links.recycle(buf);
            }
            return;
        };
        link.ended(kind, &done);
        if closing {
            if let Some(buf) = done.buf {
                links.recycle(buf);
            }
            return;
        }
        match kind {
            kind::LINK_SEND => {
                if let Some(buf) = done.buf {
                    links.recycle(buf);
                }
                if done.result < 0 && self.phase != Phase::Waiting {
                    // The response came (or is coming): the receive side
                    // tells how it ends; the link is not reused.
                    self.reusable = false;
                } else if done.result < 0 {
                    let error = io::Error::from_raw_os_error(-done.result);
                    let error = if link.received {
                        ExchangeError::Io(error)
                    } else {
                        ExchangeError::Unsent(error)
                    };
                    self.link_failed(error, origin, links);
                }
            }
            kind::LINK_RECV => self.link_received(done, origin, links),
            _ => {}
        }
    }

    fn link_received(&mut self, done: Completion, origin: &Origin<'_>, links: &mut Links) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let errno = |e: rustix::io::Errno| -e.raw_os_error();
        if done.result == errno(rustix::io::Errno::NOBUFS)
            || (done.result == errno(rustix::io::Errno::CANCELED) && link.paused)
        {
            // Out of receive buffers for a moment, or paused on purpose:
            // it reads again when more is wanted (see `read_link`).
            return;
        }
        if done.result > 0 {
            link.received = true;
            let Some(buf) = done.buf else { return };
            if self.phase == Phase::Done {
                // More than the response: never relayed, and the link is
                // not reused.
                self.reusable = false;
                return links.recycle(buf);
            }
            if self.phase == Phase::Relaying && self.upbuf.is_empty() && !self.chunked {
                self.relay_as_is(buf, links);
            } else {
                self.upbuf.extend_from_slice(&buf);
                links.recycle(buf);
                match self.phase {
                    Phase::Waiting => return self.read_head(origin, links),
                    _ => self.relay(),
                }
            }
            return self.pause_if_full();
        }
        if let Some(buf) = done.buf {
            links.recycle(buf);
        }
        let timed_out = link.timed_out;
        let received = link.received;
        if self.phase == Phase::Done {
            // The stream ended after the whole response.
            self.reusable = false;
            return;
        }
        if self.phase == Phase::Relaying {
            // The end of the stream: the end of a body delimited by it,
            // else a body cut short.
            return match self.decoder.at_eof() {
                Ok(_) => {
                    self.reusable = false;
                    self.relay();
                }
                Err(_) => self.failed_mid_body = true,
            };
        }
        let error = if timed_out {
            ExchangeError::Timeout(origin.ctx.shared.settings.upstream_response_timeout)
        } else if done.result == 0 {
            closed_early(received)
        } else {
            let error = io::Error::from_raw_os_error(-done.result);
            if received {
                ExchangeError::Io(error)
            } else {
                ExchangeError::ClosedBeforeResponse(Some(error))
            }
        };
        self.link_failed(error, origin, links);
    }

    /// Parses the response head once it is complete, else reads on.
    fn read_head(&mut self, origin: &Origin<'_>, links: &mut Links) {
        loop {
            let parsed = head::parse_response(&mut self.upbuf, self.asked.head_method);
            let error = match parsed {
                Ok(None) => return self.read_link(),
                Ok(Some(ParsedResponse::Informational)) => {
                    self.informational += 1;
                    if self.informational <= MAX_INFORMATIONAL {
                        continue;
                    }
                    ExchangeError::Invalid(HeadError::Malformed("too many informational responses"))
                }
                Ok(Some(ParsedResponse::Switching(_))) => ExchangeError::UnexpectedSwitch,
                Ok(Some(ParsedResponse::Final(head))) => return self.start_response(head),
                Err(e) => ExchangeError::Invalid(e),
            };
            return self.link_failed(error, origin, links);
        }
    }

    /// The response head as the client gets it (as `forward::respond` and
    /// the HTTP/1.1 server write it), then as much body as is here.
    fn start_response(&mut self, head: ResponseHead) {
        let Some(in_flight) = &mut self.in_flight else {
            return;
        };
        if let Some(endpoint) = self.endpoint.take() {
            in_flight.answered_by(endpoint);
        }
        let ResponseHead {
            status,
            fields,
            body,
            reusable,
            hop_by_hop,
            ..
        } = head;
        if status.is_server_error() {
            in_flight.upstream().count_5xx();
        }
        let sticky = self.sticky.take();
        // As `forward::respond` rewrites the map: hop-by-hop fields out,
        // the sticky cookie and the request id (replacing the upstream's) in.
        let named = hop_by_hop && headers::connection_names_fields(fields.values("connection"));
        let passed = fields.iter().filter(|(name, _)| {
            let hop = hop_by_hop && headers::is_hop_by_hop_name(name)
                || named && headers::is_named_by_connection(name, fields.values("connection"));
            !(hop || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes()))
        });
        let ours = sticky
            .iter()
            .map(|cookie| (SET_COOKIE.as_str().as_bytes(), cookie.as_bytes()))
            .chain([(X_REQUEST_ID.as_str().as_bytes(), self.request_id.as_bytes())]);
        self.decoder = Decoder::new(body);
        self.reusable = reusable;
        let size = self.decoder.size_hint();
        // An upstream's `Connection: close` is hop-by-hop: not the client's.
        let framing = encode_head(
            &mut self.out,
            &self.asked,
            status,
            false,
            passed.chain(ours),
            size,
        );
        self.framed(status, &framing);
        self.phase = Phase::Relaying;
        self.relay();
        self.bulk = match self.decoder {
            Decoder::Exact(left) => left > BULK as u64,
            Decoder::UntilClose | Decoder::Chunked(_) => true,
            Decoder::Done => false,
        };
        if self.bulk {
            // The link's receive into shared buffers ends (what it already
            // read still comes); a relay task reads the rest.
            if let Some(link) = self.link.as_mut().filter(|link| link.reading) {
                link.paused = true;
                ops::cancel(token(link.id, kind::LINK_RECV));
            }
        } else {
            self.pause_if_full();
        }
    }

    /// Notes how the response head just encoded frames what follows.
    fn framed(&mut self, status: StatusCode, framing: &ResponseFraming) {
        self.close_client = framing.close;
        self.chunked = framing.chunked && !framing.bodyless;
        self.status = status.as_u16();
    }

    /// Body bytes that go out as they came (a length-delimited or
    /// until-close body to a client that gets it the same way): the
    /// received buffer becomes the output, no copy, when nothing else waits.
    fn relay_as_is(&mut self, mut buf: Vec<u8>, links: &mut Links) {
        let take = match self.decoder {
            Decoder::Exact(left) => usize::try_from(left).unwrap_or(usize::MAX).min(buf.len()),
            Decoder::UntilClose => buf.len(),
            Decoder::Chunked(_) | Decoder::Done => {
                self.upbuf.extend_from_slice(&buf);
                links.recycle(buf);
                return self.relay();
            }
        };
        if let Decoder::Exact(left) = self.decoder {
            let left = left - take as u64;
            self.decoder = if left == 0 {
                Decoder::Done
            } else {
                Decoder::Exact(left)
            };
        }
        if take < buf.len() {
            // More than the framing said: never reuse the link.
            self.reusable = false;
            buf.truncate(take);
        }
        self.bytes += take as u64;
        if self.out.is_empty() {
            links.recycle(std::mem::replace(&mut self.out, buf));
        } else if self.bulk {
            // Read ahead of the head for a body the relay task sends: it
            // goes out as it is, behind `out`.
            self.piled.push(buf);
        } else {
            self.out.extend_from_slice(&buf);
            links.recycle(buf);
        }
        if self.decoder.is_done() {
            self.phase = Phase::Done;
        }
    }

    /// Moves the body bytes read so far into `out`, framed for the client.
    fn relay(&mut self) {
        loop {
            match self.decoder.decode(&mut self.upbuf) {
                Ok(Decoded::Data(data)) => {
                    self.bytes += data.len() as u64;
                    if self.chunked {
                        encode::chunk(&mut self.out, &data);
                    } else {
                        self.out.extend_from_slice(&data);
                    }
                }
                Ok(Decoded::Trailers(_) | Decoded::End) => {
                    if self.chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    // More than the framing said: never reuse the link.
                    if !self.upbuf.is_empty() {
                        self.reusable = false;
                    }
                    self.phase = Phase::Done;
                    return;
                }
                Ok(Decoded::NeedMore) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "upstream response body is malformed");
                    self.failed_mid_body = true;
                    return;
                }
            }
        }
    }

    /// Reads more of the response, unless the link's receive is armed (a
    /// body relayed in bulk never gets here: see [`Exchange::awaits_bulk`]).
    pub(super) fn read_link(&mut self) {
        let Some(link) = self.link.as_mut() else {
            self.failed_mid_body = self.phase == Phase::Relaying;
            return;
        };
        if link.read().is_err() {
            self.failed_mid_body = true;
        }
    }

    /// The rest of a large body for a relay task, once the link's receive
    /// ended (what it read is here): the client's bytes not yet sent, the
    /// body's framing and the sockets (duplicated) go with it. (A body
    /// that came whole with its head goes the same way: its bytes are in
    /// pieces.)
    pub(super) fn take_bulk(&mut self, client: &std::net::TcpStream) -> Option<bulk::Body> {
        let relaying = matches!(self.phase, Phase::Relaying | Phase::Done);
        if !self.bulk || self.in_task || !relaying || self.failed_mid_body {
            return None;
        }
        let link = self.link.as_ref().filter(|link| !link.reading)?;
        let (client, upstream) = match (client.try_clone(), link.stream.try_clone()) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "a large response cannot be relayed");
                self.failed_mid_body = true;
                return None;
            }
        };
        self.in_task = true;
        Some(bulk::Body {
            client,
            link: upstream,
            decoder: std::mem::replace(&mut self.decoder, Decoder::Done),
            // A body already whole has its last chunk in `out`.
            chunked: self.chunked && self.phase != Phase::Done,
            pending: std::iter::once(std::mem::take(&mut self.out))
                .chain(self.piled.drain(..))
                .collect(),
            upbuf: std::mem::take(&mut self.upbuf),
        })
    }

    /// A body relayed in bulk is not over: its relay task runs, or waits
    /// for the link's receive to end (nothing goes to the client from here
    /// meanwhile: the task sends what is here first). Not when the body
    /// failed or its link is gone: what is here then goes out as usual.
    pub(super) fn awaits_bulk(&self) -> bool {
        self.bulk && !self.failed_mid_body && (self.in_task || self.link.is_some())
    }

    /// The relay task ended (see [`bulk`]). Whether the client is still
    /// there.
    pub(super) fn relayed(&mut self, relayed: bulk::Relayed) -> bool {
        // The body is over, one way or the other: no second task.
        self.in_task = false;
        self.bulk = false;
        self.bytes += relayed.bytes;
        match relayed.end {
            bulk::End::Whole { exact } => {
                self.reusable &= exact;
                self.phase = Phase::Done;
                true
            }
            bulk::End::UpstreamFault => {
                self.failed_mid_body = true;
                true
            }
            bulk::End::ClientGone => {
                self.failed_mid_body = true;
                false
            }
        }
    }

    /// Stops the link's receive while the client has much to take (it
    /// reads again once that went out: see `read_link`).
    fn pause_if_full(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if link.reading
            && !link.paused
            && !self.bulk
            && self.out.len() + self.upbuf.len() > MAX_BUFFERED
        {
            link.paused = true;
            ops::cancel(token(link.id, kind::LINK_RECV));
        }
    }

    /// Gives up on the link (the response was cut short).
    pub(super) fn drop_link(&mut self, links: &mut Links) {
        if let Some(link) = self.link.take() {
            links.bury(link);
        }
    }

    /// The bytes for the client that are ready, if any.
    pub(super) fn take_output(&mut self, links: &mut Links) -> Option<Vec<u8>> {
        // Read ahead for a relay task that never came (the body failed, or
        // its link is gone): it goes out here, behind `out`.
        for piece in self.piled.drain(..) {
            self.out.extend_from_slice(&piece);
            links.recycle(piece);
        }
        if self.out.is_empty() {
            return None;
        }
        let next = links.buffer(0);
        Some(std::mem::replace(&mut self.out, next))
    }

    /// A response the loop makes itself (as `forward::error_response`).
    fn answer_error(&mut self, e: &ForwardError) {
        tracing::debug!(error = %e, status = %e.status(), "request not proxied");
        let (mut parts, body) = forward::error_response(e).into_parts();
        parts.headers.insert(&X_REQUEST_ID, self.request_id.clone());
        let connection_close = headers::connection_has(&parts.headers, "close");
        let bytes = body.full_bytes().cloned().unwrap_or_default();
        match &self.in_flight {
            Some(in_flight) => {
                if e.is_upstream_fault() {
                    in_flight.upstream().count_5xx();
                }
            }
            None => {
                let slot = metrics::global().slot(e.app().unwrap_or("-"), metrics::NO_SLOT);
                self.answered_metrics = Some(slot);
            }
        }
        let fields = map_fields(&parts.headers);
        let size = SizeHint::with_exact(bytes.len() as u64);
        let framing = encode_head(
            &mut self.out,
            &self.asked,
            parts.status,
            connection_close,
            fields,
            size,
        );
        self.framed(parts.status, &framing);
        if !self.asked.head_method {
            self.out.extend_from_slice(&bytes);
            self.bytes = bytes.len() as u64;
        }
        self.chunked = false;
        self.reusable = false;
        self.phase = Phase::Done;
    }

    /// The response went out whole: counts it, keeps a reusable link, then
    /// lets go of the in-flight count (in this order: a drain that sees
    /// zero knows no link is kept for the upstream after).
    pub(super) fn finish(mut self: Box<Self>, links: &mut Links) {
        let upstream = self.in_flight.as_ref().map(|g| Arc::clone(g.upstream()));
        let recorded = body::Exchange {
            start: self.start,
            status: self.status,
            bytes: self.bytes,
            metrics: self.answered_metrics.take(),
            log: self.log.take(),
        };
        recorded.record(upstream.as_ref());
        if let Some(link) = self.link.take() {
            let keep = self.reusable
                && self.phase == Phase::Done
                && self.upbuf.is_empty()
                && !link.sending
                // A cancelled receive still to end would end while idle.
                && !(link.paused && link.reading)
                && upstream.as_ref().is_some_and(|u| !u.is_retired())
                && !link.endpoint.is_removed();
            if keep {
                links.put_idle(link);
            } else {
                links.bury(link);
            }
        }
        self.in_flight = None;
        ops::give_back(std::mem::take(&mut self.head));
        ops::give_back(std::mem::take(&mut self.out));
    }

    /// The connection ends with this exchange unfinished.
    pub(super) fn release(mut self: Box<Self>, links: &mut Links) {
        if let Some(link) = self.link.take() {
            links.bury(link);
        }
    }
}

/// Encodes a response head for this client (as the HTTP/1.1 server does);
/// the framing it chose.
fn encode_head<'a>(
    out: &mut Vec<u8>,
    asked: &Asked,
    status: StatusCode,
    connection_close: bool,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    size: SizeHint,
) -> ResponseFraming {
    let framing = ResponseFraming::new(status, connection_close, size, asked, false);
    encode_response_head(out, status, fields, &framing, asked.version);
    framing
}
