//! One running release as the proxy sees it: its endpoints (see
//! [`crate::endpoint`]; each with its connection pool), its in-flight count,
//! the drain protocol, and the one way out to it, [`Upstream::send`].
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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::balance::{self, Balance, Tried};
use crate::body::{RequestBody, RequestBodyError, Source};
use crate::endpoint::{Endpoint, EndpointGuard, EndpointSpec, EndpointStats, H2Conn};
use crate::error::ForwardError;
use crate::headers::ProxiedHead;
use crate::http1::client::{ExchangeError, Exchanged, Http1Body, OutgoingHead, UpstreamConn};
use crate::http1::io::Prefixed;
use crate::metrics::SlotMetrics;
use crate::pool::{self, ConnectError};
use crate::settings::ProxySettings;

/// Pooled connections a request tries (they may turn out closed) before it
/// opens a fresh one.
pub(crate) const MAX_POOLED_ATTEMPTS: usize = 16;
/// Fresh connections a request tries when each closes before taking it.
const MAX_FRESH_ATTEMPTS: usize = 2;

/// One running release of one app in one slot: a set of endpoints.
#[derive(Debug)]
pub struct Upstream {
    app: Arc<str>,
    slot: Box<str>,
    release: Box<str>,
    /// The current endpoints; one lock-free load per request.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Serializes changes to `endpoints` (the request path never takes it).
    changing: Mutex<()>,
    balance: Balance,
    /// Round-robin position.
    next: AtomicUsize,
    /// The first endpoint's address at creation, for [`Upstream::addr`]
    /// while the set is empty.
    first_addr: SocketAddr,
    /// `Host` sent upstream when the client sent none (HTTP/1.0).
    fallback_host: Option<HeaderValue>,
    in_flight: AtomicUsize,
    retired: AtomicBool,
    drained: Notify,
    requests: AtomicU64,
    responses_5xx: AtomicU64,
    connect_errors: AtomicU64,
    /// Upgraded connections (tunnels) open on this upstream.
    upgraded: AtomicUsize,
    /// Set when a drain timed out: open tunnels close (see `tunnel`).
    closing: watch::Sender<bool>,
    /// Woken when the last tunnel closes.
    tunnels_closed: Notify,
    /// Counters of this app's slot (shared with the slot's other releases).
    metrics: Arc<SlotMetrics>,
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
    /// Describes a release of `app` running in `slot`, reachable at `addr`
    /// (one endpoint, labelled `local`).
    pub fn new(app: &str, slot: &str, release: &str, addr: SocketAddr) -> Arc<Upstream> {
        Upstream::with_endpoints(
            app,
            slot,
            release,
            vec![EndpointSpec::local(addr)],
            Balance::default(),
        )
    }

