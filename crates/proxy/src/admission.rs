//! Admission of client connections: `max_connections` over all listeners and
//! workers, `max_connections_per_client` per peer address, and closing idle
//! keep-alive connections, oldest first, to make room at the cap.
//!
//! The registry is locked at accept and at close only. A connection's
//! idle/busy state is an atomic that the HTTP/1.1 server flips between
//! requests: no lock per request.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::settings::TrustedProxies;

/// A connection serving (or reading) a request: never closed to make room.
const BUSY: u8 = 0;
/// Between two requests: may be closed to make room.
const IDLE: u8 = 1;
/// Asked to close to make room.
const CLOSING: u8 = 2;

/// The connection limits of a proxy process. Cloning shares them (and the
/// counts): give one to every listener's [`crate::ServeOptions`].
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    max_connections: usize,
    max_per_client: usize,
    /// Exempt from the per-client limit (a load balancer in front).
    trusted: TrustedProxies,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Open connections by opening order: the first is the oldest.
    open: BTreeMap<u64, Arc<IdleSignal>>,
    per_client: HashMap<IpAddr, usize>,
    /// Connections asked to close that are not gone yet: they count as
    /// room already made.
    closing: usize,
    next: u64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_connections", &self.inner.max_connections)
            .field("max_per_client", &self.inner.max_per_client)
            .finish()
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every slot is taken by a busy connection.
    Full,
    /// Its address holds `max_connections_per_client` already.
    PerClient,
}

impl Admission {
    /// `max_connections`: client connections open at once (0: unlimited);
    /// `max_per_client`: from one address (0: unlimited), except from the
    /// `trusted` peers.
    pub fn new(max_connections: usize, max_per_client: usize, trusted: TrustedProxies) -> Self {
        Admission {
            inner: Arc::new(Inner {
                max_connections,
                max_per_client,
                trusted,
                registry: Mutex::new(Registry::default()),
            }),
        }
    }

    /// The default `max_connections` for a soft file descriptor limit of
    /// `nofile`: a reserve of max(256, nofile/10) descriptors (at most
    /// half) stays for the admin API, health checks and logs, and half of
    /// the rest goes to clients, since each may hold an upstream connection
    /// too.
    pub fn default_max_connections(nofile: u64) -> usize {
        // Never more than half: a small limit still leaves clients room.
        let reserve = (nofile / 10).max(256).min(nofile / 2);
        let clients = nofile.saturating_sub(reserve) / 2;
        usize::try_from(clients).unwrap_or(usize::MAX).max(1)
    }

    pub fn max_connections(&self) -> usize {
        self.inner.max_connections
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `peer`, asking the oldest idle connection
    /// to close if every slot is taken (the new one is admitted at once;
    /// the count exceeds the cap until the closing one is gone, and no
    /// second one is asked to close for the same slot).
    pub(crate) fn admit(&self, peer: IpAddr) -> Result<Admitted, Refused> {
        let peer = peer.to_canonical();
        let mut registry = self.lock();
        let limited = self.inner.max_per_client > 0 && !self.inner.trusted.trusts(peer);
        if limited
            && registry.per_client.get(&peer).copied().unwrap_or(0) >= self.inner.max_per_client
        {
            return Err(Refused::PerClient);
        }
        let cap = self.inner.max_connections;
        if cap > 0 && registry.open.len() - registry.closing >= cap {
            if !close_oldest_idle(&registry.open) {
                return Err(Refused::Full);
            }
            registry.closing += 1;
        }
        Ok(self.register(&mut registry, peer))
    }

    /// Registers a connection without checking the limits (one handed over
    /// by the previous process: refusing it would drop a client's
    /// keep-alive connection that was already served).
    pub(crate) fn register_adopted(&self, peer: IpAddr) -> Admitted {
        let mut registry = self.lock();
        self.register(&mut registry, peer.to_canonical())
    }

    fn register(&self, registry: &mut Registry, peer: IpAddr) -> Admitted {
        let id = registry.next;
        registry.next += 1;
        let signal = Arc::new(IdleSignal::default());
        registry.open.insert(id, Arc::clone(&signal));
        *registry.per_client.entry(peer).or_insert(0) += 1;
        Admitted {
            admission: self.clone(),
            id,
            peer,
            signal,
        }
    }

    fn release(&self, id: u64, peer: IpAddr) {
        let mut registry = self.lock();
        if let Some(signal) = registry.open.remove(&id) {
            if signal.state.load(Ordering::Acquire) == CLOSING {
                registry.closing -= 1;
            }
        }
        if let Some(count) = registry.per_client.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                registry.per_client.remove(&peer);
            }
        }
    }
}

