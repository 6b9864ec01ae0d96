//! Everything `unsafe` of the crate: queueing a send whose buffer the
//! kernel reads after the call returns.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use io_uring::types::Fd;
use io_uring::{opcode, IoUring};

/// `MSG_WAITALL`: a stream send the socket takes only in part is retried
/// by the kernel for the rest; `MSG_NOSIGNAL`: a closed peer is an
/// `EPIPE` result, not a signal.
const SEND_FLAGS: i32 = 0x100 | 0x4000;

pub(crate) struct Ring {
    uring: IoUring,
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
            .build(entries)
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
        let watched = completions.try_clone()?;
        Ok((
            Ring {
                uring,
                _completions: completions,
            },
            watched,
        ))
    }

    /// Queues a send of `bytes` on `fd` (not yet submitted).
    ///
    /// The caller keeps `bytes` allocated and unchanged until the send's
    /// completion was reaped (they live in the send's state, which the
    /// thread's table holds until then and which nobody writes while the
    /// send is in flight), and keeps `fd` open until then.
    pub(crate) fn push_send(&mut self, fd: RawFd, bytes: &[u8], user_data: u32) -> io::Result<()> {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(Fd(fd), bytes.as_ptr(), len)
            .flags(SEND_FLAGS)
            .build()
            .user_data(u64::from(user_data));
        loop {
            // SAFETY: the entry points at `bytes`, which the caller keeps
            // alive and unchanged until the completion (see above).
            if unsafe { self.uring.submission().push(&entry) }.is_ok() {
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
    pub(crate) fn submit_and_reap(&mut self, into: &mut Vec<(u32, i32)>) -> bool {
        // Completions posted during our own submission are reaped below:
        // no need to be woken for them.
        self.uring.completion().disable_eventfd();
        let mut submitted = true;
        for _ in 0..SUBMIT_ATTEMPTS {
            let pending = {
                let queue = self.uring.submission();
                !queue.is_empty() || queue.cq_overflow()
            };
            if !pending {
                submitted = true;
                break;
            }
            // Also flushes completions the kernel kept in its overflow
            // list; reaping makes room for them.
            submitted = self.uring.submit().is_ok();
            self.reap(into);
            if submitted {
                break;
            }
        }
        self.uring.completion().enable_eventfd();
        // One posted between the reaping and the enabling signalled nobody.
        self.reap(into);
        submitted
    }

    fn reap(&mut self, into: &mut Vec<(u32, i32)>) {
        into.extend(
            self.uring
                .completion()
                .map(|c| (u32::try_from(c.user_data()).unwrap_or(u32::MAX), c.result())),
        );
    }
}
