//! Idle HTTP/1.1 keep-alive connections parked outside any task.
//!
//! A plain TCP connection that waited [`PARK_AFTER`] for its next request
//! leaves its task and its event loop: its socket moves from the worker's
//! event loop to the [`ParkingLot`]'s own epoll set (one-shot: the kernel
//! holds the interest, the lot a slot). While parked a connection costs
//! that slot (the socket, its counting guards, its peer's address), an
//! entry in the lot's expiry queue and, under connection limits, the waker
//! through which the admission can ask it to close: no task, no future, no
//! buffer, no timer and no event-loop registration of its own. This is what
//! makes ten thousand idle clients cheap. A busy connection never parks
//! (its next request comes sooner), so the request path pays nothing for
//! it; parking and resuming cost two `epoll_ctl` calls each.
//!
//! The lot's one task, on the same worker:
//! - resumes a connection in a new task when its socket turns readable (a
//!   request, or the client closing), unless the admission asked it to
//!   close meanwhile (then it closes);
//! - closes those whose idle timeout passed: one queue, since a lot's
//!   deadlines come in parking order (one `idle_timeout` per listener);
//! - at shutdown hands them to the new process (an upgrade armed the
//!   listener's handoff) or closes them, and takes no more.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Wake, Waker};
use std::time::Duration;

use rustix::event::epoll;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::server::ConnLife;
use crate::forward::Shared as Listener;
use crate::handoff::Handoff;

/// How long a keep-alive connection waits in its task before it parks.
/// Short enough that idle clients are cheap within a moment; long enough
/// that a client sending its requests back to back never parks.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// Stale entries the expiry queue may hold per parked connection before it
/// is compacted (entries of connections that resumed before their
/// deadline are only dropped when reached, or here).
const STALE_PER_PARKED: usize = 2;

/// Readiness events taken from the lot's epoll set per look.
const EVENTS_PER_WAIT: usize = 256;

/// The parked connections of one listener on one worker. Cloning shares it.
#[derive(Clone)]
pub(crate) struct ParkingLot {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Where parked sockets wait for their next request.
    epoll: OwnedFd,
    /// Slots whose connection the admission asked to close (their socket
    /// did not turn readable), in a lock of their own: the waker that adds
    /// to it runs under the admission's registry lock, or under `state`
    /// when `park` finds the connection already asked.
    asked: Mutex<Vec<Key>>,
    wake: Notify,
    /// The listener's handoff and address, for resumed connections.
    handoff: Option<(Handoff, SocketAddr)>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    /// (idle deadline, slot) in parking order.
    expiry: VecDeque<(Instant, Key)>,
    parked: usize,
    /// Shut down (or its event loop is unusable): nothing parks any more.
    closed: bool,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Parked>,
}

/// A slot and which of its occupants: an event or waker left from an
/// earlier occupant does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    fn to_u64(self) -> u64 {
        (u64::from(self.index) << 32) | u64::from(self.generation)
    }

    fn from_u64(data: u64) -> Key {
        Key {
            index: (data >> 32) as u32,
            generation: data as u32,
        }
    }
}

/// A connection waiting in the lot: out of the event loop, so a plain
/// socket.
pub(crate) struct Parked {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) listener: Arc<Listener>,
    pub(crate) peer: IpAddr,
    pub(crate) life: ConnLife,
}

/// Tells the lot that the admission asked one slot's connection to close.
struct AskedToClose {
    lot: Weak<Shared>,
    key: Key,
}

impl Wake for AskedToClose {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(lot) = self.lot.upgrade() {
            lock(&lot.asked).push(self.key);
            lot.wake.notify_one();
        }
    }
}

