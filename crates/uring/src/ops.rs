//! Operations of an event loop that lives on its thread's ring: receives
//! and sends, each told apart by a token the loop chooses, their
//! completions collected by [`take_completions`].
//!
//! Every operation owns its buffer until it completed (the completion
//! gives it back), so the loop never lends memory to the kernel. Its socket
//! must stay open until the operation was submitted; a socket with a
//! receive that may never complete (an idle peer) is shut down or the
//! receive [`cancel`]led before it closes, or the kernel would keep the
//! connection open.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::task::Waker;

use crate::RING;

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    /// A receive: bytes received, 0 at the end of the stream; a send:
    /// bytes sent (all of them). A negative errno when it failed
    /// (`-ECANCELED`: cancelled).
    pub result: i32,
    /// The buffer of a send; for a [`recv_multishot`], the bytes of this
    /// arrival.
    pub buf: Option<Vec<u8>>,
    /// A [`recv_multishot`] stays armed (more completions will follow).
    pub more: bool,
}

enum Kind {
    RecvMulti,
    Send { buf: Vec<u8>, done: usize },
}

struct Op {
    token: u64,
    fd: RawFd,
    kind: Kind,
}

/// The loop's operations in flight on one thread, and its completions not
/// yet taken.
#[derive(Default)]
pub(crate) struct Table {
    slots: Vec<Option<Op>>,
    free: Vec<u32>,
    done: Vec<Completion>,
    waker: Option<Waker>,
    /// Emptied buffers for the next receives and sends.
    spare: Vec<Vec<u8>>,
    /// The receives in flight by token: a cancellation finds its target
    /// without walking every operation (ten thousand idle connections
    /// each keep one armed).
    receives: HashMap<u64, u32>,
    /// Receives (by index) whose cancellation the ring refused: asked
    /// again before each submission until it takes them, so a connection
    /// that waits for its receive to end is not left waiting. A receive
    /// that ends leaves this list (see `remove`), so every index here is
    /// still the receive it was.
    uncancelled: Vec<u32>,
}

/// Buffers kept for reuse per thread, and the largest kept.
const SPARE_BUFFERS: usize = 256;
const SPARE_CAPACITY: usize = 64 * 1024;

impl Table {
    /// The kernel may still write the buffers of operations in flight
    /// while the ring winds down: those are leaked rather than freed under
    /// it (a thread ends with operations in flight only when its process
    /// ends).
    pub(crate) fn leak_in_flight(&mut self) {
        if self.slots.iter().any(Option::is_some) {
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }

    fn insert(&mut self, op: Op) -> u32 {
        let receive = matches!(op.kind, Kind::RecvMulti).then_some(op.token);
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(op);
                index
            }
            None => {
                self.slots.push(Some(op));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(token) = receive {
            self.receives.insert(token, index);
        }
        index
    }

    fn remove(&mut self, index: u32) -> Option<Op> {
        let op = self.slots.get_mut(index as usize)?.take()?;
        self.free.push(index);
        if matches!(op.kind, Kind::RecvMulti) && self.receiving(op.token, index) {
            self.receives.remove(&op.token);
        }
        if !self.uncancelled.is_empty() {
            // A later receive may get this slot and this token: a retried
            // cancellation must not end it.
            self.uncancelled.retain(|&waiting| waiting != index);
        }
        Some(op)
    }

    /// Whether the receive `(token, index)` is still in flight.
    fn receiving(&self, token: u64, index: u32) -> bool {
        self.receives.get(&token) == Some(&index)
    }
}

/// User data of the loop's operations: the table index and this bit.
const LOOP: u64 = 1 << 32;
/// User data of a cancellation (nobody waits for its own completion).
const CANCEL: u64 = 1 << 33;

/// Whose a completion is, by its user data.
pub(crate) enum Owner {
    /// A send of an [`crate::Outbox`].
    Send(u32),
    Loop(u32),
    Nobody,
}

pub(crate) fn owner(user_data: u64) -> Owner {
    // The low 32 bits are an index either way.
    let index = (user_data & u64::from(u32::MAX)) as u32;
    if user_data & CANCEL != 0 {
        Owner::Nobody
    } else if user_data & LOOP != 0 {
        Owner::Loop(index)
    } else {
        Owner::Send(index)
    }
}

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "this thread has no io_uring")
}

