//! One running release as the proxy sees it: its address, its connection
//! pool, its in-flight count and the drain protocol.
//!
//! # The switch/drain race
//!
//! A request may pick an upstream from the route table just before the engine
//! publishes a new table and drains the old upstream. The two sides follow a
//! Dekker-style protocol on two `SeqCst` atomics so that no request is lost
//! and no drain ends early:
//!
//! - request: increment `in_flight`, then read `retired`. If retired, undo
//!   the increment (waking the drainer) and route again: the table already
//!   points elsewhere.
//! - drain: set `retired`, then wait until `in_flight` reads zero.
//!
//! With sequentially consistent ordering at least one side sees the other's
//! write: either the request sees `retired` and backs off, or the drain sees
//! the request's increment and waits for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::body::{RequestBody, RequestBodyError, Source};
use crate::error::ForwardError;
use crate::headers::ProxiedHead;
use crate::http1::client::{ExchangeError, Exchanged, Http1Body, OutgoingHead, UpstreamConn};
use crate::http1::io::Prefixed;
use crate::metrics::SlotMetrics;
use crate::pool::{self, ConnectError, Pool};
use crate::settings::ProxySettings;

/// The sending half of an upstream's HTTP/2 connection (cheap to clone).
type H2Conn = hyper::client::conn::http2::SendRequest<RequestBody>;

/// Pooled connections a request tries (they may turn out closed) before it
/// opens a fresh one.
const MAX_POOLED_ATTEMPTS: usize = 16;
/// Fresh connections a request tries when each closes before taking it.
const MAX_FRESH_ATTEMPTS: usize = 2;

/// One running release of one app in one slot.
#[derive(Debug)]
pub struct Upstream {
    app: Arc<str>,
    slot: Box<str>,
    release: Box<str>,
    addr: SocketAddr,
    /// `Host` sent upstream when the client sent none (HTTP/1.0).
    fallback_host: Option<HeaderValue>,
    in_flight: AtomicUsize,
    retired: AtomicBool,
    drained: Notify,
    requests: AtomicU64,
    responses_5xx: AtomicU64,
    connect_errors: AtomicU64,
    /// Idle HTTP/1.1 keep-alive connections.
    pool: Pool,
    /// Upgraded connections (tunnels) open on this upstream.
    upgraded: AtomicUsize,
    /// Set when a drain timed out: open tunnels close (see `tunnel`).
    closing: watch::Sender<bool>,
    /// Woken when the last tunnel closes.
    tunnels_closed: Notify,
    /// Counters of this app's slot (shared with the slot's other releases).
    metrics: Arc<SlotMetrics>,
    /// The multiplexed connection, for apps spoken to in HTTP/2 (h2c).
    h2: Mutex<Option<H2Conn>>,
}

/// Counters of one upstream since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// Requests that started on this upstream.
    pub requests: u64,
    /// Responses with a 5xx status for requests on this upstream, whether the
    /// release sent them or the proxy did (502/504 when it failed to answer).
    pub responses_5xx: u64,
    /// Failed attempts to open a connection to this upstream.
    pub connect_errors: u64,
}

/// How [`Upstream::drain`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// The last in-flight request finished (or there was none).
    Drained { waited: Duration },
    /// The timeout passed with requests still in flight.
    TimedOut { still_in_flight: usize },
}

impl Upstream {
    /// Describes a release of `app` running in `slot`, reachable at `addr`.
    pub fn new(app: &str, slot: &str, release: &str, addr: SocketAddr) -> Arc<Upstream> {
        let metrics = crate::metrics::global().slot(app, slot);
        let upstream = Arc::new(Upstream {
            app: Arc::from(app),
            slot: Box::from(slot),
            release: Box::from(release),
            addr,
            fallback_host: HeaderValue::from_str(&addr.to_string()).ok(),
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            drained: Notify::new(),
            requests: AtomicU64::new(0),
            responses_5xx: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            pool: Pool::default(),
            upgraded: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            tunnels_closed: Notify::new(),
            metrics: Arc::clone(&metrics),
            h2: Mutex::new(None),
        });
        metrics.track(&upstream);
        upstream
    }

