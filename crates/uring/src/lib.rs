//! Sends batched through one io_uring per thread.
//!
//! A proxy worker writes a request to an upstream and goes on to its next
//! ready task; the bytes wait in the thread's submission queue and reach
//! the kernel together, in one `io_uring_enter`, when the thread runs out
//! of work (its event loop calls [`submit_and_reap`] before it sleeps).
//! One system call then carries a whole batch of sends, and a backend on
//! the same CPU is woken once per batch instead of preempting the proxy
//! after every single `send` — on loopback that preemption, not the system
//! call itself, is most of what a request costs the proxy (see the bench).
//!
//! A send owns its buffer until the kernel is done with it. Its socket may
//! close once the send was submitted (the kernel then holds the socket
//! itself), but not while it waits in the queue: the descriptor could be
//! reused by another socket before the kernel reads the entry. A caller
//! about to close a socket whose send has not ended calls
//! [`submit_and_reap`] first.
//!
//! Linux only; elsewhere, and where the kernel refuses a ring, [`install`]
//! fails and callers write as before.

use std::any::Any;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

pub mod ops;
#[cfg(target_os = "linux")]
mod sys;

thread_local! {
    static RING: RefCell<Option<ThreadRing>> = const { RefCell::new(None) };
}

/// This thread's ring and the sends it carries, by user data.
struct ThreadRing {
    #[cfg(target_os = "linux")]
    ring: sys::Ring,
    in_flight: Vec<Option<Arc<Mutex<SendState>>>>,
    free: Vec<u32>,
    /// Sends queued since the last submission.
    queued: usize,
    /// The task running [`submit_each_turn`], if any.
    submitter: Option<Waker>,
    /// The operations of this thread's event loop (see [`ops`]).
    ops: ops::Table,
}

impl Drop for ThreadRing {
    fn drop(&mut self) {
        // The kernel may still read the buffers of sends in flight while
        // the ring winds down: those are leaked rather than freed under it
        // (a thread ends with sends in flight only when its process ends).
        if self.in_flight.iter().any(Option::is_some) {
            std::mem::forget(std::mem::take(&mut self.in_flight));
        }
        self.ops.leak_in_flight();
    }
}

/// Creates this thread's ring with room for `entries` queued sends. The
/// returned descriptor turns readable when a send completes after it was
/// submitted (one that could not finish at once, e.g. a full socket
/// buffer): the caller then reads it (resetting it) and calls
/// [`submit_and_reap`]. Sends that finish during submission are reaped by
/// that same call.
pub fn install(entries: u32) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        let (ring, completions) = sys::Ring::new(entries)?;
        RING.with(|slot| {
            *slot.borrow_mut() = Some(ThreadRing {
                ring,
                in_flight: Vec::new(),
                free: Vec::new(),
                queued: 0,
                submitter: None,
                ops: ops::Table::default(),
            })
        });
        Ok(completions)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = entries;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring exists on Linux only",
        ))
    }
}

/// Submits the sends queued during each turn of a single-threaded event
/// loop, to run as a task of that loop on the ring's thread: the first
/// send of a batch wakes it, and the loop runs it after the tasks that were
/// already ready (which may queue more sends). Batching per turn rather
/// than only when the loop goes idle keeps a busy loop from holding
/// requests back while a backend on another CPU waits for work. Never
/// ends; ends at once on a thread without a ring.
pub async fn submit_each_turn() {
    std::future::poll_fn(|cx| {
        let installed = RING.with(|slot| {
            let mut slot = slot.borrow_mut();
            let Some(ring) = slot.as_mut() else {
                return false;
            };
            ring.submitter = Some(cx.waker().clone());
            true
        });
        if !installed {
            return Poll::Ready(());
        }
        submit_and_reap();
        Poll::Pending
    })
    .await
}

/// Whether this thread has a ring.
pub fn is_installed() -> bool {
    RING.with(|slot| slot.borrow().is_some())
}

/// How a send ended: all bytes sent, or the socket's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    All,
    Failed(rustix::io::Errno),
}

