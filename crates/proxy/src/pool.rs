//! Keep-alive connections to one upstream: a small LIFO stack of idle HTTP/1.1
//! senders, plus opening new ones. Each [`crate::Upstream`] owns its own
//! pool, so connections never cross releases and vanish with their upstream.

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

/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<IdleConn>>,
}

#[derive(Debug)]
struct IdleConn {
    conn: PooledConn,
    since: Instant,
}

/// A connection taken from the pool, with how long it sat idle there.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) conn: PooledConn,
    pub(crate) idle_for: Duration,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<IdleConn>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open.
    pub(crate) fn take(&self) -> Option<Taken> {
        let found = {
            let mut idle = self.lock();
            loop {
                match idle.pop() {
                    Some(entry) if entry.conn.is_closed() => continue,
                    other => break other,
                }
            }
        };
        found.map(|entry| Taken {
            conn: entry.conn,
            idle_for: entry.since.elapsed(),
        })
    }

    /// Keeps `conn` for reuse, unless it is closed or the pool is full.
    pub(crate) fn put(&self, conn: PooledConn) {
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
        let idle = std::mem::take(&mut *self.lock());
        drop(idle);
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }
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