    pub(crate) fn metrics(&self) -> &Arc<SlotMetrics> {
        &self.metrics
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub(crate) fn app_name(&self) -> Arc<str> {
        Arc::clone(&self.app)
    }

    pub fn slot(&self) -> &str {
        &self.slot
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    /// Requests started on this upstream whose response has not ended yet.
    /// Once retired, it may also count, for an instant, a request that is
    /// being turned away to the new upstream.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Upgraded connections (WebSocket and other protocol upgrades) open on
    /// this upstream. Each also counts in [`Upstream::in_flight`].
    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::SeqCst)
    }

    /// Whether [`Upstream::drain`] was called: no new request starts on it.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Idle keep-alive connections currently pooled.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    pub fn stats(&self) -> UpstreamStats {
        UpstreamStats {
            requests: self.requests.load(Ordering::Relaxed),
            responses_5xx: self.responses_5xx.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
        }
    }

    /// Retires this upstream and waits for its in-flight requests and
    /// upgraded connections.
    ///
    /// Call it AFTER the route table no longer points here. From now on no
    /// new request starts on this upstream (one that raced with the switch is
    /// routed again, to the new table). Resolves the moment the last
    /// in-flight request's response has ended and the last upgraded
    /// connection has closed, or at `timeout`. At the timeout, upgraded
    /// connections still open are closed (WebSockets with a close frame 1001
    /// "going away" to both sides) and the drain returns once they are gone,
    /// a few seconds at most later. Idle pooled connections are closed
    /// either way.
    ///
    /// Retiring is final: to send traffic to the same address again (a
    /// rollback), publish a fresh [`Upstream::new`].
    pub async fn drain(&self, timeout: Duration) -> DrainOutcome {
        let start = Instant::now();
        self.retired.store(true, Ordering::SeqCst);
        let deadline = start.checked_add(timeout);
        let outcome = loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Register before reading the count, so a wake-up in between is kept.
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                break DrainOutcome::Drained {
                    waited: start.elapsed(),
                };
            }
            let woke = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, notified).await.is_ok(),
                None => {
                    notified.await;
                    true
                }
            };
            if !woke {
                let still_in_flight = self.in_flight.load(Ordering::SeqCst);
                break if still_in_flight == 0 {
                    DrainOutcome::Drained {
                        waited: start.elapsed(),
                    }
                } else {
                    self.close_tunnels().await;
                    DrainOutcome::TimedOut { still_in_flight }
                };
            }
        };
        self.pool.clear();
        self.lock_h2().take();
        outcome
    }

    /// Tells open tunnels to close and waits (bounded) until they have.
    async fn close_tunnels(&self) {
        if self.upgraded() == 0 {
            return;
        }
        let open = self.upgraded();
        tracing::info!(app = %self.app, slot = %self.slot, upgraded = open,
            "drain timeout: closing upgraded connections");
        self.closing.send_replace(true);
        let all_closed = async {
            loop {
                let notified = self.tunnels_closed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.upgraded() == 0 {
                    return;
                }
                notified.await;
            }
        };
        // The tunnels bound their own closing by CLOSE_GRACE; a little more
        // here covers scheduling.
        let bound = crate::tunnel::CLOSE_GRACE + Duration::from_secs(1);
        if tokio::time::timeout(bound, all_closed).await.is_err() {
            tracing::warn!(app = %self.app, slot = %self.slot, upgraded = self.upgraded(),
                "upgraded connections still open after closing them");
        }
    }

    /// Registers a tunnel opened on this upstream (see [`Upstream::upgraded`]).
    pub(crate) fn open_tunnel(self: &Arc<Self>) -> TunnelGuard {
        self.upgraded.fetch_add(1, Ordering::SeqCst);
        TunnelGuard(Arc::clone(self))
    }

    /// Starts a request here, unless the upstream is retired (see module docs).
    pub(crate) fn try_begin(self: &Arc<Self>) -> Option<InFlightGuard> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.retired.load(Ordering::SeqCst) {
            self.end_request();
            return None;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlightGuard(Arc::clone(self)))
    }

    fn end_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.retired.load(Ordering::SeqCst)
        {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn fallback_host(&self) -> Option<&HeaderValue> {
        self.fallback_host.as_ref()
    }

    pub(crate) fn count_5xx(&self) {
        self.responses_5xx.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives a connection whose exchange ended cleanly back to the pool.
    /// Not once retired: a drain that saw the last request end clears the
    /// pool, and nothing may be added after.
    pub(crate) fn recycle(&self, conn: Box<UpstreamConn>) {
        if !self.retired.load(Ordering::SeqCst) {
            self.pool.put(conn);
        }
    }

    /// Sends a request and waits for the response head: the one way out to
    /// this upstream. HTTP/1.1 goes on a pooled connection (or a new one)
    /// under the retry policy below; HTTP/2 on the upstream's multiplexed
    /// connection. Either way the response head must come within
    /// `upstream_response_timeout`.
    ///
    /// A reused keep-alive connection may have been closed by the upstream
    /// just before the request went out. Two cases are retried:
    /// - the connection hands the request back unsent (it is seen closed
    ///   before the request, or writing the head fails): on another
    ///   connection;
    /// - a bodiless idempotent request was written on a reused connection
    ///   that closed or reset before any response: again, on another pooled
    ///   or a new connection (what nginx's `proxy_next_upstream error`
    ///   does). Other requests are never sent twice: the upstream may have
    ///   acted on them.
    pub(crate) async fn send(
        &self,
        req: Outgoing<'_>,
        settings: &ProxySettings,
    ) -> Result<Received, ForwardError> {
        match req {
            Outgoing::Http1 { head, body } => self.send_http1(head, body, settings).await,
            Outgoing::Http2(req) => self.send_http2(req, settings).await,
        }
    }

    async fn send_http1(
        &self,
        head: &ProxiedHead<'_>,
        mut body: Option<RequestBody>,
        settings: &ProxySettings,
    ) -> Result<Received, ForwardError> {
        let replayable =
            body.as_ref().is_none_or(Body::is_end_stream) && head.method().is_idempotent();
        let mut pooled_attempts = 0;
        let mut fresh_attempts = 0;
        loop {
            let (conn, reused) = match self.take_pooled(replayable, &mut pooled_attempts) {
                Some(conn) => (conn, true),
                None => {
                    fresh_attempts += 1;
                    (self.connect(settings).await?, false)
                }
            };
            let timeout = settings.upstream_response_timeout;
            match conn.exchange(head, body.as_mut(), timeout).await {
                Ok(exchanged) => return Ok(Received::from_http1(exchanged)),
                Err(ExchangeError::Unsent(e)) if reused || fresh_attempts < MAX_FRESH_ATTEMPTS => {
                    tracing::debug!(app = %self.app, addr = %self.addr, error = %e,
                        "upstream connection closed before the request was written; retrying");
                }
                Err(ExchangeError::ClosedBeforeResponse(_)) if reused && replayable => {
                    tracing::debug!(app = %self.app, addr = %self.addr,
                        "reused upstream connection closed under an idempotent request; sending it again");
                }
                Err(e) => return Err(self.exchange_failed(e)),
            }
        }
    }

    /// A pooled connection for a request, if any. One that cannot be
    /// replayed first checks that the upstream did not close the connection
    /// meanwhile (a replayable one learns it from the exchange, at no cost).
    fn take_pooled(&self, replayable: bool, attempts: &mut usize) -> Option<Box<UpstreamConn>> {
        while *attempts < MAX_POOLED_ATTEMPTS {
            let mut conn = self.pool.take()?;
            *attempts += 1;
            if replayable || conn.looks_open() {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self, settings: &ProxySettings) -> Result<Box<UpstreamConn>, ForwardError> {
        match pool::connect(self.addr, settings.upstream_connect_timeout).await {
            Ok(stream) => Ok(UpstreamConn::new(stream)),
            Err(e) => Err(self.connect_failed(e, settings)),
        }
    }

    /// The error to answer for a failed HTTP/1.1 exchange.
    fn exchange_failed(&self, error: ExchangeError) -> ForwardError {
        let app = self.app.clone();
        match error {
            ExchangeError::Timeout(timeout) => ForwardError::ResponseTimeout { app, timeout },
            ExchangeError::Body(RequestBodyError::TooLarge { limit }) => {
                ForwardError::BodyTooLarge { limit }
            }
            ExchangeError::Body(RequestBodyError::Client(_)) => ForwardError::ClientBody,
            ExchangeError::UnexpectedSwitch => ForwardError::UnexpectedSwitch { app },
            source => {
                tracing::warn!(%app, addr = %self.addr, slot = %self.slot,
                    error = %source, "upstream failed to answer");
                ForwardError::Exchange { app, source }
            }
        }
    }

    /// Sends `req` over this upstream's HTTP/2 connection (opened on first
    /// use, and again when it closed); waits for the response head.
    async fn send_http2(
        &self,
        req: Request<RequestBody>,
        settings: &ProxySettings,
    ) -> Result<Received, ForwardError> {
        let mut sender = self.h2_sender(settings).await?;
        let timeout = settings.upstream_response_timeout;
        match tokio::time::timeout(timeout, sender.send_request(req)).await {
            Ok(Ok(response)) => Ok(Received::from_http2(response)),
            Ok(Err(error)) => Err(self.send_error(error)),
            Err(_elapsed) => Err(ForwardError::ResponseTimeout {
                app: self.app.clone(),
                timeout,
            }),
        }
    }

    fn lock_h2(&self) -> MutexGuard<'_, Option<H2Conn>> {
        self.h2.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn h2_sender(&self, settings: &ProxySettings) -> Result<H2Conn, ForwardError> {
        if let Some(sender) = self.lock_h2().as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        // Two requests may both connect here; the later one's connection
        // replaces the earlier in the slot, and both work.
        let stream = pool::connect(self.addr, settings.upstream_connect_timeout)
            .await
            .map_err(|e| self.connect_failed(e, settings))?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.connect_failed(ConnectError::Handshake(e), settings))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        *self.lock_h2() = Some(sender.clone());
        Ok(sender)
    }

    /// Counts and logs a failed connection attempt; the error to answer.
    fn connect_failed(&self, e: ConnectError, settings: &ProxySettings) -> ForwardError {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.connect_error();
        let app = self.app.clone();
        match e {
            ConnectError::Timeout => {
                tracing::warn!(%app, addr = %self.addr, slot = %self.slot,
                    "connecting to upstream timed out");
                ForwardError::ConnectTimeout {
                    app,
                    timeout: settings.upstream_connect_timeout,
                }
            }
            ConnectError::Io(source) => {
                tracing::warn!(%app, addr = %self.addr, slot = %self.slot,
                    error = %source, "connecting to upstream failed");
                ForwardError::Connect { app, source }
            }
            ConnectError::Handshake(source) => {
                tracing::warn!(%app, addr = %self.addr, slot = %self.slot,
                    error = %source, "upstream connection handshake failed");
                ForwardError::Upstream { app, source }
            }
        }
    }

    /// Classifies a failed HTTP/2 exchange: the client's body, or the upstream.
    fn send_error(&self, error: hyper::Error) -> ForwardError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(body) = e.downcast_ref::<RequestBodyError>() {
                return match body {
                    RequestBodyError::TooLarge { limit } => {
                        ForwardError::BodyTooLarge { limit: *limit }
                    }
                    RequestBodyError::Client(_) => ForwardError::ClientBody,
                };
            }
            source = e.source();
        }
        tracing::warn!(app = %self.app, addr = %self.addr, slot = %self.slot,
            error = %error, "upstream failed to answer");
        ForwardError::Upstream {
            app: self.app.clone(),
            source: error,
        }
    }
}