impl Sent {
    /// The error a failed send returned, as `std::io` tells it.
    pub(crate) fn into_result(self) -> io::Result<()> {
        match self {
            Sent::All => Ok(()),
            Sent::Failed(errno) => Err(io::Error::from(errno)),
        }
    }
}

struct SendState {
    fd: RawFd,
    buf: Vec<u8>,
    /// Bytes the kernel took so far (a short send goes out again for the
    /// rest).
    done: usize,
    outcome: Option<Sent>,
    waker: Option<Waker>,
    /// Keeps the socket open until the send ended (see
    /// [`Outbox::hold_until_sent`]).
    held: Option<Box<dyn Any + Send>>,
    /// Keep the buffer for the sender's next send; else freed as soon as
    /// the send ended.
    keep_buffer: bool,
}

fn lock(state: &Mutex<SendState>) -> MutexGuard<'_, SendState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A send queued on a thread's ring, until its completion was reaped.
pub(crate) struct SendInFlight {
    state: Arc<Mutex<SendState>>,
}

impl std::fmt::Debug for SendInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendInFlight")
            .field("outcome", &lock(&self.state).outcome)
            .finish()
    }
}

/// Queues `buf` to be sent on `socket` by this thread's ring, at its next
/// [`submit_and_reap`]; `keep_buffer`: the buffer stays with the send for
/// [`SendInFlight::take_buffer`], else it is freed as soon as the send
/// ended. Gives the buffer back if this thread has no ring, or if the
/// buffer is empty (nothing to send).
///
/// The caller keeps `socket` open until the send was submitted (see the
/// crate's documentation), and writes nothing else to it until the send
/// ended: sends are not ordered with other writes.
fn send(socket: &impl AsFd, buf: Vec<u8>, keep_buffer: bool) -> Result<SendInFlight, Vec<u8>> {
    if buf.is_empty() {
        return Err(buf);
    }
    let fd = socket.as_fd().as_raw_fd();
    RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(ring) = slot.as_mut() else {
            return Err(buf);
        };
        let state = Arc::new(Mutex::new(SendState {
            fd,
            buf,
            done: 0,
            outcome: None,
            waker: None,
            held: None,
            keep_buffer,
        }));
        ring.start(Arc::clone(&state));
        Ok(SendInFlight { state })
    })
}

impl ThreadRing {
    /// Queues the rest of `state`'s buffer under a free user-data index.
    fn start(&mut self, state: Arc<Mutex<SendState>>) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.in_flight.push(None);
                u32::try_from(self.in_flight.len() - 1).unwrap_or(u32::MAX)
            }
        };
        {
            let guard = lock(&state);
            #[cfg(target_os = "linux")]
            if let Err(e) =
                self.ring
                    .push_send(guard.fd, &guard.buf[guard.done..], u64::from(index))
            {
                drop(guard);
                finish(&state, Sent::Failed(errno_of(&e)));
                self.free.push(index);
                return;
            }
        }
        if let Some(entry) = self.in_flight.get_mut(index as usize) {
            *entry = Some(state);
        }
        self.queued_one();
    }

    /// Counts an operation queued since the last submission.
    fn queued_one(&mut self) {
        self.queued += 1;
        if self.queued == 1 {
            // The first of a batch: the submitter runs once the tasks that
            // are ready now have run (see `submit_each_turn`).
            if let Some(submitter) = &self.submitter {
                submitter.wake_by_ref();
            }
        }
    }
}

fn errno_of(e: &io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(e).unwrap_or(rustix::io::Errno::IO)
}

