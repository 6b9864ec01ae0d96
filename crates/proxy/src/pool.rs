//! Keep-alive connections to one upstream: a small LIFO stack of idle HTTP/1.1
//! senders, plus opening new ones. Each [`crate::Upstream`] owns its own
//! pool, so connections never cross releases and vanish with their upstream.
//!
//! A pool keeps one stack per proxy worker thread ([`crate::Workers`]): a
//! connection's socket is registered with the event loop of the thread that
//! opened it, and used from another thread every readiness event would
//! cross threads (two wake-ups, and a wait whenever its own loop is busy).

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// The sending half of one HTTP/1.1 connection to an upstream.
pub(crate) type PooledConn = SendRequest<RequestBody>;

/// Idle connections kept per upstream and worker; more are closed when they
/// come back.
const MAX_IDLE: usize = 256;
/// Stacks per pool: workers share one only beyond this many.
const SHARDS: usize = 16;

/// A connection that can wait in a [`Pool`].
pub(crate) trait Pooled {
    /// Whether it is known to be unusable (closed by the upstream).
    fn is_closed(&mut self) -> bool;
}

impl Pooled for PooledConn {
    fn is_closed(&mut self) -> bool {
        SendRequest::is_closed(self)
    }
}

impl Pooled for Box<crate::h1::Conn> {
    /// Unknown without a syscall, which every request would pay for: a
    /// connection the upstream closed meanwhile shows as a close before the
    /// response, and the (idempotent) request goes out again.
    fn is_closed(&mut self) -> bool {
        false
    }
}

#[derive(Debug)]
pub(crate) struct Pool<C = PooledConn> {
    shards: [Mutex<Vec<IdleConn<C>>>; SHARDS],
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }
}

#[derive(Debug)]
struct IdleConn<C> {
    conn: C,
    since: Instant,
}

/// A connection taken from the pool, with how long it sat idle there.
#[derive(Debug)]
pub(crate) struct Taken<C = PooledConn> {
    pub(crate) conn: C,
    pub(crate) idle_for: Duration,
}

impl<C: Pooled> Pool<C> {
    /// The calling worker's stack.
    fn lock(&self) -> MutexGuard<'_, Vec<IdleConn<C>>> {
        lock(&self.shards[crate::workers::current() % SHARDS])
    }

    /// The most recently used idle connection that is still open.
    pub(crate) fn take(&self) -> Option<Taken<C>> {
        let found = {
            let mut idle = self.lock();
            loop {
                match idle.pop() {
                    Some(mut entry) => {
                        if !entry.conn.is_closed() {
                            break Some(entry);
                        }
                    }
                    None => break None,
                }
            }
        };
        found.map(|entry| Taken {
            conn: entry.conn,
            idle_for: entry.since.elapsed(),
        })
    }

    /// Keeps `conn` for reuse, unless it is closed or the pool is full.
    pub(crate) fn put(&self, mut conn: C) {
        if conn.is_closed() {
            return;
        }
        let entry = IdleConn {
            conn,
            since: Instant::now(),
        };
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(entry);
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

/// Opens a new HTTP/1.1 connection to `addr`; its driver runs on its own task
/// and ends when the connection closes or its sender is dropped. With
/// `upgrades`, a `101 Switching Protocols` answer hands the connection over
/// to `hyper::upgrade::on(response)`.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    upgrades: bool,
) -> Result<PooledConn, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_elapsed) => return Err(ConnectError::Timeout),
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Ok(Ok(stream)) => stream,
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "could not set TCP_NODELAY on upstream connection");
    }
    let (sender, conn) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        let ended = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = ended {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
