//! `cutover-uring-probe`: a MEASURING PROTOTYPE, not part of `cutover serve`.
//!
//! Issue 19 asks whether io_uring takes enough kernel crossings off the
//! HTTP/1.1 keep-alive hot path to put cutover clearly ahead of nginx. This
//! crate answers that with the smallest proxy that does the same per-request
//! work as cutover's data plane on that path, so its syscalls and CPU per
//! request can be set beside cutover's (epoll, tokio) and nginx's. It has no
//! routing, no pools shared between connections, no timeouts, no TLS, no
//! drain: do not deploy it.
//!
//! # Layout
//!
//! - [`start`] / [`Options`]: `workers` threads, each with its own ring and
//!   its own `SO_REUSEPORT` listener on the same address. One listener per
//!   ring means no two rings wait on one socket (no shared wakeups, no
//!   cross-thread hand-off); the kernel spreads connections by hash, which
//!   is even enough for the 50 connections of the benchmark.
//! - `worker`: the event loop of one thread: multishot accept, receives
//!   into a provided-buffer ring ([`RecvMode::Multishot`] or re-armed
//!   one-shot receives), sends, and ONE `submit_and_wait` per iteration that
//!   submits everything the last batch of completions queued.
//! - `conn`: one client connection paired 1:1 with its own keep-alive
//!   upstream connection (opened with a blocking loopback `connect` at
//!   accept). nginx-keepalive keeps a pool of idle upstream connections; with
//!   a fixed set of 50 busy client connections each one ends up reusing one
//!   pooled connection for its whole life, which is what a 1:1 pairing does.
//!   The per-connection state machine: request head, Content-Length request
//!   body, response head, Content-Length response body, next request.
//! - `http`: the header work cutover does, with `httparse` (cutover's codec
//!   is crate-private in `cutover-proxy`): hop-by-hop headers dropped,
//!   `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` set, a made-up
//!   `X-Request-Id` sent upstream and returned on the response. Anything but
//!   Content-Length framing (chunked, upgrades, read-until-close responses)
//!   is refused: 501 for a request, 502 for a response, then the connection
//!   closes.
//! - `sys`: everything `unsafe`: the ring's submissions and the provided
//!   buffer ring shared with the kernel.
//!
//! # Invariants
//!
//! - A buffer handed to the kernel (a send's bytes, a provided buffer) is
//!   neither moved, resized nor freed until its completion arrived: a
//!   connection's slot is freed only when no operation of it is in flight.
//! - Closing a connection shuts both sockets down first; the file
//!   descriptors are closed when the last in-flight operation completed.

#![cfg(target_os = "linux")]

mod conn;
mod http;
mod sys;
mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// How a connection's sockets are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvMode {
    /// One multishot receive per socket for its whole life, each arrival
    /// in a buffer the kernel picks from the provided-buffer ring.
    Multishot,
    /// A one-shot receive (also from the buffer ring) re-armed after each
    /// completion: one submission entry per read.
    Oneshot,
}

/// How the kernel runs the completion work of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskRun {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`: completion
    /// work runs only inside `submit_and_wait`, on this thread, batched.
    Defer,
    /// `IORING_SETUP_COOP_TASKRUN`: no interrupting IPI for task work.
    Coop,
    /// The kernel's default.
    Plain,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (port 0: one the kernel picks, shared by all workers).
    pub listen: SocketAddr,
    /// The backend every client connection gets its own connection to.
    pub upstream: SocketAddr,
    pub workers: usize,
    pub recv: RecvMode,
    pub taskrun: TaskRun,
}

/// The running workers.
pub struct Running {
    /// The address actually listened on (the port when 0 was asked for).
    pub addr: SocketAddr,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Blocks until a worker stops, which happens only on a ring error.
    pub fn wait(self) -> io::Result<()> {
        for thread in self.threads {
            thread
                .join()
                .map_err(|_| io::Error::other("a worker panicked"))??;
        }
        Ok(())
    }
}

/// Binds the listeners and starts the workers; returns once every ring is
/// set up (or with the first worker's set-up error).
pub fn start(options: &Options) -> io::Result<Running> {
    let first = sys::reuseport_listener(options.listen)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..options.workers.max(1) {
        listeners.push(sys::reuseport_listener(addr)?);
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let threads = listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| spawn_worker(index, listener, options, ready_tx.clone()))
        .collect::<io::Result<Vec<_>>>()?;
    drop(ready_tx);
    for ready in ready_rx {
        ready?;
    }
    Ok(Running { addr, threads })
}

fn spawn_worker(
    index: usize,
    listener: TcpListener,
    options: &Options,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    let options = options.clone();
    std::thread::Builder::new()
        .name(format!("uring-worker-{index}"))
        .spawn(move || {
            // The ring is built on the thread that submits to it
            // (SINGLE_ISSUER), and set-up errors reach `start`.
            let worker = match worker::Worker::new(index, listener, &options) {
                Ok(worker) => {
                    let _ = ready.send(Ok(()));
                    worker
                }
                Err(e) => {
                    let message = e.to_string();
                    let _ = ready.send(Err(e));
                    return Err(io::Error::other(message));
                }
            };
            drop(ready);
            worker.run()
        })
}
