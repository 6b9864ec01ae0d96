//! The loop's upstream connections ("links"): who holds each, the idle ones
//! by endpoint, and the receive buffers the loop reuses.
//!
//! An idle link keeps a poll in flight: if its upstream closes it or says
//! anything while it waits (an unsolicited response), the poll completes
//! and the link is dropped before any request could read those bytes as
//! its answer. Taking a link cancels that poll in the same batch as the
//! request that follows, ahead of it: a poll that completes with events
//! rather than as cancelled saw them before the request went out.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cutover_uring::ops::{self, Completion};

use super::{kind, token, Holder};
use crate::endpoint::Endpoint;
use crate::upstream::Upstream;

/// Receive buffers kept for reuse.
const SPARE_BUFFERS: usize = 64;

/// One upstream connection of the loop.
pub(super) struct Link {
    pub(super) id: u32,
    pub(super) stream: std::net::TcpStream,
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) upstream: Arc<Upstream>,
    /// It carried an exchange before this one.
    pub(super) reused: bool,
    /// Its idle time's poll is still in flight (cancelled).
    pub(super) polling: bool,
    pub(super) sending: bool,
    pub(super) reading: bool,
    /// Bytes of a response came.
    pub(super) received: bool,
    /// Shut down because the response took too long.
    pub(super) timed_out: bool,
}

impl Link {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Nothing of it is in the kernel's hands.
    pub(super) fn is_quiet(&self) -> bool {
        !self.polling && !self.sending && !self.reading
    }

    /// Notes that its operation of `kind` ended.
    pub(super) fn ended(&mut self, kind: u8) {
        match kind {
            kind::LINK_POLL => self.polling = false,
            kind::LINK_SEND => self.sending = false,
            kind::LINK_RECV => self.reading = false,
            _ => {}
        }
    }

    /// Ends its operations (they complete), keeps it open until they did.
    pub(super) fn shut_down(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

thread_local! {
    /// The loop's idle links by endpoint (its address in memory): on the
    /// thread, so that the full path can take one too.
    static IDLE: RefCell<HashMap<usize, Vec<Link>>> = RefCell::new(HashMap::new());
}

/// An idle connection of this worker's loop to `endpoint`, for the full
/// path (which found none in its own pool).
pub(crate) fn take_idle_stream(endpoint: &Endpoint) -> Option<tokio::net::TcpStream> {
    let link = IDLE.with(|idle| idle.borrow_mut().get_mut(&key(endpoint))?.pop())?;
    // Its poll completes as cancelled and finds no link: that frees its id.
    ops::cancel(token(link.id, kind::LINK_POLL));
    endpoint.ring_idle.fetch_sub(1, Ordering::Relaxed);
    tokio::net::TcpStream::from_std(link.stream).ok()
}

/// The links of one loop.
#[derive(Default)]
pub(crate) struct Links {
    holders: HashMap<u32, Holder>,
    /// Links given up on, until nothing of theirs is in flight.
    dead: Vec<Link>,
    next_id: u32,
    spare: Vec<Vec<u8>>,
}

fn key(endpoint: &Endpoint) -> usize {
    std::ptr::from_ref(endpoint) as usize
}

impl Links {
    pub(super) fn holder(&self, id: u32) -> Option<Holder> {
        self.holders.get(&id).copied()
    }

    /// A new link held by the connection in `slot`.
    pub(super) fn open(
        &mut self,
        stream: std::net::TcpStream,
        endpoint: Arc<Endpoint>,
        upstream: Arc<Upstream>,
        slot: u32,
    ) -> Link {
        self.next_id = self.next_id.wrapping_add(1) & 0x00ff_ffff;
        let id = self.next_id;
        self.holders.insert(id, Holder::Conn(slot));
        Link {
            id,
            stream,
            endpoint,
            upstream,
            reused: false,
            polling: false,
            sending: false,
            reading: false,
            received: false,
            timed_out: false,
        }
    }

    /// An idle link of `endpoint` for the connection in `slot`, its idle
    /// poll cancelled.
    pub(super) fn take_idle(&mut self, endpoint: &Arc<Endpoint>, slot: u32) -> Option<Link> {
        let mut link = IDLE.with(|idle| idle.borrow_mut().get_mut(&key(endpoint))?.pop())?;
        endpoint.ring_idle.fetch_sub(1, Ordering::Relaxed);
        ops::cancel(token(link.id, kind::LINK_POLL));
        link.reused = true;
        link.received = false;
        link.timed_out = false;
        self.holders.insert(link.id, Holder::Conn(slot));
        Some(link)
    }

    /// Keeps a link whose exchange ended cleanly for the next request to
    /// its endpoint.
    pub(super) fn put_idle(&mut self, mut link: Link) {
        if ops::poll_readable(link.fd(), token(link.id, kind::LINK_POLL)).is_err() {
            return self.close(link);
        }
        link.polling = true;
        let key = key(&link.endpoint);
        self.holders.insert(link.id, Holder::Idle(key));
        link.endpoint.ring_idle.fetch_add(1, Ordering::Relaxed);
        IDLE.with(|idle| idle.borrow_mut().entry(key).or_default().push(link));
    }

    /// Closes a link nothing is in flight on.
    pub(super) fn close(&mut self, link: Link) {
        debug_assert!(link.is_quiet(), "a link closes only when quiet");
        self.holders.remove(&link.id);
    }

    /// Gives up on a link: shut down, and closed once nothing of it is in
    /// flight.
    pub(super) fn bury(&mut self, link: Link) {
        link.shut_down();
        if link.is_quiet() {
            return self.close(link);
        }
        self.holders.insert(link.id, Holder::Dead);
        self.dead.push(link);
    }

    /// An operation of a buried link ended.
    pub(super) fn dead_completion(&mut self, id: u32, kind: u8, completion: Completion) {
        let Some(at) = self.dead.iter().position(|link| link.id == id) else {
            return;
        };
        self.dead[at].ended(kind);
        if let Some(buf) = completion.buf {
            self.recycle(buf);
        }
        if self.dead[at].is_quiet() {
            let link = self.dead.swap_remove(at);
            self.close(link);
        }
    }

    /// The poll of an idle link completed: its upstream closed it or spoke
    /// out of turn (or it was shut down by [`Links::tick`]).
    pub(super) fn idle_completion(&mut self, id: u32, _completion: Completion) {
        let Some(Holder::Idle(key)) = self.holders.remove(&id) else {
            return;
        };
        let link = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let links = idle.get_mut(&key)?;
            let at = links.iter().position(|link| link.id == id)?;
            let link = links.swap_remove(at);
            if links.is_empty() {
                idle.remove(&key);
            }
            Some(link)
        });
        // Not there: the full path took it (see `take_idle_stream`).
        if let Some(mut link) = link {
            link.endpoint.ring_idle.fetch_sub(1, Ordering::Relaxed);
            link.polling = false;
        }
    }

    /// Shuts down idle links of retired upstreams and removed endpoints
    /// (their polls then complete and they close).
    pub(super) fn tick(&mut self) {
        IDLE.with(|idle| {
            for links in idle.borrow().values() {
                for link in links {
                    if link.upstream.is_retired() || link.endpoint.is_removed() {
                        link.shut_down();
                    }
                }
            }
        });
    }

    /// An empty buffer with room for `capacity` bytes.
    pub(super) fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.reserve(capacity);
        buf
    }

    pub(super) fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() <= 64 * 1024 {
            buf.clear();
            self.spare.push(buf);
        }
    }
}
