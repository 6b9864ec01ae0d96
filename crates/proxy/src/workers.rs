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

use std::cell::Cell;
use std::io;
use std::num::NonZeroUsize;
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

/// A set of running worker threads. Cloning shares them; they stop (and
/// drop every connection they serve) when the last clone is dropped.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
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
    /// Starts `count` worker threads, named `cutover-proxy-N`.
    pub fn start(count: NonZeroUsize) -> io::Result<Workers> {
        let mut handles = Vec::with_capacity(count.get());
        let mut stop = Vec::with_capacity(count.get());
        for number in 1..=count.get() {
            let (started_tx, started_rx) = mpsc::sync_channel(1);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("cutover-proxy-{number}"))
                .spawn(move || {
                    CURRENT.with(|current| current.set(number));
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(runtime.handle().clone()));
                    // Ends when the `Workers` are dropped; dropping the
                    // runtime then cancels what still runs on it.
                    let _ = runtime.block_on(stop_rx);
                })?;
            let handle = started_rx
                .recv()
                .map_err(|_| io::Error::other("a proxy worker thread ended while starting"))??;
            handles.push(handle);
            stop.push(stop_tx);
        }
        Ok(Workers {
            inner: Arc::new(Inner {
                handles,
                _stop: stop,
            }),
        })
    }

    /// Starts one worker per CPU the process may use.
    pub fn start_per_cpu() -> io::Result<Workers> {
        Workers::start(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }

    /// How many worker threads run.
    pub fn count(&self) -> usize {
        self.inner.handles.len()
    }

    pub(crate) fn handles(&self) -> &[Handle] {
        &self.inner.handles
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
    }
}
