//! Everything `unsafe` of the probe: submissions to the ring (the kernel
//! uses their pointers after `push` returns), the provided-buffer ring the
//! kernel writes into, and adopting an accepted file descriptor.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{cqueue, opcode, squeue, IoUring};

use crate::{RecvMode, TaskRun};

/// The buffer group of every worker's provided-buffer ring (one per ring).
const BUFFER_GROUP: u16 = 0;

/// A listening socket with `SO_REUSEPORT`, so that each worker binds its own.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 4096)?;
    Ok(TcpListener::from(fd))
}

/// A connection the multishot accept returned.
pub fn adopt_accepted(fd: i32) -> TcpStream {
    // SAFETY: a non-negative accept result is a new descriptor nobody else
    // owns; the stream closes it when dropped.
    unsafe { TcpStream::from_raw_fd(fd) }
}

/// True if the errno of a negative result is ENOBUFS (the buffer ring ran
/// dry: the receive ended and has to be re-armed).
pub fn is_out_of_buffers(result: i32) -> bool {
    rustix::io::Errno::from_raw_os_error(-result) == rustix::io::Errno::NOBUFS
}

/// One worker's ring and how it receives.
pub struct Ring {
    ring: IoUring,
    recv: RecvMode,
}

impl Ring {
    pub fn new(entries: u32, taskrun: TaskRun, recv: RecvMode) -> io::Result<Ring> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries * 4);
        match taskrun {
            TaskRun::Defer => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            TaskRun::Coop => {
                builder.setup_coop_taskrun();
            }
            TaskRun::Plain => {}
        }
        Ok(Ring {
            ring: builder.build(entries)?,
            recv,
        })
    }

    /// One kernel crossing: submits what is queued and waits for one
    /// completion (running deferred completion work).
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other.map(drop),
        }
    }

    /// The completions ready now, as (user data, result, flags).
    pub fn drain_completions(&mut self, into: &mut Vec<(u64, i32, u32)>) {
        into.clear();
        into.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    /// SAFETY contract for callers: every pointer in `entry` stays valid
    /// until its completion (see each operation below).
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entries built here point at memory the caller
            // keeps alive until the completion (documented per operation).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel first.
            self.ring.submit()?;
        }
    }

    pub fn accept_multishot(&mut self, listener: &TcpListener, user_data: u64) -> io::Result<()> {
        // No pointers: the listener outlives the ring (owned by the worker).
        let entry = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
            .build()
            .user_data(user_data);
        self.push(&entry)
    }

    /// A receive into a provided buffer: no pointer of ours in the entry.
    pub fn recv(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let entry = match self.recv {
            RecvMode::Multishot => opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP).build(),
            RecvMode::Oneshot => opcode::Recv::new(Fd(fd), std::ptr::null_mut(), 0)
                .buf_group(BUFFER_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT),
        };
        self.push(&entry.user_data(user_data))
    }

    /// Sends `bytes`. The caller keeps them unmoved and unchanged until the
    /// completion (an `Outbox` does not touch its sending buffer while busy).
    pub fn send(&mut self, fd: RawFd, bytes: &[u8], user_data: u64) -> io::Result<()> {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(Fd(fd), bytes.as_ptr(), len)
            .build()
            .user_data(user_data);
        self.push(&entry)
    }

    /// Registers `bufs` as this ring's provided-buffer group.
    pub fn register(&mut self, bufs: &BufRing) -> io::Result<()> {
        // SAFETY: the ring memory lives in `bufs`, which the worker drops
        // after the ring (field order), so it outlives the registration.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                bufs.count,
                BUFFER_GROUP,
                0,
            )
        }
    }
}

/// Whether the kernel will post more completions for this operation.
pub fn has_more(flags: u32) -> bool {
    cqueue::more(flags)
}

/// The provided buffer a receive completion used.
pub fn buffer_id(flags: u32) -> Option<u16> {
    cqueue::buffer_select(flags)
}

/// A provided-buffer ring: `count` buffers of `size` bytes the kernel fills
/// on receive; each goes back to the ring once its bytes were copied out.
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    memory: *mut u8,
    memory_layout: Layout,
    count: u16,
    size: usize,
    tail: u16,
}

impl BufRing {
    /// `count` must be a power of two (at most 32768).
    pub fn new(count: u16, size: usize) -> io::Result<BufRing> {
        let too_big = || io::Error::other("buffer ring too large");
        let entries_layout =
            Layout::from_size_align(usize::from(count) * size_of::<BufRingEntry>(), 4096)
                .map_err(|_| too_big())?;
        let memory_layout =
            Layout::from_size_align(usize::from(count) * size, 4096).map_err(|_| too_big())?;
        // SAFETY: both layouts have a non-zero size (count, size > 0 are
        // the caller's constants); null is checked below.
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

    /// The bytes a completion said buffer `id` received.
    pub fn received(&self, id: u16, len: usize) -> &[u8] {
        let len = len.min(self.size);
        let id = usize::from(id % self.count);
        // SAFETY: in bounds (id < count, len <= size); the kernel finished
        // writing this buffer before it posted the completion, and does not
        // touch it again until `recycle` gives it back.
        unsafe { std::slice::from_raw_parts(self.memory.add(id * self.size), len) }
    }

    /// Gives buffer `id` back to the kernel.
    pub fn recycle(&mut self, id: u16) {
        self.provide(id % self.count);
        self.publish();
    }

    fn provide(&mut self, id: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: slot < count entries; the kernel reads only entries
        // between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *self.entries.add(slot) };
        // SAFETY: id < count, so the address is inside `memory`.
        entry.set_addr(unsafe { self.memory.add(usize::from(id) * self.size) } as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry (allocated,
        // 2-byte aligned); the kernel reads it concurrently, hence atomic.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring that used
        // them was dropped first (the worker's field order).
        unsafe {
            alloc::dealloc(self.entries.cast(), self.entries_layout);
            alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}
