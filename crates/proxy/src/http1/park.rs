//! Idle HTTP/1.1 keep-alive connections parked outside any task.
//!
//! A plain TCP connection that waited [`PARK_AFTER`] for its next request
//! leaves its task: its socket (still registered with this worker's event
//! loop), its context and its counting guards go into the [`ParkingLot`] of
//! its listener on this worker, with a waker that names its slot. While
//! parked it costs that slot, the waker, and the socket's registration: no
//! task, no future, no buffer, no timer of its own. This is what makes ten
//! thousand idle clients cheap; a busy connection never parks (its next
//! request comes sooner), so the request path pays nothing for it.
//!
//! The lot's one task, on the same worker:
//! - resumes a connection in a new task when its socket turns readable
//!   (a request, or the client closing), unless the admission asked it to
//!   close meanwhile (then it closes);
//! - closes those whose idle timeout passed: one queue, since a lot's
//!   deadlines come in parking order (one `idle_timeout` per listener);
//! - at shutdown hands them to the new process (an upgrade armed the
//!   listener's handoff) or closes them, and takes no more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::server::ConnLife;
use crate::forward::ConnCtx;

/// How long a keep-alive connection waits in its task before it parks.
/// Short enough that idle clients are cheap within a moment; long enough
/// that a client sending its requests back to back never parks.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// Stale entries the expiry queue may hold per parked connection before it
/// is compacted (entries of connections that resumed before their
/// deadline are only dropped when reached, or here).
const STALE_PER_PARKED: usize = 2;

/// The parked connections of one listener on one worker. Cloning shares it.
#[derive(Clone)]
pub(crate) struct ParkingLot {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Slots whose waker fired, in a lock of their own: a waker may fire
    /// while `state` is held (see [`ParkingLot::park`]).
    woken: Mutex<Vec<Key>>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    /// (idle deadline, slot) in parking order.
    expiry: VecDeque<(Instant, Key)>,
    parked: usize,
    /// Shut down: nothing parks any more.
    closed: bool,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Parked>,
}

/// A slot and which of its occupants: a waker or queue entry left from an
/// earlier occupant does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    index: u32,
    generation: u32,
}

/// A connection waiting in the lot.
pub(crate) struct Parked {
    pub(crate) stream: TcpStream,
    pub(crate) ctx: Arc<ConnCtx>,
    pub(crate) life: ConnLife,
    /// When it closes unless a request comes.
    pub(crate) deadline: Instant,
}

/// Wakes the lot naming one slot.
struct SlotWaker {
    lot: Weak<Shared>,
    key: Key,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(lot) = self.lot.upgrade() {
            lock(&lot.woken).push(self.key);
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
    pub(crate) fn new() -> ParkingLot {
        ParkingLot {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                woken: Mutex::new(Vec::new()),
                wake: Notify::new(),
            }),
        }
    }

    /// Whether it shut down (nothing parks any more).
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// Parks `conn` until its socket turns readable. Gives it back when it
    /// cannot wait here: bytes (or the close) arrived already, or the lot
    /// shut down.
    pub(crate) fn park(&self, conn: Parked) -> Option<Parked> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Some(conn);
        }
        let key = state.vacant_key();
        let waker = Waker::from(Arc::new(SlotWaker {
            lot: Arc::downgrade(&self.shared),
            key,
        }));
        // Registers the waker with the socket's readiness (no syscall: the
        // socket stays registered with the event loop).
        let ready = conn
            .stream
            .poll_read_ready(&mut Context::from_waker(&waker))
            .is_ready();
        if ready {
            state.vacant.push(key.index);
            return Some(conn);
        }
        if let Some(idle) = &conn.life.idle {
            idle.wake_when_asked_to_close(waker);
        }
        if state.expiry.is_empty() {
            // The lot's timer waits for nothing: have it look again.
            self.shared.wake.notify_one();
        }
        state.expiry.push_back((conn.deadline, key));
        state.slots[key.index as usize].conn = Some(conn);
        state.parked += 1;
        parked_gauge().fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Serves the lot until `stopped` turns true: resumes woken
    /// connections, closes expired ones; then hands over or closes the
    /// rest.
    pub(crate) async fn run(self, stopped: watch::Receiver<bool>) {
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
                () = self.shared.wake.notified() => {
                    for conn in self.take_woken() {
                        super::server::resume(conn, &stopped);
                    }
                }
                () = timer.as_mut(), if next.is_some() => self.close_expired(),
            }
        }
        for conn in self.close() {
            super::server::hand_over_parked(conn);
        }
    }

    /// The connections whose wakers fired (each once).
    fn take_woken(&self) -> Vec<Parked> {
        let woken = std::mem::take(&mut *lock(&self.shared.woken));
        let mut state = lock(&self.shared.state);
        woken
            .into_iter()
            .filter_map(|key| state.take(key))
            .collect()
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
        // Closed outside the lock: dropping a socket deregisters it.
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
        if slot.generation != key.generation || slot.conn.is_none() {
            return None;
        }
        let conn = slot.conn.take();
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
        conn
    }
}