/// Marks a send done, wakes whoever waits for it and lets go of a held
/// socket (outside the lock and the ring: dropping it may close it).
fn finish(state: &Mutex<SendState>, outcome: Sent) {
    let (waker, held, buf) = {
        let mut guard = lock(state);
        guard.outcome = Some(outcome);
        let buf = if guard.keep_buffer {
            Vec::new()
        } else {
            std::mem::take(&mut guard.buf)
        };
        (guard.waker.take(), guard.held.take(), buf)
    };
    drop(held);
    drop(buf);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Hands this thread's queued sends to the kernel and handles every
/// completion that is ready (a send the socket took only in part is queued
/// again for the rest). Returns false if the kernel refused the submission
/// (it stays queued; rare: the kernel out of memory for requests). Does
/// nothing on a thread without a ring.
pub fn submit_and_reap() -> bool {
    submit_and_reap_with(false)
}

/// [`submit_and_reap`], entering the kernel even with nothing queued or
/// flagged, to run what it deferred to this thread (it runs a bounded
/// amount per entry, and may not flag what it left): for a loop that keeps
/// calling it while completions come.
pub fn submit_reap_and_run_deferred() -> bool {
    submit_and_reap_with(true)
}

fn submit_and_reap_with(run_deferred: bool) -> bool {
    let mut completions = Vec::new();
    let submitted = RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(ring) = slot.as_mut() else {
            return true;
        };
        ring.queued = 0;
        ops::retry_cancels(ring);
        #[cfg(target_os = "linux")]
        return ring.ring.submit_and_reap(&mut completions, run_deferred);
        #[cfg(not(target_os = "linux"))]
        {
            let _ = run_deferred;
            true
        }
    });
    for (user_data, result, flags) in completions {
        match ops::owner(user_data) {
            ops::Owner::Send(index) => complete(index, result),
            ops::Owner::Loop(index) => ops::complete(index, result, flags),
            ops::Owner::Nobody => {}
        }
    }
    ops::wake_loop();
    submitted
}

/// One completion: the send ended, or part is left and is queued again.
fn complete(index: u32, result: i32) {
    let state = RING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let ring = slot.as_mut()?;
        let state = ring.in_flight.get_mut(index as usize)?.take()?;
        ring.free.push(index);
        Some(state)
    });
    let Some(state) = state else { return };
    let outcome = {
        let mut guard = lock(&state);
        match usize::try_from(result) {
            Err(_) => Some(Sent::Failed(rustix::io::Errno::from_raw_os_error(-result))),
            // A stream socket that takes nothing is gone.
            Ok(0) => Some(Sent::Failed(rustix::io::Errno::PIPE)),
            Ok(n) => {
                guard.done += n;
                (guard.done >= guard.buf.len()).then_some(Sent::All)
            }
        }
    };
    match outcome {
        Some(outcome) => finish(&state, outcome),
        None => RING.with(|slot| {
            if let Some(ring) = slot.borrow_mut().as_mut() {
                ring.start(state);
            }
        }),
    }
}

impl SendInFlight {
    /// How the send ended; `None` while in flight.
    pub(crate) fn outcome(&self) -> Option<Sent> {
        lock(&self.state).outcome
    }

    /// Waits until the send ended.
    pub(crate) fn poll_sent(&self, cx: &mut Context<'_>) -> Poll<Sent> {
        let mut guard = lock(&self.state);
        match guard.outcome {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                guard.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Keeps `owner` (whatever keeps the socket open) until the send ended,
    /// then drops it. Gives it back if the send already ended.
    pub(crate) fn hold_until_sent(
        &self,
        owner: Box<dyn Any + Send>,
    ) -> Result<(), Box<dyn Any + Send>> {
        let mut guard = lock(&self.state);
        if guard.outcome.is_some() {
            return Err(owner);
        }
        guard.held = Some(owner);
        Ok(())
    }

    /// The buffer back, emptied, for the next send; `None` while in flight.
    pub(crate) fn take_buffer(&self) -> Option<Vec<u8>> {
        let mut guard = lock(&self.state);
        guard.outcome?;
        let mut buf = std::mem::take(&mut guard.buf);
        buf.clear();
        Some(buf)
    }
}

/// The sends of one socket, one at a time: a send is queued only after the
/// previous one ended (sends on a socket must not overlap), and the buffer
/// of an ended send is kept for the next one.
///
/// Dropped with its send still queued, it submits the thread's queue at
/// once: the kernel then holds the socket, which may close; before, its
/// descriptor could be reused by another socket. (Only the queuing thread
/// can submit; an outbox with a queued send stays on that thread: its task
/// runs on a single-threaded loop until the send was submitted.)
#[derive(Debug, Default)]
pub struct Outbox {
    last: Option<SendInFlight>,
    spare: Vec<u8>,
    reuse: bool,
}

impl Outbox {
    /// An outbox whose buffers are freed as soon as their send ended: for
    /// a socket that may go idle after a send (nothing held while idle).
    pub const fn new() -> Outbox {
        Outbox {
            last: None,
            spare: Vec::new(),
            reuse: false,
        }
    }

    /// An outbox that keeps an ended send's buffer for the next one (see
    /// [`Outbox::buffer`]): for a socket that sends again soon.
    pub const fn reusing() -> Outbox {
        Outbox {
            last: None,
            spare: Vec::new(),
            reuse: true,
        }
    }

    /// Waits until the last send ended; its failure, reported once.
    pub fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(last) = &self.last else {
            return Poll::Ready(Ok(()));
        };
        let outcome = match last.poll_sent(cx) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => return Poll::Pending,
        };
        if let Some(buf) = last.take_buffer() {
            self.spare = buf;
        }
        self.last = None;
        Poll::Ready(outcome.into_result())
    }