/// Asks the oldest idle connection to close; false if none is idle.
fn close_oldest_idle(open: &BTreeMap<u64, Arc<IdleSignal>>) -> bool {
    open.values().any(|signal| signal.ask_to_close())
}

/// A connection's idle/busy state and the signal asking it to close.
#[derive(Default)]
pub(crate) struct IdleSignal {
    state: AtomicU8,
    close: Notify,
    /// Woken when asked to close while the connection waits outside any
    /// task (parked, see `http1::park`).
    parked: Mutex<Option<std::task::Waker>>,
}

impl IdleSignal {
    /// The connection waits for its next request. False if it was already
    /// asked to close.
    pub(crate) fn set_idle(&self) -> bool {
        self.state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A request starts arriving. False if the connection was asked to
    /// close meanwhile: it closes rather than reading the request.
    pub(crate) fn set_busy(&self) -> bool {
        self.state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.state.load(Ordering::Acquire) == BUSY
    }

    /// Whether it was asked to close (to make room).
    pub(crate) fn asked_to_close(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSING
    }

    /// Resolves once the connection was asked to close.
    pub(crate) async fn closing(&self) {
        self.close.notified().await;
    }

    /// While parked: `waker` is woken if the connection is asked to close
    /// (at once if it was already).
    pub(crate) fn wake_when_asked_to_close(&self, waker: std::task::Waker) {
        *self.parked.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
        if self.state.load(Ordering::Acquire) == CLOSING {
            self.wake_parked();
        }
    }

    fn wake_parked(&self) {
        let waker = self
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn ask_to_close(&self) -> bool {
        let asked = self
            .state
            .compare_exchange(IDLE, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if asked {
            // Stores a permit if the connection is not waiting yet.
            self.close.notify_one();
            self.wake_parked();
        }
        asked
    }
}

/// One admitted connection, counted until dropped.
pub(crate) struct Admitted {
    admission: Admission,
    id: u64,
    peer: IpAddr,
    signal: Arc<IdleSignal>,
}

impl Admitted {
    pub(crate) fn signal(&self) -> Arc<IdleSignal> {
        Arc::clone(&self.signal)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self.id, self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn default_max_connections_keeps_a_reserve_and_room_for_upstreams() {
        assert_eq!(Admission::default_max_connections(1024), (1024 - 256) / 2);
        assert_eq!(
            Admission::default_max_connections(1 << 20),
            ((1 << 20) - (1 << 20) / 10) / 2
        );
        assert_eq!(Admission::default_max_connections(256), (256 - 128) / 2);
        assert_eq!(Admission::default_max_connections(1), 1);
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_is_asked_to_close_else_refused() {
        let admission = Admission::new(3, 0, TrustedProxies::default());
        let held: Vec<Admitted> = (0..3)
            .map(|_| admission.admit(ip("127.0.0.2")).expect("admitted"))
            .collect();
        assert_eq!(
            admission.admit(ip("127.0.0.1")).err(),
            Some(Refused::Full),
            "all busy"
        );
        assert!(held[2].signal.set_idle());
        assert!(held[1].signal.set_idle());
        let fresh = admission.admit(ip("127.0.0.1")).expect("room was made");
        assert!(!held[1].signal.set_busy(), "the oldest idle one closes");
        assert!(held[2].signal.set_busy(), "the younger one stays");
        drop(fresh);
    }

    #[test]
    fn one_address_is_refused_over_its_limit_while_others_and_trusted_peers_are_not() {
        let trusted = TrustedProxies::new(crate::settings::Cidr::new(ip("10.0.0.1"), 32));
        let admission = Admission::new(0, 2, trusted);
        let a: Vec<Admitted> = (0..2)
            .map(|_| admission.admit(ip("127.0.0.2")).expect("admitted"))
            .collect();
        assert_eq!(
            admission.admit(ip("127.0.0.2")).err(),
            Some(Refused::PerClient)
        );
        let other = admission.admit(ip("127.0.0.3")).expect("another address");
        let lb: Vec<Admitted> = (0..5)
            .map(|_| admission.admit(ip("10.0.0.1")).expect("trusted"))
            .collect();
        drop(a);
        let again = admission.admit(ip("127.0.0.2")).expect("slots freed");
        assert_eq!(admission.open(), 7);
        drop((other, lb, again));
        assert_eq!(admission.open(), 0);
    }
}
