//! Plain HTTP/1.1 keep-alive connections served by a worker's io_uring
//! event loop, without a task per connection and without a system call per
//! read or write.
//!
//! On a worker with a ring (`[proxy] io`, io_uring) a cleartext HTTP/1.1
//! connection leaves tokio once its first bytes were read (see
//! `server::serve_plain`) and joins this loop: one task per worker that
//! owns its connections and their upstream links, receives on the ring
//! (a multishot receive per socket, into the thread's provided buffers:
//! nothing is held while a socket is idle), sends on the ring, and hands
//! everything a turn queued to the kernel in one call. The loop serves
//! the common request itself, with the same parts as the full
//! path (`forward`): the HTTP/1 codec, routing, the in-flight and endpoint
//! guards, the retry rule, header rewriting, response framing, metrics and
//! the access log. A large response body is relayed by a task of the
//! worker's runtime instead (see `bulk`).
//!
//! Anything else goes to the full path (`http1::server`) with the bytes
//! read so far, at a request boundary, and stays there: a request with a
//! body, an upgrade, `Expect`, HTTP/1.0, a method that is not idempotent,
//! a head that does not parse (the full path answers the error), a
//! reserved path or an h2c app, a listener that redirects to HTTPS or
//! answers ACME challenges; and every connection at shutdown, where the
//! full path hands it to the new process of an upgrade or closes it.
//!
//! Timeouts (idle, header read, upstream response) and the checks that
//! need no event (asked to close at `max_connections`, shutdown, pooled
//! connections of a retired upstream) run on a tick of [`TICK`].

mod bulk;
mod conn;
mod exchange;
mod idle;

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cutover_uring::ops::{self, Completion};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use crate::forward::ConnCtx;
use crate::http1::server::{ConnLife, Exits};
use crate::pool::ConnectError;

use conn::Conn;
use idle::Links;

/// How often deadlines and signals are checked.
const TICK: Duration = Duration::from_millis(100);

thread_local! {
    static INBOX: RefCell<Option<Inbox>> = const { RefCell::new(None) };
}

/// What reaches the loop from outside a completion: connections to serve,
/// upstream connections opened for them, and large bodies relayed.
#[derive(Default)]
struct Inbox {
    adopted: Vec<Adopted>,
    connected: Vec<Connected>,
    relayed: Vec<Relayed>,
    waker: Option<Waker>,
}

/// A client connection for the loop, with what the full path would have
/// served it with.
pub(crate) struct Adopted {
    pub(crate) stream: std::net::TcpStream,
    /// Bytes already read from it.
    pub(crate) first: BytesMut,
    pub(crate) ctx: Arc<ConnCtx>,
    pub(crate) life: ConnLife,
    pub(crate) exits: Exits,
    pub(crate) stopped: watch::Receiver<bool>,
}

/// A new upstream connection for the request of connection `conn` (or why
/// there is none).
struct Connected {
    slot: u32,
    conn: u64,
    result: Result<std::net::TcpStream, ConnectError>,
}

/// Whether this thread runs a loop.
pub(crate) fn is_running() -> bool {
    INBOX.with(|inbox| inbox.borrow().is_some())
}

/// Hands a connection to this thread's loop; gives it back if none runs.
pub(crate) fn adopt(adopted: Adopted) -> Result<(), Box<Adopted>> {
    INBOX.with(|inbox| {
        let mut inbox = inbox.borrow_mut();
        let Some(inbox) = inbox.as_mut() else {
            return Err(Box::new(adopted));
        };
        inbox.adopted.push(adopted);
        if let Some(waker) = &inbox.waker {
            waker.wake_by_ref();
        }
        Ok(())
    })
}

/// The body of the request of connection `conn` was relayed (see
/// [`bulk`]).
struct Relayed {
    slot: u32,
    conn: u64,
    relayed: bulk::Relayed,
}

fn deliver(put: impl FnOnce(&mut Inbox)) {
    INBOX.with(|inbox| {
        if let Some(inbox) = inbox.borrow_mut().as_mut() {
            put(inbox);
            if let Some(waker) = &inbox.waker {
                waker.wake_by_ref();
            }
        }
    })
}

/// Clears the thread's inbox when the loop ends: connections are then
/// served by the full path again.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        INBOX.with(|inbox| inbox.borrow_mut().take());
    }
}

/// The loop, as a task of a worker that has a ring. `completions`: the
/// ring's eventfd, signalled when the kernel has work or completions for
/// this thread that came after its last submission (a receive that got
/// bytes, a send that had to wait). Never ends while the worker runs.
pub(crate) async fn run(completions: OwnedFd) {
    // Deprecated because the safe constructor cannot know that the owner
    // keeps its descriptor; an `OwnedFd` does, for its whole life.
    #[allow(deprecated)]
    let signalled = match AsyncFd::with_interest(completions, Interest::READABLE) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "a proxy worker cannot watch its ring's completions");
            return;
        }
    };
    INBOX.with(|inbox| *inbox.borrow_mut() = Some(Inbox::default()));
    let _running = Running;
    let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
    let mut lp = Loop::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let ticked = std::future::poll_fn(|cx| {
            // Each signal is an edge of its own (the counter is never read:
            // no system call for it). Polled until it is pending, which is
            // what registers the wake-up for the next signal: a signal
            // that brought the loop nothing (deferred work only, or the
            // completion of another user of the ring) must not leave the
            // next one unheard until the tick.
            while let Poll::Ready(Ok(mut ready)) = signalled.poll_read_ready(cx) {
                ready.clear_ready();
                cutover_uring::submit_and_reap();
            }
            lp.collect(&waker);
            if lp.has_work() {
                return Poll::Ready(false);
            }
            match tick.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(true),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        // What this turn queued goes out in one submission; what completes
        // during it (a send the socket took at once) is handled in the
        // same turn.
        loop {
            lp.handle();
            cutover_uring::submit_reap_and_run_deferred();
            lp.collect(&waker);
            if !lp.has_work() {
                break;
            }
        }
        if ticked {
            lp.tick(Instant::now());
        }
    }
}