/// Queues `op` on this thread's ring (submitted with the turn's batch).
fn start(op: Op) -> Result<(), (Op, io::Error)> {
    RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(ring) = slot.as_mut() else {
            return Err((op, unsupported()));
        };
        let fd = op.fd;
        let index = ring.ops.insert(op);
        let user_data = LOOP | u64::from(index);
        let pushed = push(ring, index, fd, user_data);
        if let Err(e) = pushed {
            let op = ring.ops.remove(index);
            return match op {
                Some(op) => Err((op, e)),
                None => Ok(()),
            };
        }
        // The loop submits at the end of its turn itself.
        ring.queued += 1;
        Ok(())
    })
}

#[cfg(target_os = "linux")]
fn push(ring: &mut crate::ThreadRing, index: u32, fd: RawFd, user_data: u64) -> io::Result<()> {
    let Some(Some(op)) = ring.ops.slots.get_mut(index as usize) else {
        return Ok(());
    };
    match &mut op.kind {
        Kind::RecvMulti => ring.ring.push_recv_multishot(fd, user_data),
        Kind::Send { buf, done } => ring.ring.push_send(fd, &buf[*done..], user_data),
    }
}

#[cfg(not(target_os = "linux"))]
fn push(_: &mut crate::ThreadRing, _: u32, _: RawFd, _: u64) -> io::Result<()> {
    Err(unsupported())
}

/// Receives whatever arrives on `fd`, one completion per arrival (with its
/// bytes), until the end of the stream, an error, a cancellation, or the
/// thread's receive buffers running out (`-ENOBUFS`): a completion without
/// [`Completion::more`] is the last. Nothing is held while nothing comes.
pub fn recv_multishot(fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
    let op = Op {
        token,
        fd: fd.as_raw_fd(),
        kind: Kind::RecvMulti,
    };
    start(op).map_err(|(_, e)| e)
}

/// Sends all of `buf` (a socket that takes only part gets the rest
/// again). Gives the buffer back if it cannot be queued.
pub fn send(fd: BorrowedFd<'_>, buf: Vec<u8>, token: u64) -> Result<(), (Vec<u8>, io::Error)> {
    let op = Op {
        token,
        fd: fd.as_raw_fd(),
        kind: Kind::Send { buf, done: 0 },
    };
    start(op).map_err(|(op, e)| (buffer_of(op), e))
}

fn buffer_of(op: Op) -> Vec<u8> {
    match op.kind {
        Kind::Send { buf, .. } => buf,
        Kind::RecvMulti => Vec::new(),
    }
}

/// Asks the kernel to cancel the receive in flight with `token`; it then
/// completes (with `-ECANCELED`, or its result if it finished first).
/// Returns whether there was one. A cancellation the ring cannot queue
/// now is queued again before each submission until it is.
pub fn cancel(token: u64) -> bool {
    RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(ring) = slot.as_mut() else {
            return false;
        };
        let Some(&index) = ring.ops.receives.get(&token) else {
            return false;
        };
        if let Err(e) = push_cancel(ring, index) {
            tracing::warn!(error = %e, "an io_uring receive could not be cancelled yet; retrying");
            ring.ops.uncancelled.push(index);
        }
        ring.queued_one();
        true
    })
}

/// Queues again the cancellations the ring refused (see [`cancel`]).
pub(crate) fn retry_cancels(ring: &mut crate::ThreadRing) {
    if ring.ops.uncancelled.is_empty() {
        return;
    }
    let waiting = std::mem::take(&mut ring.ops.uncancelled);
    for index in waiting {
        if push_cancel(ring, index).is_err() {
            ring.ops.uncancelled.push(index);
        }
    }
}