fn parked_gauge() -> &'static AtomicI64 {
    &crate::metrics::global().parked_connections
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ParkingLot {
    /// A lot for the connections of the listener `handoff` belongs to.
    pub(crate) fn new(handoff: Option<(Handoff, SocketAddr)>) -> std::io::Result<ParkingLot> {
        Ok(ParkingLot {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
                asked: Mutex::new(Vec::new()),
                wake: Notify::new(),
                handoff,
            }),
        })
    }

    /// The listener's handoff, for a connection resumed from this lot.
    pub(crate) fn handoff(&self) -> Option<(Handoff, SocketAddr)> {
        self.shared.handoff.clone()
    }

    /// Parks `conn` until its socket turns readable or `deadline` passes.
    /// Gives it back when it cannot wait here (the lot shut down).
    pub(crate) fn park(&self, conn: Parked, deadline: Instant) -> Option<Parked> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Some(conn);
        }
        let key = state.vacant_key();
        // Level-triggered and one-shot: bytes that came already fire at
        // once; after one event the socket stays quiet until resumed.
        let interest =
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        let data = epoll::EventData::new_u64(key.to_u64());
        if let Err(e) = epoll::add(&self.shared.epoll, &conn.stream, data, interest) {
            tracing::debug!(error = %e, "cannot park an idle client connection");
            state.vacant.push(key.index);
            return Some(conn);
        }
        if let Some(idle) = &conn.life.idle {
            let asked = Arc::new(AskedToClose {
                lot: Arc::downgrade(&self.shared),
                key,
            });
            idle.wake_when_asked_to_close(Waker::from(asked));
        }
        if state.expiry.is_empty() {
            // The lot's timer waits for nothing: have it look again.
            self.shared.wake.notify_one();
        }
        state.expiry.push_back((deadline, key));
        state.slots[key.index as usize].conn = Some(conn);
        state.parked += 1;
        parked_gauge().fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Serves the lot until `stopped` turns true: resumes connections whose
    /// socket turned readable or that were asked to close, closes expired
    /// ones; then hands over or closes the rest.
    pub(crate) async fn run(self, stopped: watch::Receiver<bool>) {
        // Deprecated because the safe constructor cannot know that the
        // owner keeps its descriptor; an `OwnedFd` does, for its whole life
        // (the replacement is `unsafe`, which this workspace forbids).
        #[allow(deprecated)]
        let events = self
            .shared
            .epoll
            .try_clone()
            .and_then(|fd| AsyncFd::with_interest(fd, Interest::READABLE));
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                // Connections then wait in their tasks, as without a lot.
                tracing::warn!(error = %e, "idle connections cannot park on this worker");
                self.close();
                return;
            }
        };
        let mut stopping = stopped.clone();
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            let next = lock(&self.shared.state).expiry.front().map(|(at, _)| *at);
            if let Some(at) = next {
                timer.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                _ = stopping.wait_for(|stop| *stop) => break,
                ready = events.readable() => match ready {
                    Ok(mut ready) => {
                        let (woken, drained) = self.take_readable();
                        if drained {
                            ready.clear_ready();
                        }
                        for conn in woken {
                            super::server::resume(conn, &self, &stopped);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the parking lot's event set failed; closing its connections");
                        break;
                    }
                },
                () = self.shared.wake.notified() => {
                    for conn in self.take_asked() {
                        super::server::resume(conn, &self, &stopped);
                    }
                }
                () = timer.as_mut(), if next.is_some() => self.close_expired(),
            }
        }
        for conn in self.close() {
            self.hand_over(conn);
        }
    }

    /// The connections whose socket turned readable, out of the lot's set;
    /// and whether every pending event was taken.
    fn take_readable(&self) -> (Vec<Parked>, bool) {
        let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let taken = epoll::wait(
            &self.shared.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&zero),
        );
        if let Err(e) = taken {
            tracing::debug!(error = %e, "reading the parking lot's events failed");
            return (Vec::new(), false);
        }
        let drained = events.len() < EVENTS_PER_WAIT;
        let mut state = lock(&self.shared.state);
        let woken = events
            .iter()
            .filter_map(|event| state.take(Key::from_u64(event.data.u64())))
            .filter_map(|conn| self.unwatch(conn))
            .collect();
        (woken, drained)
    }

    /// The connections the admission asked to close.
    fn take_asked(&self) -> Vec<Parked> {
        let asked = std::mem::take(&mut *lock(&self.shared.asked));
        let mut state = lock(&self.shared.state);
        asked
            .into_iter()
            .filter_map(|key| state.take(key))
            .filter_map(|conn| self.unwatch(conn))
            .collect()
    }

    /// Takes a leaving connection's socket out of the lot's set (a one-shot
    /// interest stays registered, disabled); a socket that cannot leave it
    /// closes.
    fn unwatch(&self, conn: Parked) -> Option<Parked> {
        match epoll::delete(&self.shared.epoll, &conn.stream) {
            Ok(()) => Some(conn),
            Err(e) => {
                tracing::debug!(error = %e, "closing a parked connection that cannot leave the lot");
                None
            }
        }
    }

    /// Drops (closes) every connection whose idle deadline passed.
    fn close_expired(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut state = lock(&self.shared.state);
        while let Some(&(at, key)) = state.expiry.front() {
            if at > now {
                break;
            }
            state.expiry.pop_front();
            expired.extend(state.take(key));
        }
        drop(state);
        // Closing a socket also takes it out of the lot's set.
        drop(expired);
    }

    /// Shuts the lot: what is parked now, and nothing more may park.
    fn close(&self) -> Vec<Parked> {
        let mut state = lock(&self.shared.state);
        state.closed = true;
        state.expiry.clear();
        let parked: Vec<Parked> = state
            .slots
            .iter_mut()
            .filter_map(|s| s.conn.take())
            .collect();
        state.parked = 0;
        parked_gauge().fetch_sub(parked.len() as i64, Ordering::Relaxed);
        parked
    }

    /// A parked connection at shutdown: to the new process if an upgrade
    /// armed the handoff, else closed.
    fn hand_over(&self, conn: Parked) {
        if let Some((handoff, listener)) =
            self.shared.handoff.as_ref().filter(|(h, _)| h.is_armed())
        {
            handoff.hand_std(*listener, conn.stream, bytes::Bytes::new(), false);
        }
    }
}

impl State {
    fn vacant_key(&mut self) -> Key {
        let index = self.vacant.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        });
        Key {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    /// Takes the connection `key` names, if it still waits there.
    fn take(&mut self, key: Key) -> Option<Parked> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let conn = slot.conn.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.vacant.push(key.index);
        self.parked -= 1;
        parked_gauge().fetch_sub(1, Ordering::Relaxed);
        if self.expiry.len() > STALE_PER_PARKED * self.parked + 64 {
            let slots = &self.slots;
            self.expiry.retain(|(_, key)| {
                let slot = &slots[key.index as usize];
                slot.generation == key.generation && slot.conn.is_some()
            });
        }
        Some(conn)
    }
}