    /// Describes a release of `app` running in `slot` as copies at
    /// `endpoints`, balanced by `balance`. An endpoint listed twice counts
    /// once; with none, requests are answered 503 until
    /// [`Upstream::set_endpoints`] gives some.
    pub fn with_endpoints(
        app: &str,
        slot: &str,
        release: &str,
        endpoints: Vec<EndpointSpec>,
        balance: Balance,
    ) -> Arc<Upstream> {
        let metrics = crate::metrics::global().slot(app, slot);
        let endpoints = build_set(&[], endpoints, &metrics);
        let first_addr = endpoints
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |e| e.addr());
        let upstream = Arc::new(Upstream {
            app: Arc::from(app),
            slot: Box::from(slot),
            release: Box::from(release),
            endpoints: ArcSwap::from_pointee(endpoints),
            changing: Mutex::new(()),
            balance,
            next: AtomicUsize::new(0),
            first_addr,
            fallback_host: HeaderValue::from_str(&first_addr.to_string()).ok(),
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            drained: Notify::new(),
            requests: AtomicU64::new(0),
            responses_5xx: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            upgraded: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            tunnels_closed: Notify::new(),
            metrics: Arc::clone(&metrics),
        });
        metrics.track(&upstream);
        upstream
    }

    /// Replaces the endpoint set while live (e.g. the engine replaced a
    /// task). Endpoints that stay (same address) keep their counters, pools
    /// and health, and take the new label; new ones join in rotation (the
    /// engine adds an endpoint only once its checks pass); those that leave
    /// take no new request and close their idle connections, while their
    /// requests in flight still count in [`Upstream::in_flight`], so a drain
    /// waits for them.
    pub fn set_endpoints(&self, endpoints: Vec<EndpointSpec>) {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.endpoints.load_full();
        let new = build_set(&old, endpoints, &self.metrics);
        let leaving: Vec<_> = old
            .iter()
            .filter(|e| !new.iter().any(|n| Arc::ptr_eq(e, n)))
            .cloned()
            .collect();
        self.endpoints.store(Arc::new(new));
        for endpoint in leaving {
            endpoint.remove();
        }
    }

    /// The engine's checks take the endpoint at `addr` out of rotation
    /// (`false`) or put it back (`true`, which also ends an ejection).
    /// Unknown addresses are ignored.
    pub fn set_endpoint_healthy(&self, addr: SocketAddr, healthy: bool) {
        if let Some(endpoint) = self.endpoints.load().iter().find(|e| e.addr() == addr) {
            endpoint.set_healthy(healthy);
        }
    }

    /// The current endpoints, in the order they were given.
    pub fn endpoints(&self) -> Vec<EndpointStats> {
        self.endpoints.load().iter().map(|e| e.stats()).collect()
    }

    /// Requests in flight per current endpoint, for the metrics.
    pub(crate) fn endpoint_in_flight(&self) -> Vec<(SocketAddr, usize)> {
        let set = self.endpoints.load();
        set.iter().map(|e| (e.addr(), e.in_flight())).collect()
    }

    /// How requests are spread over the endpoints.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    pub(crate) fn metrics(&self) -> &Arc<SlotMetrics> {
        &self.metrics
    }

    /// The first current endpoint's address (the only one for single-copy
    /// releases); the first one it was created with while the set is empty.
    pub fn addr(&self) -> SocketAddr {
        self.endpoints
            .load()
            .first()
            .map_or(self.first_addr, |e| e.addr())
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

    /// Requests started on this upstream whose response has not ended yet,
    /// on every endpoint, including endpoints that left the set.
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

    /// Idle keep-alive connections currently pooled, over all endpoints.
    pub fn idle_connections(&self) -> usize {
        self.endpoints
            .load()
            .iter()
            .map(|e| e.pool.idle_count() + e.ring_idle.load(Ordering::Relaxed))
            .sum()
    }

    pub fn stats(&self) -> UpstreamStats {
        UpstreamStats {
            requests: self.requests.load(Ordering::Relaxed),
            responses_5xx: self.responses_5xx.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
        }
    }

    /// Retires this upstream and waits for its in-flight requests and
    /// upgraded connections, on every endpoint.
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
        for endpoint in self.endpoints.load().iter() {
            endpoint.close_idle();
        }
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
        Some(InFlightGuard {
            upstream: Arc::clone(self),
            endpoint: None,
        })
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

    /// The endpoint for a request's next attempt (see [`crate::balance`]),
    /// its in-flight count taken; `None` once every endpoint was tried.
    pub(crate) fn pick(&self, tried: &Tried) -> Option<EndpointGuard> {
        if tried.is_full() {
            return None;
        }
        let set = self.endpoints.load();
        balance::pick(self.balance, &set, &self.next, tried).map(Endpoint::begin)
    }

    /// The error for a request that found no endpoint to try.
    pub(crate) fn no_endpoint(&self) -> ForwardError {
        ForwardError::NoEndpoint {
            app: self.app.clone(),
        }
    }

    /// Sends a request and waits for the response head: the one way out to
    /// this upstream. HTTP/1.1 goes on a pooled connection (or a new one)
    /// of an endpoint; HTTP/2 on the endpoint's multiplexed connection.
    /// Either way the response head must come within
    /// `upstream_response_timeout`. Where a failed attempt goes next is
    /// decided by one rule, [`retry_rule`]; at most
    /// [`balance::MAX_ENDPOINT_ATTEMPTS`] endpoints are tried.
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
        let mut tried = Tried::default();
        let mut endpoint = self.pick(&tried).ok_or_else(|| self.no_endpoint())?;
        loop {
            let failed = match self
                .send_to(&endpoint, head, body.as_mut(), replayable, settings)
                .await
            {
                Ok(exchanged) => return Ok(Received::from_http1(exchanged, endpoint)),
                Err(failed) => failed,
            };
            tried.push(endpoint.addr());
            let next = match failed.retry {
                Retry::OtherEndpoint => self.pick(&tried),
                Retry::SameEndpoint | Retry::No => None,
            };
            let Some(next) = next else {
                return Err(failed.error);
            };
            tracing::debug!(app = %self.app, from = %endpoint.addr(), to = %next.addr(),
                error = %failed.error, "request not sent or replayable; trying another endpoint");
            endpoint = next;
        }
    }

    /// One endpoint's part of [`Upstream::send`] for HTTP/1.1: pooled
    /// connections, then fresh ones, as long as the retry rule says to stay
    /// on this endpoint.
    async fn send_to(
        &self,
        endpoint: &Endpoint,
        head: &ProxiedHead<'_>,
        mut body: Option<&mut RequestBody>,
        replayable: bool,
        settings: &ProxySettings,
    ) -> Result<Exchanged, Failed> {
        let mut pooled_attempts = 0;
        let mut fresh_attempts = 0;
        loop {
            let (conn, reused) = match take_pooled(endpoint, replayable, &mut pooled_attempts) {
                Some(conn) => (conn, true),
                None => {
                    fresh_attempts += 1;
                    (self.connect(endpoint, settings).await?, false)
                }
            };
            let timeout = settings.upstream_response_timeout;
            let error = match conn.exchange(head, body.as_deref_mut(), timeout).await {
                Ok(exchanged) => return Ok(exchanged),
                Err(error) => error,
            };
            let attempt = Attempt {
                reused,
                replayable,
                fresh_attempts,
            };
            match retry_rule(Failure::Exchange(&error), attempt) {
                Retry::SameEndpoint => {
                    tracing::debug!(app = %self.app, addr = %endpoint.addr(), error = %error,
                        "upstream connection closed before a response; trying another connection");
                }
                retry => {
                    endpoint.fail();
                    return Err(Failed {
                        error: self.exchange_failed(endpoint, error),
                        retry,
                    });
                }
            }
        }
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        settings: &ProxySettings,
    ) -> Result<Box<UpstreamConn>, Failed> {
        match pool::connect(endpoint.addr(), settings.upstream_connect_timeout).await {
            Ok(stream) => {
                endpoint.connected();
                Ok(UpstreamConn::new(stream))
            }
            Err(e) => Err(self.connect_failed(endpoint, e, settings)),
        }
    }

    /// The error to answer for a failed HTTP/1.1 exchange.
    pub(crate) fn exchange_failed(
        &self,
        endpoint: &Endpoint,
        error: ExchangeError,
    ) -> ForwardError {
        let app = self.app.clone();
        match error {
            ExchangeError::Timeout(timeout) => ForwardError::ResponseTimeout { app, timeout },
            ExchangeError::Body(RequestBodyError::TooLarge { limit }) => {
                ForwardError::BodyTooLarge { limit }
            }
            ExchangeError::Body(RequestBodyError::Client(_)) => ForwardError::ClientBody,
            ExchangeError::UnexpectedSwitch => ForwardError::UnexpectedSwitch { app },
            source => {
                tracing::warn!(%app, addr = %endpoint.addr(), slot = %self.slot,
                    error = %source, "upstream failed to answer");
                ForwardError::Exchange { app, source }
            }
        }
    }

    /// Sends `req` over an endpoint's HTTP/2 connection (opened on first
    /// use, and again when it closed); waits for the response head. A
    /// refused connection sends it to another endpoint: nothing was sent.
    async fn send_http2(
        &self,
        req: Request<RequestBody>,
        settings: &ProxySettings,
    ) -> Result<Received, ForwardError> {
        let mut tried = Tried::default();
        let mut endpoint = self.pick(&tried).ok_or_else(|| self.no_endpoint())?;
        let mut sender = loop {
            match self.h2_sender(&endpoint, settings).await {
                Ok(sender) => break sender,
                Err(failed) => {
                    tried.push(endpoint.addr());
                    match self.pick(&tried) {
                        Some(next) => endpoint = next,
                        None => return Err(failed.error),
                    }
                }
            }
        };
        let timeout = settings.upstream_response_timeout;
        match tokio::time::timeout(timeout, sender.send_request(req)).await {
            Ok(Ok(response)) => Ok(Received::from_http2(response, endpoint)),
            Ok(Err(error)) => {
                endpoint.fail();
                Err(self.send_error(&endpoint, error))
            }
            Err(_elapsed) => {
                endpoint.fail();
                Err(ForwardError::ResponseTimeout {
                    app: self.app.clone(),
                    timeout,
                })
            }
        }
    }

    async fn h2_sender(
        &self,
        endpoint: &Endpoint,
        settings: &ProxySettings,
    ) -> Result<H2Conn, Failed> {
        if let Some(sender) = endpoint.lock_h2().as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        // Two requests may both connect here; the later one's connection
        // replaces the earlier in the slot, and both work.
        let addr = endpoint.addr();
        let stream = pool::connect(addr, settings.upstream_connect_timeout)
            .await
            .map_err(|e| self.connect_failed(endpoint, e, settings))?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.connect_failed(endpoint, ConnectError::Handshake(e), settings))?;
        endpoint.connected();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        if !endpoint.is_removed() && !self.is_retired() {
            *endpoint.lock_h2() = Some(sender.clone());
        }
        Ok(sender)
    }

    /// Counts and logs a failed connection attempt, ejects the endpoint;
    /// the error to answer if no other endpoint takes the request.
    pub(crate) fn connect_failed(
        &self,
        endpoint: &Endpoint,
        e: ConnectError,
        settings: &ProxySettings,
    ) -> Failed {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.connect_error();
        endpoint.eject();
        let app = self.app.clone();
        let addr = endpoint.addr();
        let error = match e {
            ConnectError::Timeout => {
                tracing::warn!(%app, %addr, slot = %self.slot,
                    "connecting to upstream timed out");
                ForwardError::ConnectTimeout {
                    app,
                    timeout: settings.upstream_connect_timeout,
                }
            }
            ConnectError::Io(source) => {
                tracing::warn!(%app, %addr, slot = %self.slot,
                    error = %source, "connecting to upstream failed");
                ForwardError::Connect { app, source }
            }
            ConnectError::Handshake(source) => {
                tracing::warn!(%app, %addr, slot = %self.slot,
                    error = %source, "upstream connection handshake failed");
                ForwardError::Upstream { app, source }
            }
        };
        Failed {
            error,
            retry: retry_rule(Failure::Connect, Attempt::default()),
        }
    }

    /// Classifies a failed HTTP/2 exchange: the client's body, or the upstream.
    fn send_error(&self, endpoint: &Endpoint, error: hyper::Error) -> ForwardError {
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
        tracing::warn!(app = %self.app, addr = %endpoint.addr(), slot = %self.slot,
            error = %error, "upstream failed to answer");
        ForwardError::Upstream {
            app: self.app.clone(),
            source: error,
        }
    }
}