#[cfg(target_os = "linux")]
fn push_cancel(ring: &mut crate::ThreadRing, index: u32) -> io::Result<()> {
    ring.ring
        .push_cancel(LOOP | u64::from(index), CANCEL | u64::from(index))
}

#[cfg(not(target_os = "linux"))]
fn push_cancel(_: &mut crate::ThreadRing, _: u32) -> io::Result<()> {
    Err(unsupported())
}

/// Moves the completions collected so far into `into`; `waker` is woken
/// when more arrive.
pub fn take_completions(into: &mut Vec<Completion>, waker: &Waker) {
    RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(ring) = slot.as_mut() else {
            return;
        };
        into.append(&mut ring.ops.done);
        match &ring.ops.waker {
            Some(known) if known.will_wake(waker) => {}
            _ => ring.ops.waker = Some(waker.clone()),
        }
    })
}

/// One completion of a loop operation: a short send goes again for the
/// rest; anything else is collected for the loop.
pub(crate) fn complete(index: u32, result: i32, flags: u32) {
    RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(ring) = slot.as_mut() else {
            return;
        };
        let Some(Some(op)) = ring.ops.slots.get_mut(index as usize) else {
            return;
        };
        let token = op.token;
        match &mut op.kind {
            Kind::RecvMulti => {
                #[cfg(target_os = "linux")]
                let more = crate::sys::has_more(flags);
                #[cfg(not(target_os = "linux"))]
                let more = false;
                let buf = received(ring, flags, result);
                if !more {
                    ring.ops.remove(index);
                }
                ring.ops.done.push(Completion {
                    token,
                    result,
                    buf,
                    more,
                });
                return;
            }
            Kind::Send { buf, done } => {
                if let Ok(n) = usize::try_from(result) {
                    *done += n;
                    if n > 0 && *done < buf.len() {
                        let fd = op.fd;
                        if push(ring, index, fd, LOOP | u64::from(index)).is_ok() {
                            ring.queued_one();
                            return;
                        }
                    }
                }
            }
        }
        let Some(op) = ring.ops.remove(index) else {
            return;
        };
        let completion = finished(op, result);
        ring.ops.done.push(completion);
    })
}

/// The bytes a multishot receive got, copied out of the ring's buffer
/// (which goes back to the kernel at once).
#[cfg(target_os = "linux")]
fn received(ring: &mut crate::ThreadRing, flags: u32, result: i32) -> Option<Vec<u8>> {
    let n = usize::try_from(result).ok().filter(|n| *n > 0)?;
    let mut buf = ring.ops.spare.pop().unwrap_or_default();
    ring.ring
        .received(flags, n, |bytes| buf.extend_from_slice(bytes))?;
    Some(buf)
}

/// An empty buffer with room for `capacity` bytes (a reused one when
/// there is one).
pub fn buffer(capacity: usize) -> Vec<u8> {
    let mut buf = RING
        .with(|slot| slot.borrow_mut().as_mut()?.ops.spare.pop())
        .unwrap_or_default();
    buf.reserve(capacity);
    buf
}

/// Keeps an emptied `buf` for a later receive or [`buffer`].
pub fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() > SPARE_CAPACITY || buf.capacity() == 0 {
        return;
    }
    buf.clear();
    RING.with(|slot| {
        if let Some(ring) = slot.borrow_mut().as_mut() {
            if ring.ops.spare.len() < SPARE_BUFFERS {
                ring.ops.spare.push(buf);
            }
        }
    });
}

#[cfg(not(target_os = "linux"))]
fn received(_: &mut crate::ThreadRing, _: u32, _: i32) -> Option<Vec<u8>> {
    None
}

fn finished(op: Op, result: i32) -> Completion {
    let token = op.token;
    match op.kind {
        Kind::RecvMulti => Completion {
            token,
            result,
            buf: None,
            more: false,
        },
        Kind::Send { buf, done } => {
            let result = match result {
                // A stream socket that takes nothing is gone.
                0 if done < buf.len() => -(rustix::io::Errno::PIPE.raw_os_error()),
                n if n < 0 => n,
                _ => i32::try_from(done).unwrap_or(i32::MAX),
            };
            Completion {
                token,
                result,
                buf: Some(buf),
                more: false,
            }
        }
    }
}

