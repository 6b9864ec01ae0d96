//! The endpoints of a release: where its copies listen, each with its own
//! in-flight count, keep-alive pool, health and passive ejection.
//!
//! Where an endpoint comes from (a local process, a swarm task, a pod) is
//! the engine's business: the proxy sees an address and a free-text label.
//!
//! # Health
//!
//! An endpoint is in rotation when the engine's checks say it is healthy
//! ([`crate::Upstream::set_endpoint_healthy`]) and it is not ejected. A
//! connection it refuses (error or timeout) ejects it at once: no request
//! picks it until its backoff (1 s, doubling to 30 s) has passed; then one
//! request claims a trial, whose connection decides (admitted again, or
//! ejected for twice as long). The engine marking it healthy admits it at
//! once. The request path reads one relaxed atomic per endpoint for all of
//! this while nothing is ejected; the clock is read only while something is.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::EndpointCounters;
use crate::pool::Pool;

/// The sending half of an endpoint's HTTP/2 connection (cheap to clone).
pub(crate) type H2Conn = hyper::client::conn::http2::SendRequest<crate::body::RequestBody>;

/// First backoff of an ejected endpoint.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff: an endpoint refusing for a long time gets a trial
/// request this often.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where one copy of a release listens, as the engine describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    /// Free text for status and metrics: a node name, a task id, or
    /// `"local"` for engines that run one copy on this host.
    pub label: String,
}

impl EndpointSpec {
    pub fn new(addr: SocketAddr, label: impl Into<String>) -> EndpointSpec {
        EndpointSpec {
            addr,
            label: label.into(),
        }
    }

    /// The one endpoint of a release running on this host.
    pub fn local(addr: SocketAddr) -> EndpointSpec {
        EndpointSpec::new(addr, "local")
    }
}

/// One endpoint of an upstream, as `cutover status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub addr: SocketAddr,
    pub label: String,
    /// In rotation: the engine's checks pass and it is not ejected.
    pub healthy: bool,
    /// Taken out after refusing a connection, until its backoff passes.
    pub ejected: bool,
    /// Requests sent to it whose response has not ended.
    pub in_flight: usize,
    /// Requests sent to it (each attempt counts, retries included).
    pub requests: u64,
    /// Attempts that failed on it: refused connections and failed exchanges.
    pub failures: u64,
}

/// One endpoint's live state; shared by the upstream's current set and the
/// requests in flight on it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    addr: SocketAddr,
    label: Mutex<Arc<str>>,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    /// The engine's verdict ([`crate::Upstream::set_endpoint_healthy`]).
    healthy: AtomicBool,
    /// 0 while in rotation; else when (ms on [`now_ms`]'s clock) it may
    /// take a trial request.
    retry_at: AtomicU64,
    /// When it was last ejected (ms), to try the least recently ejected
    /// when every endpoint is out.
    ejected_at: AtomicU64,
    backoff_ms: AtomicU64,
    /// A request took the trial after the backoff; its connection decides.
    trial: AtomicBool,
    /// Left its upstream's set: it takes no new request and pools nothing.
    removed: AtomicBool,
    /// Idle HTTP/1.1 keep-alive connections.
    pub(crate) pool: Pool,
    /// Idle connections kept by the workers' io_uring loops (`ring`).
    pub(crate) ring_idle: AtomicUsize,
    /// The multiplexed connection, for apps spoken to in HTTP/2 (h2c).
    h2: Mutex<Option<H2Conn>>,
    /// This address's counters in its slot's metrics.
    counters: Arc<EndpointCounters>,
}

impl Endpoint {
    pub(crate) fn new(spec: EndpointSpec, counters: Arc<EndpointCounters>) -> Endpoint {
        Endpoint {
            addr: spec.addr,
            label: Mutex::new(Arc::from(spec.label)),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            retry_at: AtomicU64::new(0),
            ejected_at: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            pool: Pool::default(),
            ring_idle: AtomicUsize::new(0),
            h2: Mutex::new(None),
            counters,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn lock_label(&self) -> MutexGuard<'_, Arc<str>> {
        self.label.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_label(&self, label: &str) {
        let mut current = self.lock_label();
        if **current != *label {
            *current = Arc::from(label);
        }
    }

    pub(crate) fn stats(&self) -> EndpointStats {
        EndpointStats {
            addr: self.addr,
            label: self.lock_label().to_string(),
            healthy: self.in_rotation(),
            ejected: self.retry_at.load(Ordering::Relaxed) != 0,
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Healthy and not ejected: new requests may pick it.
    pub(crate) fn in_rotation(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.retry_at.load(Ordering::Relaxed) == 0
    }

    /// Whether a request may pick it now: in rotation, or ejected with its
    /// backoff over (a trial). `now` is read only in the second case.
    pub(crate) fn pickable(&self, now: &mut Now) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        match self.retry_at.load(Ordering::Relaxed) {
            0 => true,
            retry_at => now.get() >= retry_at,
        }
    }

    /// When it was ejected (0 if never), to pick among endpoints all out.
    pub(crate) fn ejected_at(&self) -> u64 {
        self.ejected_at.load(Ordering::Relaxed)
    }

    /// A request was sent here: counted until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> EndpointGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.retry_at.load(Ordering::Relaxed) != 0 {
            self.claim_trial();
        }
        EndpointGuard(Arc::clone(self))
    }

    /// An ejected endpoint picked once its backoff is over takes the trial:
    /// no other request picks it until this one's connection has decided.
    /// (Picked earlier, because every endpoint is out, it takes none.)
    fn claim_trial(&self) {
        let now = now_ms();
        if now < self.retry_at.load(Ordering::Relaxed) {
            return;
        }
        let claimed =
            self.trial
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed);
        if claimed.is_ok() {
            let backoff = self.backoff_ms.load(Ordering::Relaxed).max(1);
            self.retry_at.store(now + backoff, Ordering::Relaxed);
        }
    }