/// The new endpoint list for `specs`: endpoints of `old` at the same
/// address are kept (with the new label), others are created; an address
/// listed twice counts once.
fn build_set(
    old: &[Arc<Endpoint>],
    specs: Vec<EndpointSpec>,
    metrics: &SlotMetrics,
) -> Vec<Arc<Endpoint>> {
    let mut set: Vec<Arc<Endpoint>> = Vec::with_capacity(specs.len());
    for spec in specs {
        if set.iter().any(|e| e.addr() == spec.addr) {
            continue;
        }
        let endpoint = match old.iter().find(|e| e.addr() == spec.addr) {
            Some(kept) => {
                kept.set_label(&spec.label);
                Arc::clone(kept)
            }
            None => {
                let counters = metrics.endpoint(spec.addr);
                Arc::new(Endpoint::new(spec, counters))
            }
        };
        set.push(endpoint);
    }
    set
}

/// A pooled connection of `endpoint` for a request, if any. One that
/// cannot be replayed first checks that the upstream did not close the
/// connection meanwhile (a replayable one learns it from the exchange, at
/// no cost).
fn take_pooled(
    endpoint: &Endpoint,
    replayable: bool,
    attempts: &mut usize,
) -> Option<Box<UpstreamConn>> {
    while *attempts < MAX_POOLED_ATTEMPTS {
        let mut conn = endpoint.pool.take()?;
        *attempts += 1;
        if replayable || conn.looks_open() {
            return Some(conn);
        }
    }
    None
}

