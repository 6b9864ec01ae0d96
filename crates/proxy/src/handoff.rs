//! Client connections passed between two cutover processes during an
//! upgrade: the old process's [`Handoff`] receives each idle HTTP/1.1
//! connection at a request boundary (with the bytes already read but not
//! parsed), and the new process's [`Intake`] serves them as if freshly
//! accepted. How they travel between the processes (a unix socket) is the
//! caller's business; this module only moves them in and out of the data
//! plane, without waiting on anything: a send is a non-blocking channel
//! push.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use bytes::Bytes;

/// One client connection leaving (or entering) the data plane at a request
/// boundary: no request of it is in progress.
#[derive(Debug)]
pub struct HandedConn {
    /// The listening address it was accepted on (its listener's
    /// `local_addr`), which says how to serve it (TLS, redirect).
    pub listener: SocketAddr,
    pub stream: std::net::TcpStream,
    /// Bytes the client sent that were read but not parsed yet (a
    /// pipelined request's start); served before anything else is read.
    pub prefix: Bytes,
    /// Accepted, but its protocol not yet told (HTTP/1.1, or h2c with
    /// prior knowledge): the taker reads on from `prefix` to tell it.
    /// Otherwise it is an HTTP/1.1 connection between two requests.
    pub fresh: bool,
}

/// Where the old process's listeners put their idle HTTP/1.1 connections
/// once armed. Until [`Handoff::arm`], a stopping listener closes idle
/// connections as a plain shutdown does. Cheap to clone; one per process.
#[derive(Clone, Default)]
pub struct Handoff {
    inner: Arc<Sink>,
}

#[derive(Default)]
struct Sink {
    /// Read on request boundaries while stopping, without the lock.
    armed: AtomicBool,
    sender: Mutex<Option<mpsc::Sender<HandedConn>>>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("armed", &self.is_armed())
            .finish()
    }
}

impl Handoff {
    /// From now on a stopping listener hands its idle plain HTTP/1.1
    /// connections to `sink` instead of closing them (TLS and HTTP/2
    /// connections cannot travel: they close after a response with
    /// `Connection: close` or a GOAWAY). Arm before stopping the listeners.
    pub fn arm(&self, sink: mpsc::Sender<HandedConn>) {
        *self.sender() = Some(sink);
        self.inner.armed.store(true, Ordering::SeqCst);
    }

    /// Drops the sink (once every listener stopped): its receiver sees the
    /// end of the connections. A connection still stopping closes instead.
    pub fn disarm(&self) {
        self.sender().take();
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.inner.armed.load(Ordering::SeqCst)
    }

    fn sender(&self) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<HandedConn>>> {
        self.inner
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Passes the connection on; gives it back if nobody takes it any more
    /// (then the caller closes it).
    pub(crate) fn hand(&self, conn: HandedConn) -> Result<(), HandedConn> {
        match self.sender().as_ref() {
            Some(sink) => sink.send(conn).map_err(|refused| refused.0),
            None => Err(conn),
        }
    }

    /// Passes a plain TCP client connection on at a request boundary with
    /// the bytes read ahead of it (`fresh`: before its protocol was told);
    /// it closes if it cannot leave this event loop or nobody takes it.
    pub(crate) fn hand_tcp(
        &self,
        listener: SocketAddr,
        stream: tokio::net::TcpStream,
        prefix: Bytes,
        fresh: bool,
    ) {
        // Leaves this event loop's registration; the socket stays open.
        match stream.into_std() {
            Ok(stream) => self.hand_std(listener, stream, prefix, fresh),
            Err(e) => {
                tracing::debug!(error = %e, "cannot detach a client connection for the handoff");
            }
        }
    }

    /// [`Handoff::hand_tcp`] for a socket outside any event loop.
    pub(crate) fn hand_std(
        &self,
        listener: SocketAddr,
        stream: std::net::TcpStream,
        prefix: Bytes,
        fresh: bool,
    ) {
        let conn = HandedConn {
            listener,
            stream,
            prefix,
            fresh,
        };
        if self.hand(conn).is_err() {
            tracing::debug!("the handoff was closed; closing a client connection");
        }
    }
}

/// Connections given to a listener of this process from elsewhere, served
/// as if they had been accepted on it. Made by [`intake`].
pub struct Intake {
    pub(crate) adopted: tokio::sync::mpsc::UnboundedReceiver<HandedConn>,
}

/// The sending side of an [`Intake`]; usable from any thread.
#[derive(Clone)]
pub struct IntakeSender {
    adopted: tokio::sync::mpsc::UnboundedSender<HandedConn>,
}

impl IntakeSender {
    /// Gives the listener a connection to serve; gives it back if the
    /// listener stopped serving.
    pub fn adopt(&self, conn: HandedConn) -> Result<(), HandedConn> {
        self.adopted.send(conn).map_err(|refused| refused.0)
    }
}

/// A channel of connections for one listener: pass the [`Intake`] to
/// [`crate::serve_adopting`], keep the [`IntakeSender`].
pub fn intake() -> (IntakeSender, Intake) {
    let (adopted, receiver) = tokio::sync::mpsc::unbounded_channel();
    (IntakeSender { adopted }, Intake { adopted: receiver })
}
