//! Everything `unsafe` of the crate: queueing operations whose buffers the
//! kernel reads or writes after the call returns.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{cqueue, opcode, IoUring};

/// `MSG_WAITALL`: a stream send the socket takes only in part is retried
/// by the kernel for the rest; `MSG_NOSIGNAL`: a closed peer is an
/// `EPIPE` result, not a signal.
const SEND_FLAGS: i32 = 0x100 | 0x4000;
/// The buffer group of the receive buffers.
const BUFFER_GROUP: u16 = 0;
/// Receive buffers per thread (a power of two), and their size: the
/// arrivals of one batch of completions share them, and each goes back as
/// soon as its bytes were copied out.
const RECV_BUFFERS: u16 = 256;
const RECV_BUFFER_SIZE: usize = 16 * 1024;

pub(crate) struct Ring {
    // Field order is drop order: the ring (which holds the registration of
    // the buffers) goes before the buffers.
    uring: IoUring,
    buffers: BufRing,
    /// Signalled when a completion is posted while enabled: outside
    /// [`Ring::submit_and_reap`] (whose own submission posts inline
    /// completions it reaps itself).
    _completions: OwnedFd,
}

/// Submissions refused in a row (the kernel out of memory for requests)
/// before a caller is told the queue could not be emptied.
const SUBMIT_ATTEMPTS: usize = 3;

impl Ring {
    pub(crate) fn new(entries: u32) -> io::Result<(Ring, OwnedFd)> {
        // A single issuer (Linux 6.0) saves the kernel some locking; older
        // kernels refuse the flag, and get a plain ring.
        let uring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(2))
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(entries.saturating_mul(2))
                    .setup_single_issuer()
                    .build(entries)
            })
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(entries.saturating_mul(2))
                    .build(entries)
            })?;
        let completions = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        uring
            .submitter()
            .register_eventfd(completions.as_raw_fd())?;
        let buffers = BufRing::new(RECV_BUFFERS, RECV_BUFFER_SIZE)?;
        // SAFETY: the ring's memory stays allocated, and in place, until
        // the ring is dropped (it is dropped first: see the field order).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                buffers.count,
                BUFFER_GROUP,
                0,
            )?;
        }
        let watched = completions.try_clone()?;
        Ok((
            Ring {
                uring,
                buffers,
                _completions: completions,
            },
            watched,
        ))
    }

    /// Queues a send of `bytes` on `fd` (not yet submitted).
    ///
    /// The caller keeps `bytes` allocated and unchanged until the send's
    /// completion was reaped (they live in the operation's state, which the
    /// thread's table holds until then and which nobody writes while the
    /// send is in flight), and keeps `fd` open until it was submitted.
    pub(crate) fn push_send(&mut self, fd: RawFd, bytes: &[u8], user_data: u64) -> io::Result<()> {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(Fd(fd), bytes.as_ptr(), len)
            .flags(SEND_FLAGS)
            .build()
            .user_data(user_data);
        // SAFETY: the entry points at `bytes`, which the caller keeps
        // alive and unchanged until the completion (see above).
        unsafe { self.push(&entry) }
    }

    /// Queues a receive that stays armed: each arrival completes with a
    /// buffer of the thread's buffer ring (see [`Ring::received`]), until
    /// the end of the stream, an error, or the ring runs out of buffers.
    pub(crate) fn push_recv_multishot(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(user_data);
        // SAFETY: the receive writes only into the registered buffer ring,
        // which lives as long as the ring.
        unsafe { self.push(&entry) }
    }

    /// The bytes a receive completion with `flags` put in a buffer of the
    /// ring (`n` of them), passed to `read`; the buffer then goes back to
    /// the kernel.
    pub(crate) fn received<T>(
        &mut self,
        flags: u32,
        n: usize,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Option<T> {
        let id = cqueue::buffer_select(flags)?;
        let value = read(self.buffers.bytes(id, n));
        self.buffers.give_back(id);
        Some(value)
    }

    /// Queues the cancellation of the operation with `target` user data;
    /// the cancellation's own completion carries `user_data`.
    pub(crate) fn push_cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        // SAFETY: a cancellation points at no memory of ours.
        unsafe { self.push(&entry) }
    }

    /// # Safety
    /// Whatever memory `entry` points at stays valid until its completion.
    unsafe fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: passed on to the caller (see above).
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel first.
            self.uring.submit()?;
        }
    }

    /// Submits what is queued (one system call, none if nothing is and no
    /// completion waits in the kernel's overflow list) and collects the
    /// completions ready now as (user data, result). False: the kernel
    /// refused the submission; entries are still queued.
    /// `run_deferred`: enter even with nothing to submit and nothing
    /// flagged, to run work the kernel deferred to this thread: it runs a
    /// bounded amount per entry and may leave the rest unflagged and
    /// unsignalled (a caller that got completions enters again).
    pub(crate) fn submit_and_reap(
        &mut self,
        into: &mut Vec<(u64, i32, u32)>,
        run_deferred: bool,
    ) -> bool {
        // Completions posted during our own submission are reaped below:
        // no need to be woken for them.
        self.uring.completion().disable_eventfd();
        let mut submitted = true;
        for _ in 0..SUBMIT_ATTEMPTS {
            let pending = {
                let queue = self.uring.submission();
                !queue.is_empty() || queue.cq_overflow() || queue.taskrun()
            };
            if !pending && !run_deferred {
                submitted = true;
                break;
            }
            // Also flushes completions the kernel kept in its overflow
            // list; reaping makes room for them.
            submitted = self.enter().is_ok();
            self.reap(into);
            if submitted {
                break;
            }
        }
        self.uring.completion().enable_eventfd();
        // Work deferred to this thread while the eventfd was disabled
        // signalled nobody, and later work will not signal while it waits:
        // run it now (the kernel flags it until it ran).
        if self.uring.submission().taskrun() && self.uring.submit().is_err() {
            submitted = false;
        }
        // One posted between the reaping and the enabling signalled nobody.
        self.reap(into);
        submitted
    }

    /// Submits what is queued and runs the work deferred to this thread.
    fn enter(&mut self) -> io::Result<usize> {
        let queued = u32::try_from(self.uring.submission().len()).unwrap_or(u32::MAX);
        // IORING_ENTER_GETEVENTS: run deferred work, collect completions.
        let flags = 1;
        // SAFETY: no argument is passed (nothing for the kernel to read);
        // the queued entries were pushed under their own safety contracts.
        unsafe { self.uring.submitter().enter::<()>(queued, 0, flags, None) }
    }

    fn reap(&mut self, into: &mut Vec<(u64, i32, u32)>) {
        into.extend(
            self.uring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }
}