    /// A connection to it was opened: back in rotation if it was ejected.
    pub(crate) fn connected(&self) {
        if self.retry_at.load(Ordering::Relaxed) != 0 {
            self.admit();
        }
    }

    /// Back in rotation now, backoff reset.
    pub(crate) fn admit(&self) {
        self.retry_at.store(0, Ordering::Relaxed);
        self.backoff_ms.store(0, Ordering::Relaxed);
        self.trial.store(false, Ordering::Relaxed);
    }

    /// It refused a connection. In rotation until now: out for 1 s, its
    /// idle connections closed. Its trial request refused: out for twice
    /// the last backoff (at most 30 s). Already out (requests that picked it
    /// before, or because every endpoint is out): the backoff stands.
    pub(crate) fn eject(&self) {
        self.fail();
        let now = now_ms();
        self.ejected_at.store(now, Ordering::Relaxed);
        let was_trial = self.trial.swap(false, Ordering::Relaxed);
        let in_rotation = self.retry_at.load(Ordering::Relaxed) == 0;
        let min = millis(MIN_BACKOFF);
        let backoff = match self.backoff_ms.load(Ordering::Relaxed) {
            _ if in_rotation => min,
            last if was_trial => last.saturating_mul(2).clamp(min, millis(MAX_BACKOFF)),
            _ => return,
        };
        self.backoff_ms.store(backoff, Ordering::Relaxed);
        self.retry_at.store(now + backoff, Ordering::Relaxed);
        self.close_idle();
    }

    /// An attempt on it failed.
    pub(crate) fn fail(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        if healthy {
            self.admit();
        }
    }

    /// It left its upstream's set: no more pooling.
    pub(crate) fn remove(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.close_idle();
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// Closes idle pooled connections and the HTTP/2 connection.
    pub(crate) fn close_idle(&self) {
        self.pool.clear();
        self.lock_h2().take();
    }

    pub(crate) fn lock_h2(&self) -> MutexGuard<'_, Option<H2Conn>> {
        self.h2.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request's hold on an endpoint's in-flight count; released on drop.
#[derive(Debug)]
pub(crate) struct EndpointGuard(Arc<Endpoint>);

impl std::ops::Deref for EndpointGuard {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.0
    }
}

impl EndpointGuard {
    /// The endpoint itself (to tell endpoints apart, and to keep one).
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The clock read at most once per pick, and only when needed.
#[derive(Debug, Default)]
pub(crate) struct Now(Option<u64>);

impl Now {
    fn get(&mut self) -> u64 {
        *self.0.get_or_insert_with(now_ms)
    }
}

/// Milliseconds on a process-wide monotonic clock, never 0 (0 means "not
/// ejected").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    millis(START.get_or_init(Instant::now).elapsed()) + 1
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<Endpoint> {
        let spec = EndpointSpec::local("127.0.0.1:9".parse().expect("addr"));
        Arc::new(Endpoint::new(spec, Arc::default()))
    }

    /// Its backoff is over (as if the time had passed).
    fn backoff_over(ep: &Endpoint) {
        ep.retry_at.store(1, Ordering::Relaxed);
    }

    #[test]
    fn each_refused_trial_doubles_the_backoff_up_to_30s_and_a_connection_admits_it() {
        let ep = endpoint();
        assert!(ep.in_rotation());
        ep.eject();
        assert!(!ep.in_rotation());
        assert!(!ep.pickable(&mut Now::default()), "backoff not over yet");
        assert_eq!(ep.backoff_ms.load(Ordering::Relaxed), 1_000);
        for expected in [2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
            backoff_over(&ep);
            assert!(ep.pickable(&mut Now::default()), "trial once it is over");
            let trial = ep.begin();
            ep.eject();
            drop(trial);
            assert_eq!(ep.backoff_ms.load(Ordering::Relaxed), expected);
        }
        backoff_over(&ep);
        let trial = ep.begin();
        ep.connected();
        drop(trial);
        assert!(ep.in_rotation(), "a connection admits it again");
        assert_eq!(ep.stats().failures, 7);
    }

    #[test]
    fn requests_refused_together_eject_it_once_without_growing_the_backoff() {
        let ep = endpoint();
        let together: Vec<_> = (0..8).map(|_| ep.begin()).collect();
        for _ in &together {
            ep.eject();
        }
        assert_eq!(ep.backoff_ms.load(Ordering::Relaxed), 1_000);
        assert_eq!(ep.stats().failures, 8);
        // Picked while out (every endpoint out): no trial, backoff stands.
        let fallback = ep.begin();
        ep.eject();
        drop(fallback);
        assert_eq!(ep.backoff_ms.load(Ordering::Relaxed), 1_000);
    }

    #[test]
    fn a_trial_request_keeps_others_off_the_endpoint_until_it_decides() {
        let ep = endpoint();
        ep.eject();
        backoff_over(&ep);
        assert!(ep.pickable(&mut Now::default()));
        let trial = ep.begin();
        assert!(!ep.pickable(&mut Now::default()), "one trial at a time");
        assert_eq!(ep.in_flight(), 1);
        drop(trial);
        assert_eq!(ep.in_flight(), 0);
    }

    #[test]
    fn the_engine_marking_it_healthy_admits_it_and_unhealthy_takes_it_out() {
        let ep = endpoint();
        ep.set_healthy(false);
        assert!(!ep.pickable(&mut Now::default()));
        ep.eject();
        ep.set_healthy(true);
        assert!(ep.in_rotation());
        assert!(!ep.stats().ejected);
    }
}