/// Wakes the loop if completions wait for it.
pub(crate) fn wake_loop() {
    let waker = RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let ring = slot.as_mut()?;
        if ring.ops.done.is_empty() {
            return None;
        }
        ring.ops.waker.take()
    });
    if let Some(waker) = waker {
        waker.wake();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::tests::pair;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::task::Waker;

    /// Submits and reaps until `count` completions were collected (bounded).
    fn collect(count: usize) -> Vec<Completion> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "completions missing: {got:?}"
            );
            crate::submit_and_reap();
            take_completions(&mut got, Waker::noop());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn a_cancelled_receive_ends_as_cancelled_and_a_send_delivers_everything() {
        let _completions = crate::install(16).unwrap();
        let (client, mut server) = pair();
        recv_multishot(client.as_fd(), 7).unwrap();
        crate::submit_and_reap();
        assert!(cancel(7));
        let got = collect(1);
        assert_eq!(got[0].token, 7);
        assert_eq!(got[0].result, -(rustix::io::Errno::CANCELED.raw_os_error()));
        assert!(!got[0].more, "a cancelled receive ends");
        assert!(!cancel(7), "nothing is left to cancel");
        send(client.as_fd(), b"all of it".to_vec(), 8).unwrap();
        let got = collect(1);
        assert_eq!((got[0].token, got[0].result), (8, 9));
        let mut buf = [0u8; 9];
        std::io::Read::read_exact(&mut server, &mut buf).unwrap();
        assert_eq!(&buf, b"all of it");
    }

    #[test]
    fn a_cancellation_waiting_for_a_retry_ends_with_its_receive() {
        let mut table = Table::default();
        let receive = |token| Op {
            token,
            fd: -1,
            kind: Kind::RecvMulti,
        };
        let first = table.insert(receive(5));
        table.uncancelled.push(first);
        table.remove(first);
        // The same token on the same slot: a later receive, not the one
        // whose cancellation was refused.
        let second = table.insert(receive(5));
        assert_eq!(second, first);
        assert!(table.uncancelled.is_empty());
        assert!(table.receiving(5, second));
    }

    #[test]
    fn cancelling_one_receive_leaves_the_others_armed() {
        let _completions = crate::install(16).unwrap();
        let (first, _first_peer) = pair();
        let (second, mut second_peer) = pair();
        recv_multishot(first.as_fd(), 21).unwrap();
        recv_multishot(second.as_fd(), 22).unwrap();
        crate::submit_and_reap();
        assert!(cancel(21));
        let got = collect(1);
        assert_eq!(got[0].token, 21);
        assert!(!got[0].more);
        second_peer.write_all(b"still here").unwrap();
        let got = collect(1);
        assert_eq!((got[0].token, got[0].more), (22, true));
        assert_eq!(got[0].buf.as_deref(), Some(&b"still here"[..]));
        assert!(cancel(22));
        assert_eq!(collect(1)[0].token, 22);
    }

    #[test]
    fn a_multishot_receive_gets_each_arrival_and_ends_at_the_end_of_the_stream() {
        let _completions = crate::install(16).unwrap();
        let (client, mut server) = pair();
        recv_multishot(client.as_fd(), 9).unwrap();
        crate::submit_and_reap();
        server.write_all(b"one").unwrap();
        let first = collect(1);
        assert_eq!(
            (first[0].token, first[0].result, first[0].more),
            (9, 3, true)
        );
        assert_eq!(first[0].buf.as_deref(), Some(&b"one"[..]));
        server.write_all(b"two!").unwrap();
        let second = collect(1);
        assert_eq!(second[0].buf.as_deref(), Some(&b"two!"[..]));
        assert!(second[0].more, "still armed");
        drop(server);
        let last = collect(1);
        assert_eq!(
            (last[0].result, last[0].more),
            (0, false),
            "the end of the stream ends it"
        );
    }
}