/// Whether a multishot operation's completion says more will follow.
pub(crate) fn has_more(flags: u32) -> bool {
    cqueue::more(flags)
}

/// Buffers the kernel picks from for receives (a provided-buffer ring):
/// an operation waiting for data holds none of them.
struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    memory: *mut u8,
    memory_layout: Layout,
    count: u16,
    size: usize,
    tail: u16,
}

impl BufRing {
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        let too_big = || io::Error::other("receive buffers too large");
        let entries_layout =
            Layout::from_size_align(usize::from(count) * size_of::<BufRingEntry>(), 4096)
                .map_err(|_| too_big())?;
        let memory_layout =
            Layout::from_size_align(usize::from(count) * size, 4096).map_err(|_| too_big())?;
        // SAFETY: both layouts have a non-zero size (count and size are
        // constants above zero).
        let (entries, memory) = unsafe {
            (
                alloc::alloc_zeroed(entries_layout).cast::<BufRingEntry>(),
                alloc::alloc(memory_layout),
            )
        };
        if entries.is_null() || memory.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = BufRing {
            entries,
            entries_layout,
            memory,
            memory_layout,
            count,
            size,
            tail: 0,
        };
        for id in 0..count {
            ring.provide(id);
        }
        ring.publish();
        Ok(ring)
    }

    /// The first `len` bytes of buffer `id`, which the kernel filled and
    /// handed to us (it writes it again only once given back).
    fn bytes(&self, id: u16, len: usize) -> &[u8] {
        let len = len.min(self.size);
        let id = usize::from(id % self.count);
        // SAFETY: the buffer lies inside `memory` (id < count), `len` is
        // at most its size, and the kernel does not write it until
        // `give_back`, which needs `&mut self` (this borrow ends first).
        unsafe { std::slice::from_raw_parts(self.memory.add(id * self.size), len) }
    }

    fn give_back(&mut self, id: u16) {
        self.provide(id % self.count);
        self.publish();
    }

    fn provide(&mut self, id: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot` < count, inside the entries allocation; the kernel
        // reads entries only up to the published tail, which this one is
        // not yet part of.
        let entry = unsafe { &mut *self.entries.add(slot) };
        // SAFETY: the buffer lies inside `memory` (id < count).
        let addr = unsafe { self.memory.add(usize::from(id) * self.size) };
        entry.set_addr(addr as u64);
        entry.set_len(u32::try_from(self.size).unwrap_or(u32::MAX));
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail lives in the first entry's reserved field, which
        // the kernel reads atomically; a release store publishes the
        // entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring that
        // used them is gone (see `Ring`'s field order).
        unsafe {
            alloc::dealloc(self.entries.cast(), self.entries_layout);
            alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}