/// Token layout: an id (a connection's slot, or an upstream link's id)
/// above the low byte, which says what the operation is.
mod kind {
    pub(super) const CLIENT_RECV: u8 = 1;
    pub(super) const CLIENT_SEND: u8 = 2;
    pub(super) const LINK_RECV: u8 = 3;
    pub(super) const LINK_SEND: u8 = 4;
}

fn token(id: u32, kind: u8) -> u64 {
    (u64::from(id) << 8) | u64::from(kind)
}

fn split(token: u64) -> (u32, u8) {
    ((token >> 8) as u32, token as u8)
}

/// Who holds an upstream link now.
#[derive(Clone, Copy)]
enum Holder {
    /// Waiting in the idle set (under its endpoint's key).
    Idle(usize),
    Conn(u32),
    /// Given up on; closes once its operations ended.
    Dead,
}

#[derive(Default)]
struct Loop {
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    next_conn: u64,
    completions: Vec<Completion>,
    adopted: Vec<Adopted>,
    connected: Vec<Connected>,
    relayed: Vec<Relayed>,
    shared: Links,
}

impl Loop {
    fn collect(&mut self, waker: &Waker) {
        ops::take_completions(&mut self.completions, waker);
        INBOX.with(|inbox| {
            if let Some(inbox) = inbox.borrow_mut().as_mut() {
                self.adopted.append(&mut inbox.adopted);
                self.connected.append(&mut inbox.connected);
                self.relayed.append(&mut inbox.relayed);
                match &inbox.waker {
                    Some(known) if known.will_wake(waker) => {}
                    _ => inbox.waker = Some(waker.clone()),
                }
            }
        });
    }

    fn has_work(&self) -> bool {
        !self.completions.is_empty()
            || !self.adopted.is_empty()
            || !self.connected.is_empty()
            || !self.relayed.is_empty()
    }

    fn handle(&mut self) {
        for adopted in std::mem::take(&mut self.adopted) {
            self.open(adopted);
        }
        for Connected { slot, conn, result } in std::mem::take(&mut self.connected) {
            self.deliver_to(slot, conn, |conn, links| conn.connected(result, links));
        }
        for Relayed {
            slot,
            conn,
            relayed,
        } in std::mem::take(&mut self.relayed)
        {
            self.deliver_to(slot, conn, |conn, links| conn.relayed(relayed, links));
        }
        let mut completions = std::mem::take(&mut self.completions);
        for completion in completions.drain(..) {
            self.complete(completion);
        }
        self.completions = completions;
    }

    /// Hands what came for connection `id` to it, if it still holds
    /// `slot` (it may have closed, and the slot gone to another).
    fn deliver_to(&mut self, slot: u32, id: u64, give: impl FnOnce(&mut Conn, &mut Links)) {
        let conn = self.conns.get_mut(slot as usize).and_then(Option::as_mut);
        if let Some(conn) = conn.filter(|c| c.id() == id) {
            give(conn, &mut self.shared);
            self.settle(slot);
        }
    }

    fn open(&mut self, adopted: Adopted) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                u32::try_from(self.conns.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.next_conn += 1;
        let conn = Conn::new(slot, self.next_conn, adopted);
        self.conns[slot as usize] = Some(conn);
        if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
            conn.start(&mut self.shared);
        }
        self.settle(slot);
    }

    fn conn_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn complete(&mut self, completion: Completion) {
        let (id, kind) = split(completion.token);
        let slot = match kind {
            kind::CLIENT_RECV | kind::CLIENT_SEND => id,
            _ => match self.shared.holder(id) {
                Some(Holder::Conn(slot)) => slot,
                Some(Holder::Idle(_)) => {
                    self.shared.idle_completion(id, kind, completion);
                    return;
                }
                Some(Holder::Dead) => {
                    self.shared.dead_completion(id, kind, completion);
                    return;
                }
                None => return,
            },
        };
        if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
            conn.complete(id, kind, completion, &mut self.shared);
            self.settle(slot);
        }
    }

    /// Frees the slot of a connection that closed or went to the full path.
    fn settle(&mut self, slot: u32) {
        let done = self.conn_mut(slot).is_some_and(|conn| conn.is_finished());
        if !done {
            return;
        }
        if let Some(conn) = self.conns[slot as usize].take() {
            self.free.push(slot);
            conn.finish(&mut self.shared);
        }
    }

    fn tick(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let slot = slot as u32;
            if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
                conn.tick(now);
                self.settle(slot);
            }
        }
        self.shared.tick();
    }
}

/// Opens an upstream connection on the worker's runtime (tokio's connect
/// with the configured timeout) for the request of connection `conn`.
fn connect(slot: u32, conn: u64, addr: std::net::SocketAddr, timeout: Duration) {
    tokio::spawn(async move {
        let result = crate::pool::connect(addr, timeout)
            .await
            .and_then(|stream| stream.into_std().map_err(ConnectError::Io));
        deliver(|inbox| inbox.connected.push(Connected { slot, conn, result }));
    });
}

/// Relays a large body on the worker's runtime for connection `conn`.
fn relay_bulk(slot: u32, conn: u64, body: bulk::Body) {
    tokio::spawn(async move {
        let relayed = body.relay().await;
        deliver(|inbox| {
            inbox.relayed.push(Relayed {
                slot,
                conn,
                relayed,
            })
        });
    });
}
