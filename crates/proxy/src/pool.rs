//! Keep-alive connections to one endpoint of an upstream: a small LIFO
//! stack of idle HTTP/1.1 connections, plus opening new ones. Each endpoint
//! of an [`crate::Upstream`] owns its own pool, so connections never cross
//! releases or endpoints, and vanish with their upstream (or when their
//! endpoint leaves the set).
//!
//! A pool keeps one stack per proxy worker thread ([`crate::Workers`]): a
//! connection's socket is registered with the event loop of the thread that
//! opened it, and used from another thread every readiness event would
//! cross threads (two wake-ups, and a wait whenever its own loop is busy).

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::http1::client::UpstreamConn;

/// Idle connections kept per upstream and worker; more are closed when they
/// come back.
const MAX_IDLE: usize = 256;
/// Stacks per pool: workers share one only beyond this many.
const SHARDS: usize = 16;

#[derive(Debug)]
pub(crate) struct Pool<C = Box<UpstreamConn>> {
    shards: [Mutex<Vec<C>>; SHARDS],
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }
}

impl<C> Pool<C> {
    /// The calling worker's stack.
    fn lock(&self) -> MutexGuard<'_, Vec<C>> {
        lock(&self.shards[crate::workers::current() % SHARDS])
    }

    /// The most recently used idle connection. Whether it is still open is
    /// unknown without a syscall, which every request would pay for: a
    /// connection the upstream closed meanwhile shows as a close before the
    /// response, and the sender decides whether to send again.
    pub(crate) fn take(&self) -> Option<C> {
        self.lock().pop()
    }

    /// Keeps `conn` for reuse, unless the pool is full.
    pub(crate) fn put(&self, conn: C) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            let idle = std::mem::take(&mut *lock(shard));
            drop(idle);
        }
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}

fn lock<T>(shard: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the Vec inconsistent.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a new upstream connection could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Timeout,
    Io(io::Error),
    Handshake(hyper::Error),
}

/// Opens a TCP connection to `addr` (with `TCP_NODELAY`: requests and
/// responses are written whole).
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_elapsed) => return Err(ConnectError::Timeout),
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Ok(Ok(stream)) => stream,
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "could not set TCP_NODELAY on upstream connection");
    }
    Ok(stream)
}