/// A failed attempt: the error to answer, and where the request may go.
pub(crate) struct Failed {
    pub(crate) error: ForwardError,
    pub(crate) retry: Retry,
}

/// What failed in an attempt.
pub(crate) enum Failure<'a> {
    /// No connection could be opened: nothing was sent.
    Connect,
    Exchange(&'a ExchangeError),
}

/// The facts of an attempt the retry rule weighs.
#[derive(Default, Clone, Copy)]
pub(crate) struct Attempt {
    /// On a pooled keep-alive connection.
    pub(crate) reused: bool,
    /// Bodiless (or empty body) and idempotent (RFC 9110 §9.2.2).
    pub(crate) replayable: bool,
    /// Fresh connections opened for this request on this endpoint.
    pub(crate) fresh_attempts: usize,
}

/// Where a request goes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Another connection to the same endpoint.
    SameEndpoint,
    /// Another endpoint, if one is left to try.
    OtherEndpoint,
    /// Nowhere: the failure is the answer.
    No,
}

/// The one retry rule. A request that was not sent may go anywhere: on a
/// reused connection that handed it back unsent, or a fresh one that did
/// (up to [`MAX_FRESH_ATTEMPTS`]), to the same endpoint; once this
/// endpoint refused or kept failing, to another. A bodiless idempotent
/// request whose connection closed before any response may be replayed:
/// on a reused connection (most likely the keep-alive race: the upstream
/// closed it idle) to the same endpoint, on a fresh one (the endpoint
/// likely died under it) to another. Anything else may have been acted on
/// and is never sent twice.
pub(crate) fn retry_rule(failure: Failure<'_>, attempt: Attempt) -> Retry {
    match failure {
        Failure::Connect => Retry::OtherEndpoint,
        Failure::Exchange(ExchangeError::Unsent(_)) => {
            if attempt.reused || attempt.fresh_attempts < MAX_FRESH_ATTEMPTS {
                Retry::SameEndpoint
            } else {
                Retry::OtherEndpoint
            }
        }
        Failure::Exchange(ExchangeError::ClosedBeforeResponse(_)) if attempt.replayable => {
            if attempt.reused {
                Retry::SameEndpoint
            } else {
                Retry::OtherEndpoint
            }
        }
        Failure::Exchange(_) => Retry::No,
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
    /// The endpoint that answered: its in-flight count held until the
    /// response ends (see [`InFlightGuard::answered_by`]).
    pub(crate) endpoint: EndpointGuard,
}

/// What follows a response head.
#[derive(Debug)]
pub(crate) enum Then {
    Body(Source),
    /// The upstream switched protocols: its connection, for the tunnel.
    Switched(Prefixed<TcpStream>),
}

impl Received {
    fn from_http1(exchanged: Exchanged, endpoint: EndpointGuard) -> Received {
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
            hop_by_hop: head.hop_by_hop,
            head: head.into_response(),
            then,
            endpoint,
        }
    }

    fn from_http2(response: Response<Incoming>, endpoint: EndpointGuard) -> Received {
        let (parts, body) = response.into_parts();
        Received {
            head: Response::from_parts(parts, ()),
            hop_by_hop: true,
            then: Then::Body(Source::Http2(body)),
            endpoint,
        }
    }
}