/// A request on its way to an upstream.
pub(crate) enum Outgoing<'a> {
    /// HTTP/1.1: the head is encoded straight from the client's request.
    Http1 {
        head: &'a ProxiedHead<'a>,
        body: Option<RequestBody>,
    },
    /// HTTP/2 (h2c upstreams), through hyper.
    Http2(Request<RequestBody>),
}

/// A response head from an upstream, and what follows it.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) head: Response<()>,
    /// The head may have hop-by-hop headers to strip.
    pub(crate) hop_by_hop: bool,
    pub(crate) then: Then,
}

/// What follows a response head.
#[derive(Debug)]
pub(crate) enum Then {
    Body(Source),
    /// The upstream switched protocols: its connection, for the tunnel.
    Switched(Prefixed<TcpStream>),
}

impl Received {
    fn from_http1(exchanged: Exchanged) -> Received {
        let Exchanged {
            head,
            conn,
            switched,
        } = exchanged;
        let then = if switched {
            Then::Switched((*conn).into_upgraded())
        } else {
            Then::Body(Source::Http1(Http1Body::new(conn, &head)))
        };
        Received {
            head: head.response,
            hop_by_hop: head.hop_by_hop,
            then,
        }
    }

    fn from_http2(response: Response<Incoming>) -> Received {
        let (parts, body) = response.into_parts();
        Received {
            head: Response::from_parts(parts, ()),
            hop_by_hop: true,
            then: Then::Body(Source::Http2(body)),
        }
    }
}