    /// Whether nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.last
            .as_ref()
            .is_none_or(|last| last.outcome().is_some())
    }

    /// How the last send ended, waiting if needed: `Some(Err)` if it failed.
    pub async fn sent(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_sent(cx)).await
    }

    /// Queues `buf` on this thread's ring; call after the last send ended
    /// ([`Outbox::sent`]). Gives it back if this thread has no ring (or it
    /// is empty): write it the usual way then.
    pub fn queue(&mut self, socket: &impl AsFd, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        if !self.is_idle() {
            return Err(buf);
        }
        self.last = Some(send(socket, buf, self.reuse)?);
        Ok(())
    }

    /// Keeps `owner` (the socket, or what keeps it open) until the queued
    /// send ended, then drops it there: for a socket closing with its last
    /// bytes still queued, which then go out before the close. Gives it
    /// back if nothing is in flight (drop it now).
    pub fn hold_until_sent(
        &mut self,
        owner: Box<dyn Any + Send>,
    ) -> Result<(), Box<dyn Any + Send>> {
        match &self.last {
            Some(last) => last.hold_until_sent(owner),
            None => Err(owner),
        }
    }

    /// An empty buffer to encode the next send into (an ended send's,
    /// reused), with room for at least `capacity` bytes.
    pub fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.spare);
        buf.reserve(capacity);
        buf
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.is_idle() {
            return;
        }
        // Never expected (see above); said loudly, since the descriptor
        // may be reused before the send is submitted.
        if !is_installed() {
            tracing::error!("a queued send's socket closes on a thread without its ring");
        } else if !submit_and_reap() {
            tracing::error!("the kernel refused a queued send whose socket closes now");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A connected pair of loopback sockets (also for `ops`' tests).
    pub(crate) fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn queued_sends_reach_the_peer_only_once_submitted_and_in_order_per_socket() {
        let _completions = install(64).unwrap();
        let (client, mut server) = pair();
        let first = send(&client, b"hello ".to_vec(), true).unwrap();
        assert_eq!(first.outcome(), None, "nothing goes out before submission");
        server.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        assert!(server.read(&mut byte).is_err(), "no byte before submission");
        submit_and_reap();
        assert_eq!(first.outcome(), Some(Sent::All));
        let second = send(&client, b"world".to_vec(), true).unwrap();
        submit_and_reap();
        assert_eq!(second.outcome(), Some(Sent::All));
        server.set_nonblocking(false).unwrap();
        let mut got = [0u8; 11];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        assert_eq!(second.take_buffer(), Some(Vec::new()));
    }

    #[test]
    fn a_send_to_a_reset_connection_fails() {
        let _completions = install(8).unwrap();
        let (client, server) = pair();
        // The peer resets the connection (SO_LINGER 0).
        rustix::net::sockopt::set_socket_linger(&server, Some(std::time::Duration::ZERO)).unwrap();
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let sending = send(&client, vec![b'x'; 1 << 20], true).unwrap();
        for _ in 0..100 {
            submit_and_reap();
            if sending.outcome().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            matches!(sending.outcome(), Some(Sent::Failed(_))),
            "{sending:?}"
        );
    }

    #[test]
    fn a_plain_outbox_frees_its_buffer_as_soon_as_the_send_ended() {
        let _completions = install(8).unwrap();
        let (client, _server) = pair();
        let mut outbox = Outbox::new();
        outbox.queue(&client, vec![b'x'; 4096]).unwrap();
        submit_and_reap();
        let last = outbox.last.as_ref().unwrap();
        assert_eq!(last.outcome(), Some(Sent::All));
        assert_eq!(
            lock(&last.state).buf.capacity(),
            0,
            "nothing held while idle"
        );
        assert!(outbox.buffer(16).capacity() >= 16);
    }

    #[test]
    fn an_outbox_sends_one_at_a_time_and_reuses_the_ended_buffer() {
        let _completions = install(8).unwrap();
        let (client, mut server) = pair();
        let mut outbox = Outbox::reusing();
        let mut first = outbox.buffer(64);
        first.extend_from_slice(b"one ");
        let capacity = first.capacity();
        outbox.queue(&client, first).unwrap();
        assert_eq!(
            outbox.queue(&client, b"two".to_vec()),
            Err(b"two".to_vec()),
            "a second send waits for the first"
        );
        assert!(!outbox.is_idle());
        submit_and_reap();
        assert!(outbox.is_idle());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(outbox.poll_sent(&mut cx), Poll::Ready(Ok(()))));
        let second = outbox.buffer(1);
        assert!(
            second.is_empty() && second.capacity() >= capacity,
            "the buffer is reused"
        );
        outbox.queue(&client, b"two".to_vec()).unwrap();
        // Dropped while queued: submitted on the way out.
        drop(outbox);
        let mut got = [0u8; 7];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one two");
    }

    /// Waits (bounded) until the ring's eventfd says a completion came.
    fn wait_signalled(completions: &OwnedFd) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no completion signalled"
            );
            let mut fds = [PollFd::new(completions, PollFlags::IN)];
            let timeout = Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            // EINTR: the kernel ran this thread's completion work; poll again.
            if let Ok(ready) = poll(&mut fds, Some(&timeout)) {
                if ready > 0 {
                    return;
                }
            }
        }
    }

    #[test]
    fn a_send_that_waits_for_the_peer_completes_later_signals_the_eventfd_and_then_drops_its_held_socket(
    ) {
        let completions = install(8).unwrap();
        let (client, mut server) = pair();
        // More than the socket buffers hold: the send waits for the peer.
        let size = 16 << 20;
        let mut outbox = Outbox::new();
        outbox.queue(&client, vec![b'x'; size]).unwrap();
        submit_and_reap();
        assert!(!outbox.is_idle(), "the peer has read nothing yet");
        let owner = Arc::new(());
        outbox
            .hold_until_sent(Box::new(Arc::clone(&owner)))
            .unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; size];
            server.read_exact(&mut got).unwrap();
            got.iter().all(|b| *b == b'x')
        });
        // Each signal says there is progress to collect (with deferred task
        // work, each step of the send is one); the send ends after some.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !outbox.is_idle() {
            assert!(std::time::Instant::now() < deadline, "the send never ended");
            wait_signalled(&completions);
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&completions, &mut count);
            submit_and_reap();
        }
        assert_eq!(
            Arc::strong_count(&owner),
            1,
            "the held socket went with the send"
        );
        assert!(reader.join().unwrap(), "every byte arrived");
    }

    #[test]
    fn a_thread_without_a_ring_gets_its_buffer_back() {
        std::thread::spawn(|| {
            let (client, _server) = pair();
            assert!(!is_installed());
            assert_eq!(
                send(&client, b"x".to_vec(), true).unwrap_err(),
                b"x".to_vec()
            );
        })
        .join()
        .unwrap();
    }
}