/// Holds one unit of an upstream's in-flight count, and once an endpoint
/// answered, of that endpoint's; released on drop.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    upstream: Arc<Upstream>,
    endpoint: Option<EndpointGuard>,
}

impl InFlightGuard {
    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The endpoint that answered holds this request until it ends.
    pub(crate) fn answered_by(&mut self, endpoint: EndpointGuard) {
        self.endpoint = Some(endpoint);
    }

    /// Gives a connection whose exchange ended cleanly back to its
    /// endpoint's pool. Not once retired (a drain that saw the last request
    /// end clears the pools, and nothing may be added after), nor to an
    /// endpoint that left the set.
    pub(crate) fn recycle(&self, conn: Box<UpstreamConn>) {
        let Some(endpoint) = &self.endpoint else {
            return;
        };
        if !self.upstream.is_retired() && !endpoint.is_removed() {
            endpoint.pool.put(conn);
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // The endpoint's count first: the upstream's reaching zero ends a drain.
        self.endpoint = None;
        self.upstream.end_request();
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

    #[test]
    fn the_retry_rule_replays_only_what_was_not_sent_or_is_bodiless_and_idempotent() {
        let closed = || ExchangeError::ClosedBeforeResponse(None);
        let unsent = || ExchangeError::Unsent(std::io::ErrorKind::BrokenPipe.into());
        let attempt = |reused, replayable, fresh_attempts| Attempt {
            reused,
            replayable,
            fresh_attempts,
        };
        let cases = [
            (
                Failure::Connect,
                attempt(false, false, 1),
                Retry::OtherEndpoint,
            ),
            (
                Failure::Exchange(&unsent()),
                attempt(true, false, 0),
                Retry::SameEndpoint,
            ),
            (
                Failure::Exchange(&unsent()),
                attempt(false, false, 1),
                Retry::SameEndpoint,
            ),
            (
                Failure::Exchange(&unsent()),
                attempt(false, false, 2),
                Retry::OtherEndpoint,
            ),
            (
                Failure::Exchange(&closed()),
                attempt(true, true, 0),
                Retry::SameEndpoint,
            ),
            (
                Failure::Exchange(&closed()),
                attempt(false, true, 1),
                Retry::OtherEndpoint,
            ),
            (
                Failure::Exchange(&closed()),
                attempt(true, false, 0),
                Retry::No,
            ),
            (
                Failure::Exchange(&closed()),
                attempt(false, false, 1),
                Retry::No,
            ),
            (
                Failure::Exchange(&ExchangeError::Timeout(Duration::from_secs(1))),
                attempt(false, true, 1),
                Retry::No,
            ),
        ];
        for (index, (failure, attempt, expected)) in cases.into_iter().enumerate() {
            assert_eq!(retry_rule(failure, attempt), expected, "case {index}");
        }
    }

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
