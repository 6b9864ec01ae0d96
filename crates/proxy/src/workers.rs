//! The proxy's worker threads: each runs its own single-threaded event loop
//! (a current-thread tokio runtime) and accepts client connections from a
//! shared listening socket, like nginx's worker processes.
//!
//! A connection stays on the worker that accepted it, with its upstream
//! connections (see `pool`): a request is served start to end by one thread,
//! without a work-stealing scheduler's bookkeeping or wake-ups across
//! threads. The control plane (engine, admin API, health checks) runs
//! elsewhere, so a busy worker never delays a deployment and a deployment
//! never delays a request.
//!
//! With io_uring ([`Io`]) each worker also has a ring and runs the io_uring
//! loop (`ring`), which serves plain HTTP/1.1 keep-alive connections with
//! its receives, sends and waits on the ring, submitted in one system call
//! per turn; sends of the full path go on the same ring (see
//! `cutover_uring`).

use std::cell::Cell;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker number: 1.. on worker threads, 0 elsewhere.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's worker number (0 when it is not a worker thread).
pub(crate) fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// How the workers hand bytes to the kernel (`[proxy] io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Io {
    /// io_uring where the kernel allows it, else epoll (the default).
    #[default]
    Auto,
    /// io_uring, or the workers do not start.
    Uring,
    /// Readiness (epoll) and a system call per read and write.
    Epoll,
}

/// Sends a worker's ring holds before it submits early.
const RING_ENTRIES: u32 = 1024;

/// A set of running worker threads. Cloning shares them; they stop (and
/// drop every connection they serve) when the last clone is dropped.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
    /// What the workers use: `Uring` or `Epoll`.
    io: Io,
    /// Dropping these ends each worker's event loop.
    _stop: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.count())
            .finish()
    }
}

impl Workers {
    /// Starts `count` worker threads, named `cutover-proxy-N`, on epoll.
    pub fn start(count: NonZeroUsize) -> io::Result<Workers> {
        Workers::start_with(count, Io::Epoll)
    }

    /// Starts `count` worker threads, named `cutover-proxy-N`, with `io`.
    /// `Io::Auto` falls back to epoll (and says so in the log) when the
    /// kernel refuses a ring; `Io::Uring` fails then.
    pub fn start_with(count: NonZeroUsize, io: Io) -> io::Result<Workers> {
        let mut used = Io::Epoll;
        let mut handles = Vec::with_capacity(count.get());
        let mut stop = Vec::with_capacity(count.get());
        for number in 1..=count.get() {
            let (started_tx, started_rx) = mpsc::sync_channel(1);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("cutover-proxy-{number}"))
                .spawn(move || run_worker(number, io, started_tx, stop_rx))?;
            let (handle, this_one) = started_rx
                .recv()
                .map_err(|_| io::Error::other("a proxy worker thread ended while starting"))??;
            if number == 1 {
                used = this_one;
            }
            handles.push(handle);
            stop.push(stop_tx);
        }
        Ok(Workers {
            inner: Arc::new(Inner {
                handles,
                io: used,
                _stop: stop,
            }),
        })
    }

    /// Starts one worker per CPU the process may use, on epoll.
    pub fn start_per_cpu() -> io::Result<Workers> {
        Workers::start(per_cpu())
    }

    /// What the workers use: `Io::Uring` or `Io::Epoll`.
    pub fn io(&self) -> Io {
        self.inner.io
    }

    /// How many worker threads run.
    pub fn count(&self) -> usize {
        self.inner.handles.len()
    }

    pub(crate) fn handles(&self) -> &[Handle] {
        &self.inner.handles
    }
}

/// Whether this kernel gives this process an io_uring (tried on a thread of
/// its own, which is left without one).
pub fn uring_available() -> bool {
    std::thread::spawn(|| cutover_uring::install(8).is_ok())
        .join()
        .unwrap_or(false)
}

/// One worker per CPU the process may use.
pub fn per_cpu() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

type Started = io::Result<(Handle, Io)>;

/// A worker thread's life: its ring (if asked and allowed), its event loop
/// until the `Workers` are dropped; dropping the runtime then cancels what
/// still runs on it.
fn run_worker(
    number: usize,
    io: Io,
    started: mpsc::SyncSender<Started>,
    stop: oneshot::Receiver<()>,
) {
    CURRENT.with(|current| current.set(number));
    let completions = match install_ring(io) {
        Ok(completions) => completions,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if completions.is_some() {
        // The batch goes out when the loop has nothing left to run.
        builder.on_thread_park(|| {
            cutover_uring::submit_and_reap();
        });
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let used = match completions {
        Some(completions) => {
            runtime.spawn(cutover_uring::submit_each_turn());
            runtime.spawn(crate::ring::run(completions));
            Io::Uring
        }
        None => Io::Epoll,
    };
    let _ = started.send(Ok((runtime.handle().clone(), used)));
    let _ = runtime.block_on(stop);
}

/// This thread's ring when `io` asks for one: `None` on epoll.
fn install_ring(io: Io) -> io::Result<Option<OwnedFd>> {
    match io {
        Io::Epoll => Ok(None),
        Io::Uring => cutover_uring::install(RING_ENTRIES)
            .map(Some)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring is not available: {e}"))),
        Io::Auto => match cutover_uring::install(RING_ENTRIES) {
            Ok(completions) => Ok(Some(completions)),
            Err(e) => {
                if current() == 1 {
                    tracing::warn!(error = %e, "io_uring is not available; the proxy uses epoll");
                }
                Ok(None)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_worker_runs_tasks_on_its_own_numbered_thread() {
        let workers = Workers::start(NonZeroUsize::new(3).unwrap()).unwrap();
        assert_eq!(workers.count(), 3);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen: Vec<(usize, String)> = runtime.block_on(async {
            let mut seen = Vec::new();
            for handle in workers.handles() {
                let task = handle.spawn(async {
                    let name = std::thread::current().name().unwrap_or("").to_owned();
                    (current(), name)
                });
                seen.push(task.await.unwrap());
            }
            seen
        });
        assert_eq!(
            seen,
            vec![
                (1, "cutover-proxy-1".to_owned()),
                (2, "cutover-proxy-2".to_owned()),
                (3, "cutover-proxy-3".to_owned()),
            ]
        );
        assert_eq!(current(), 0, "the test's own thread is no worker");
        assert_eq!(workers.io(), Io::Epoll);
    }

    #[test]
    fn auto_takes_io_uring_where_the_kernel_allows_it_and_epoll_stays_epoll() {
        let uring = uring_available();
        let auto = Workers::start_with(NonZeroUsize::new(2).unwrap(), Io::Auto).unwrap();
        assert_eq!(auto.io(), if uring { Io::Uring } else { Io::Epoll });
        let epoll = Workers::start_with(NonZeroUsize::MIN, Io::Epoll).unwrap();
        assert_eq!(epoll.io(), Io::Epoll);
    }
}
