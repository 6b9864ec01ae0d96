//! The loop's upstream connections ("links"): who holds each, the idle ones
//! by endpoint, the ones given up on, and the buffers the loop reuses.
//!
//! A link keeps a multishot receive armed for its whole life. While it is
//! idle, anything that receive gets (an unsolicited response, the end of
//! the stream) means the link is unusable: it is given up on before a
//! request could read those bytes as its answer — the same point-in-time
//! check as the full path's before it reuses a connection.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cutover_uring::ops::{self, Completion};

use super::{kind, token, Holder};
use crate::endpoint::Endpoint;
use crate::upstream::Upstream;

/// One upstream connection of the loop.
pub(super) struct Link {
    pub(super) id: u32,
    pub(super) stream: std::net::TcpStream,
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) upstream: Arc<Upstream>,
    /// It carried an exchange before this one.
    pub(super) reused: bool,
    pub(super) sending: bool,
    /// Its multishot receive is armed.
    pub(super) reading: bool,
    /// Its receive was cancelled to stop reading for a while (a client
    /// slower than its upstream).
    pub(super) paused: bool,
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
        !self.sending && !self.reading
    }

    /// Arms its receive unless it is armed.
    pub(super) fn read(&mut self) -> std::io::Result<()> {
        if !self.reading {
            ops::recv_multishot(self.fd(), token(self.id, kind::LINK_RECV))?;
            self.reading = true;
            self.paused = false;
        }
        Ok(())
    }

    /// Notes that a completion of `kind` was the last of its operation.
    pub(super) fn ended(&mut self, kind: u8, done: &Completion) {
        match kind {
            kind::LINK_SEND => self.sending = false,
            kind::LINK_RECV if !done.more => self.reading = false,
            _ => {}
        }
    }

    /// Ends its operations (they complete), keeps it open until they did.
    pub(super) fn shut_down(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The links of one loop.
#[derive(Default)]
pub(crate) struct Links {
    holders: HashMap<u32, Holder>,
    /// Idle links by endpoint (its address in memory).
    idle: HashMap<usize, Vec<Link>>,
    /// Links given up on, until nothing of theirs is in flight.
    dead: Vec<Link>,
    next_id: u32,
}

fn key(endpoint: &Endpoint) -> usize {
    std::ptr::from_ref(endpoint) as usize
}

impl Links {
    /// The next link id. Ids wrap (24 bits); one still held (a long-idle
    /// link, a buried one whose receive has not ended) is skipped, or its
    /// token would name two links' operations.
    fn fresh_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1) & 0x00ff_ffff;
            if !self.holders.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

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
        let id = self.fresh_id();
        self.holders.insert(id, Holder::Conn(slot));
        Link {
            id,
            stream,
            endpoint,
            upstream,
            reused: false,
            sending: false,
            reading: false,
            paused: false,
            received: false,
            timed_out: false,
        }
    }

    /// An idle link of `endpoint` for the connection in `slot`.
    pub(super) fn take_idle(&mut self, endpoint: &Arc<Endpoint>, slot: u32) -> Option<Link> {
        let key = key(endpoint);
        let links = self.idle.get_mut(&key)?;
        let mut link = links.pop()?;
        if links.is_empty() {
            self.idle.remove(&key);
        }
        endpoint.ring_idle.fetch_sub(1, Ordering::Relaxed);
        link.reused = true;
        link.received = false;
        link.timed_out = false;
        self.holders.insert(link.id, Holder::Conn(slot));
        Some(link)
    }

    /// Keeps a link whose exchange ended cleanly for the next request to
    /// its endpoint, its receive armed to notice anything it says.
    pub(super) fn put_idle(&mut self, mut link: Link) {
        if link.read().is_err() {
            return self.bury(link);
        }
        let key = key(&link.endpoint);
        self.holders.insert(link.id, Holder::Idle(key));
        link.endpoint.ring_idle.fetch_add(1, Ordering::Relaxed);
        self.idle.entry(key).or_default().push(link);
    }

    /// Closes a link nothing is in flight on.
    fn close(&mut self, link: Link) {
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

    /// An operation of a buried link completed.
    pub(super) fn dead_completion(&mut self, id: u32, kind: u8, completion: Completion) {
        let Some(at) = self.dead.iter().position(|link| link.id == id) else {
            return;
        };
        self.dead[at].ended(kind, &completion);
        if let Some(buf) = completion.buf {
            self.recycle(buf);
        }
        if self.dead[at].is_quiet() {
            let link = self.dead.swap_remove(at);
            self.close(link);
        }
    }

    /// An idle link's receive got something: its upstream closed it or
    /// spoke out of turn (or it was shut down by [`Links::tick`]).
    pub(super) fn idle_completion(&mut self, id: u32, kind: u8, completion: Completion) {
        let Some(Holder::Idle(key)) = self.holders.get(&id).copied() else {
            return;
        };
        let Some(links) = self.idle.get_mut(&key) else {
            return;
        };
        let Some(at) = links.iter().position(|link| link.id == id) else {
            return;
        };
        let mut link = links.swap_remove(at);
        if links.is_empty() {
            self.idle.remove(&key);
        }
        link.endpoint.ring_idle.fetch_sub(1, Ordering::Relaxed);
        link.ended(kind, &completion);
        if let Some(buf) = completion.buf {
            self.recycle(buf);
        }
        self.bury(link);
    }

    /// Shuts down idle links of retired upstreams and removed endpoints
    /// (their receives then end and they close).
    pub(super) fn tick(&mut self) {
        for links in self.idle.values() {
            for link in links {
                if link.upstream.is_retired() || link.endpoint.is_removed() {
                    link.shut_down();
                }
            }
        }
    }

    /// An empty buffer with room for `capacity` bytes.
    pub(super) fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        ops::buffer(capacity)
    }

    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        ops::give_back(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_id_still_held_when_the_ids_wrap_is_not_given_again() {
        let mut links = Links {
            next_id: 0x00ff_fffd,
            ..Links::default()
        };
        links.holders.insert(0x00ff_fffe, Holder::Dead);
        links.holders.insert(0x00ff_ffff, Holder::Idle(1));
        links.holders.insert(0, Holder::Conn(7));
        assert_eq!(links.fresh_id(), 1);
        assert_eq!(links.fresh_id(), 2);
    }
}