/// Holds one unit of an upstream's in-flight count; released on drop.
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<Upstream>);

impl InFlightGuard {
    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// One open tunnel of an upstream; unregisters it on drop.
#[derive(Debug)]
pub(crate) struct TunnelGuard(Arc<Upstream>);

impl TunnelGuard {
    /// The signal telling this upstream's tunnels to close.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.0.closing.subscribe()
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.0.upgraded.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.tunnels_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn upstream() -> Arc<Upstream> {
        Upstream::new("web", "blue", "v1", "127.0.0.1:9".parse().expect("addr"))
    }

    #[tokio::test]
    async fn a_retired_upstream_refuses_new_requests() {
        let up = upstream();
        let guard = up.try_begin().expect("live upstream takes requests");
        assert_eq!(up.in_flight(), 1);
        drop(guard);
        assert!(matches!(
            up.drain(Duration::ZERO).await,
            DrainOutcome::Drained { .. }
        ));
        assert!(
            up.try_begin().is_none(),
            "no request may start after a drain"
        );
        assert_eq!(
            up.in_flight(),
            0,
            "the refused attempt left no count behind"
        );
        assert_eq!(up.stats().requests, 1);
    }

    #[tokio::test]
    async fn drain_waits_for_every_guard_and_wakes_when_the_last_drops() {
        let up = upstream();
        let first = up.try_begin().expect("guard");
        let second = up.try_begin().expect("guard");
        let drain = tokio::spawn({
            let up = up.clone();
            async move { up.drain(Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(!drain.is_finished(), "one request is still in flight");
        drop(second);
        let outcome = tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .expect("drain ends when the last guard drops")
            .expect("task");
        assert!(matches!(outcome, DrainOutcome::Drained { .. }));
    }

    /// Requests race the drain from other threads: a drain that reports
    /// `Drained` must never coexist with a request that started here.
    #[test]
    fn no_request_is_in_flight_or_starts_once_drain_reports_drained() {
        for _ in 0..50 {
            let up = upstream();
            let drained = Arc::new(AtomicBool::new(false));
            let violations = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..3)
                .map(|_| {
                    let (up, drained, violations) =
                        (up.clone(), drained.clone(), violations.clone());
                    std::thread::spawn(move || {
                        for _ in 0..2_000 {
                            if let Some(guard) = up.try_begin() {
                                if drained.load(Ordering::SeqCst) {
                                    violations.fetch_add(1, Ordering::SeqCst);
                                }
                                std::hint::spin_loop();
                                drop(guard);
                            }
                        }
                    })
                })
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let outcome = runtime.block_on(up.drain(Duration::from_secs(30)));
            assert!(matches!(outcome, DrainOutcome::Drained { .. }));
            drained.store(true, Ordering::SeqCst);
            for worker in workers {
                worker.join().expect("worker");
            }
            assert_eq!(violations.load(Ordering::SeqCst), 0);
            assert_eq!(up.in_flight(), 0);
        }
    }
}
