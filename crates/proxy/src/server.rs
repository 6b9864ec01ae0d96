//! The accept loop and client connections: TLS, telling HTTP/1.1 (served
//! by `http1::server`) from HTTP/2 (hyper: h2c with prior knowledge, or ALPN
//! `h2`), and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderValue;
use hyper::server::conn::http2::Builder as Http2Builder;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::access_log::AccessLog;
use crate::admission::{Admission, Admitted, Refused};
use crate::body::ClientBody;
use crate::conn_io::TimedIo;
use crate::error::ProxyError;
use crate::forward::{self, ConnCtx, Shared};
use crate::handoff::{HandedConn, Handoff, Intake};
use crate::http1::io::{ClientIo, Prefixed};
use crate::http1::park::ParkingLot;
use crate::http1::server::{self as http1_server, ConnLife, Exits};
use crate::router::Router;
use crate::settings::ProxySettings;
use crate::tls::Tls;
use crate::workers::Workers;

/// Pause after an accept error caused by resource exhaustion (e.g. too many
/// open files), doubling up to [`ACCEPT_BACKOFF_MAX`] while errors go on:
/// retrying at once would spin. Nothing signals when a descriptor frees up,
/// so this is a backoff, not a wait for a condition.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Accept errors and refused connections are logged at most once per this
/// interval (per accept loop), with how many there were.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Concurrent streams an HTTP/2 client may open on one connection.
const H2_MAX_STREAMS: u32 = 256;

/// Serves clients on `listener`, routing through `router`, until `shutdown`
/// resolves. Then stops accepting, lets every in-flight request finish
/// (idle keep-alive connections close at once), and returns.
///
/// A response that never ends (an endless stream) keeps this from
/// returning: bound the wait with a timeout around it if that matters.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ProxySettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    serve_with(
        listener,
        router,
        settings,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

/// What a listener does beyond plain proxying.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Where finished requests are logged; `None`: not logged.
    pub access_log: Option<AccessLog>,
    /// Terminate TLS on this listener with these certificates (HTTP/2 via
    /// ALPN); `None`: cleartext (HTTP/1.1, or h2c with prior knowledge).
    pub tls: Option<Tls>,
    /// On a cleartext listener: answer every request with a permanent
    /// redirect (308) to `https://` on this port, except ACME HTTP-01
    /// challenges (`/.well-known/acme-challenge/`), which are proxied.
    pub redirect_https: Option<u16>,
    /// On a cleartext listener: ACME http-01 challenges answered before
    /// routing (also when redirecting).
    pub acme_http01: Option<crate::challenge::Http01Answers>,
    /// Accept and serve connections on these worker threads, each with its
    /// own event loop; `None`: on the runtime that calls [`serve_with`].
    pub workers: Option<Workers>,
    /// Where idle HTTP/1.1 connections go at shutdown once it is armed (an
    /// upgrade); `None` or unarmed: they close.
    pub handoff: Option<Handoff>,
    /// Connection limits shared by the listeners of a process (closing
    /// idle connections, oldest first, at the cap); `None`: unlimited.
    pub admission: Option<Admission>,
}

/// [`serve`] with [`ServeOptions`].
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    settings: ProxySettings,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    serve_listener(listener, router, settings, options, None, shutdown).await
}

/// [`serve_with`], also serving the connections sent through `intake` (from
/// the process this one took over from) as if they had been accepted here.
pub async fn serve_adopting(
    listener: TcpListener,
    router: Router,
    settings: ProxySettings,
    options: ServeOptions,
    intake: Intake,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    serve_listener(listener, router, settings, options, Some(intake), shutdown).await
}

async fn serve_listener(
    listener: TcpListener,
    router: Router,
    settings: ProxySettings,
    options: ServeOptions,
    intake: Option<Intake>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let local = listener.local_addr().map_err(ProxyError::Listener)?;
    let shared = Arc::new(Shared {
        router,
        settings,
        access_log: options.access_log,
        redirect_https: options.redirect_https.filter(|_| options.tls.is_none()),
        acme_http01: options.acme_http01.filter(|_| options.tls.is_none()),
        proto: if options.tls.is_some() {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        },
    });
    // Held until every connection has ended: the last clone of the workers
    // stops their threads.
    let workers = options.workers;
    let handles: Arc<[Option<tokio::runtime::Handle>]> = match &workers {
        None => Arc::new([None]),
        Some(workers) => workers.handles().iter().cloned().map(Some).collect(),
    };
    // One parking lot per worker for idle plain HTTP/1.1 connections (a
    // TLS session cannot wait outside its task).
    let handoff = options.handoff.map(|handoff| (handoff, local));
    let lots: Box<[ParkingLot]> = match options.tls {
        None => handles
            .iter()
            .filter_map(|_| parking_lot(handoff.clone()))
            .collect(),
        Some(_) => Box::new([]),
    };
    let acceptor = Arc::new(Acceptor {
        shared,
        tls: options.tls,
        builder: connection_builder(),
        handoff,
        admission: options.admission,
        lots,
    });
    // Accept loops, parking lots and connection tasks each hold a receiver:
    // shutdown flips the value and then waits until all receivers are gone.
    let (stop, stopped) = watch::channel(false);
    for (lot, handle) in acceptor.lots.iter().zip(handles.iter()) {
        let parking = lot.clone().run(stopped.clone());
        match handle {
            Some(handle) => drop(handle.spawn(parking)),
            None => drop(tokio::spawn(parking)),
        }
    }
    // Every accept loop polls its own registration of one listening socket.
    let socket = listener.into_std().map_err(ProxyError::Listener)?;
    let nodelay = Nodelay::set_on_listener(&socket);
    let balance = Arc::new(Balance::new(handles.len()));
    let mut loops = Vec::with_capacity(handles.len() + 1);
    for (slot, handle) in handles.iter().cloned().enumerate() {
        let socket = socket.try_clone().map_err(ProxyError::Listener)?;
        let accepting = accept_loop(
            socket,
            Arc::clone(&acceptor),
            Arc::clone(&balance),
            slot,
            nodelay,
            stopped.clone(),
        );
        loops.push(match handle {
            Some(handle) => handle.spawn(accepting),
            None => tokio::spawn(accepting),
        });
    }
    drop(socket);
    if let Some(intake) = intake {
        let adopting = adopt_loop(
            intake,
            Arc::clone(&acceptor),
            handles,
            Arc::clone(&balance),
            stopped.clone(),
        );
        loops.push(tokio::spawn(adopting));
    }
    drop(stopped);
    tracing::debug!(%local, "proxy accepting connections");
    shutdown.await;
    stop.send_replace(true);
    for accepting in loops {
        // A panicking accept loop has nothing left to clean up here.
        let _ = accepting.await;
    }
    tracing::debug!(%local, connections = stop.receiver_count(), "proxy shutting down; finishing in-flight requests");
    stop.closed().await;
    drop(workers);
    Ok(())
}

/// A parking lot for idle connections; `None` (they wait in their tasks)
/// if the system refuses one more epoll set.
fn parking_lot(handoff: Option<(Handoff, SocketAddr)>) -> Option<ParkingLot> {
    ParkingLot::new(handoff)
        .inspect_err(|e| tracing::warn!(error = %e, "idle connections cannot park"))
        .ok()
}

/// What every connection of one listener is served with.
struct Acceptor {
    shared: Arc<Shared>,
    tls: Option<Tls>,
    builder: Http2Builder<TokioExecutor>,
    /// Where idle connections go when an upgrade stops this listener, and
    /// the listener's address they are tagged with.
    handoff: Option<(Handoff, SocketAddr)>,
    admission: Option<Admission>,
    /// Per worker (accept loop slot); empty on a TLS listener (or if
    /// none could be made).
    lots: Box<[ParkingLot]>,
}

/// Open connections per accept loop, so that the loops of several workers
/// share the connections out evenly.
///
/// Every accept loop is told of every new connection; one that holds more
/// than its share leaves the connection to the others for a moment, then
/// takes it if it is still waiting. Without this, the worker that happens
/// to run first takes a whole burst of connections (a client opening its
/// pool), and one core serves most keep-alive connections for their whole
/// life while the other idles.
struct Balance {
    open: Box<[AtomicUsize]>,
    /// Woken whenever a loop accepts a connection.
    accepted: Notify,
}

/// Connections over the least loaded loop's count a loop may hold before
/// it defers.
const BALANCE_SLACK: usize = 1;
/// How long a loop over its share leaves a new connection to the others.
const BALANCE_DEFER: Duration = Duration::from_millis(1);

impl Balance {
    fn new(loops: usize) -> Balance {
        Balance {
            open: (0..loops).map(|_| AtomicUsize::new(0)).collect(),
            accepted: Notify::new(),
        }
    }

    fn over_share(&self, slot: usize) -> bool {
        let mine = self.open[slot].load(Ordering::Relaxed);
        let least = self
            .open
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        mine > least + BALANCE_SLACK
    }

    fn least_loaded(&self) -> usize {
        (0..self.open.len())
            .min_by_key(|&slot| self.open[slot].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn opened(self: &Arc<Balance>, slot: usize) -> OpenConnection {
        self.open[slot].fetch_add(1, Ordering::Relaxed);
        if self.open.len() > 1 {
            self.accepted.notify_waiters();
        }
        OpenConnection {
            balance: Arc::clone(self),
            slot,
        }
    }
}

/// One connection counted in its accept loop's share until dropped.
struct OpenConnection {
    balance: Arc<Balance>,
    slot: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.balance.open[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where an accepted socket's TCP_NODELAY comes from. Linux copies it from
/// the listener when a connection's handshake completes: one system call
/// for the listener instead of one per connection — except for connections
/// that were already queued when it was set (socket activation, a
/// handover, the moments since bind), which get it one by one until the
/// queue first runs dry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nodelay {
    Inherited,
    EachUntilDrained,
    /// The listener would not take it.
    Each,
}

impl Nodelay {
    fn set_on_listener(listener: &std::net::TcpListener) -> Nodelay {
        use rustix::net::sockopt;
        let had = sockopt::tcp_nodelay(listener).unwrap_or(false);
        match sockopt::set_tcp_nodelay(listener, true) {
            Err(_) => Nodelay::Each,
            Ok(()) if had => Nodelay::Inherited,
            Ok(()) => Nodelay::EachUntilDrained,
        }
    }
}

/// Accepts connections until `stopped` turns true, each served on its own
/// task of the current runtime.
async fn accept_loop(
    socket: std::net::TcpListener,
    acceptor: Arc<Acceptor>,
    balance: Arc<Balance>,
    slot: usize,
    mut nodelay: Nodelay,
    stopped: watch::Receiver<bool>,
) {
    let local = socket.local_addr().ok();
    // Deprecated because the safe constructor cannot know that the owner
    // keeps its descriptor; a `std::net::TcpListener` does, for its whole
    // life (the replacement is `unsafe`, which this workspace forbids).
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(socket, Interest::READABLE);
    let listener = match registered {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(?local, error = %e, "a proxy worker cannot accept connections");
            return;
        }
    };
    let mut stopping = stopped.clone();
    let mut trouble = AcceptTrouble::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => break,
            accepted = accept(&listener, &balance, slot, &mut nodelay) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                trouble.backoff = ACCEPT_BACKOFF_MIN;
                let admitted = match acceptor.admission.as_ref().map(|a| a.admit(peer.ip())) {
                    None => None,
                    Some(Ok(admitted)) => Some(admitted),
                    Some(Err(refused)) => {
                        // Closed at once: the client sees a reset or EOF.
                        drop(stream);
                        trouble.refused(refused, local);
                        continue;
                    }
                };
                if nodelay != Nodelay::Inherited {
                    set_nodelay(&stream);
                }
                let open = balance.opened(slot);
                let serving = Serving::new(&acceptor, &stopped, peer, open, admitted);
                let Some((stream, first, serving)) = straight_to_ring(&acceptor, stream, serving)
                else {
                    continue;
                };
                let fresh = Adopted {
                    prefix: first,
                    fresh: true,
                };
                match TcpStream::from_std(stream) {
                    Ok(stream) => spawn_connection(&acceptor, stream, peer, serving, Some(fresh)),
                    Err(e) => {
                        tracing::debug!(error = %e, "a connection cannot join the event loop")
                    }
                }
            }
            Err(e) => {
                let exhausted = is_resource_exhaustion(&e);
                trouble.failed(&e, local);
                if exhausted {
                    tokio::time::sleep(trouble.backoff).await;
                    trouble.backoff = (trouble.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// One accept loop's failed accepts and refused connections, logged once
/// per [`ACCEPT_LOG_INTERVAL`] with their counts rather than one line each
/// (a flood would fill the disk and cost the descriptors it lacks).
struct AcceptTrouble {
    backoff: Duration,
    last_logged: Option<tokio::time::Instant>,
    failed: u64,
    full: u64,
    per_client: u64,
}

impl Default for AcceptTrouble {
    fn default() -> Self {
        AcceptTrouble {
            backoff: ACCEPT_BACKOFF_MIN,
            last_logged: None,
            failed: 0,
            full: 0,
            per_client: 0,
        }
    }
}

impl AcceptTrouble {
    fn failed(&mut self, e: &io::Error, local: Option<SocketAddr>) {
        self.failed += 1;
        if self.due() {
            tracing::warn!(
                ?local,
                error = %e,
                failures = self.failed,
                "accepting connections failed (counted since the last such line)"
            );
            self.failed = 0;
        }
    }

    fn refused(&mut self, refused: Refused, local: Option<SocketAddr>) {
        match refused {
            Refused::Full => self.full += 1,
            Refused::PerClient => self.per_client += 1,
        }
        if self.due() {
            tracing::warn!(
                ?local,
                at_max_connections = self.full,
                over_max_connections_per_client = self.per_client,
                "refused client connections over the connection limits (counted since the last such line)"
            );
            self.full = 0;
            self.per_client = 0;
        }
    }

    /// Whether a line may be logged now (then the interval restarts).
    fn due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_LOG_INTERVAL);
        if due {
            self.last_logged = Some(now);
        }
        due
    }
}

/// The next connection, left to the other loops for a moment when this one
/// holds more than its share. The queue running dry ends `nodelay`'s
/// catching up.
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
    balance: &Balance,
    slot: usize,
    nodelay: &mut Nodelay,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if balance.over_share(slot) {
            // Until another loop took a connection (perhaps this one), or
            // briefly: a loop that waited longer could find the others over
            // their share too, and then nobody would be accepting.
            let taken = balance.accepted.notified();
            let _ = tokio::time::timeout(BALANCE_DEFER, taken).await;
        }
        match ready.try_io(|listener| accept_nonblocking(listener.get_ref())) {
            Ok(Ok(accepted)) => return Ok(accepted),
            Ok(Err(e)) => return Err(e),
            // Taken by another loop (or none yet): wait for the next one.
            Err(_would_block) => {
                if *nodelay == Nodelay::EachUntilDrained {
                    *nodelay = Nodelay::Inherited;
                }
                continue;
            }
        }
    }
}

/// `accept4` with the new socket non-blocking from the start (std's accept
/// would take another system call to make it so).
fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::SocketFlags;
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let (socket, peer) = rustix::net::acceptfrom_with(listener, flags)?;
    let peer = peer
        .and_then(|peer| SocketAddr::try_from(peer).ok())
        .ok_or_else(|| io::Error::other("an accepted connection without an IP peer address"))?;
    Ok((std::net::TcpStream::from(socket), peer))
}

fn set_nodelay(stream: &std::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on client connection");
    }
}

/// A fresh cleartext connection goes to the worker's io_uring loop straight
/// from its accept when its first bytes are already here and are not
/// HTTP/2's: never registered with tokio's epoll (nor deregistered), no
/// task. Otherwise (TLS, no loop, nothing read yet, maybe HTTP/2) it comes
/// back with what was read, for a task of its own; `None`: it closed, or
/// the loop has it.
fn straight_to_ring(
    acceptor: &Acceptor,
    stream: std::net::TcpStream,
    serving: Serving,
) -> Option<(std::net::TcpStream, BytesMut, Serving)> {
    use std::io::Read;
    if acceptor.tls.is_some() || !crate::ring::is_running() {
        return Some((stream, BytesMut::with_capacity(FIRST_READ), serving));
    }
    // Read on the stack and kept at its size (nothing of the heap is
    // touched beyond the bytes that came).
    let mut read = [0u8; FIRST_READ];
    let first = match (&stream).read(&mut read) {
        Ok(0) => return None,
        Ok(n) => BytesMut::from(&read[..n]),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Some((stream, BytesMut::with_capacity(FIRST_READ), serving));
        }
        Err(e) => {
            tracing::debug!(error = %e, "a new connection failed before its first request");
            return None;
        }
    };
    if H2_PREFACE_START.starts_with(&first) || first.starts_with(H2_PREFACE_START) {
        return Some((stream, first, serving));
    }
    hand_to_ring(stream, first, serving)
}

/// Hands a connection to this worker's io_uring loop; `None`: the loop has
/// it, else it comes back (no loop runs on this thread).
fn hand_to_ring(
    stream: std::net::TcpStream,
    first: BytesMut,
    serving: Serving,
) -> Option<(std::net::TcpStream, BytesMut, Serving)> {
    let Serving {
        ctx,
        life,
        exits,
        stopped,
    } = serving;
    let adopted = crate::ring::Adopted {
        stream,
        first,
        ctx,
        life,
        exits,
        stopped,
    };
    let back = crate::ring::adopt(adopted).err()?;
    let crate::ring::Adopted {
        stream,
        first,
        ctx,
        life,
        exits,
        stopped,
    } = *back;
    let serving = Serving {
        ctx,
        life,
        exits,
        stopped,
    };
    Some((stream, first, serving))
}

/// Serves the connections handed over by the previous process, each on the
/// worker that holds the fewest, until this listener stops.
async fn adopt_loop(
    mut intake: Intake,
    acceptor: Arc<Acceptor>,
    handles: Arc<[Option<tokio::runtime::Handle>]>,
    balance: Arc<Balance>,
    stopped: watch::Receiver<bool>,
) {
    let mut stopping = stopped.clone();
    loop {
        let adopted = tokio::select! {
            biased;
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => break,
            adopted = intake.adopted.recv() => match adopted {
                Some(adopted) => adopted,
                None => break,
            },
        };
        let slot = balance.least_loaded();
        let open = balance.opened(slot);
        let admitted = acceptor.admission.as_ref().and_then(|a| {
            adopted
                .stream
                .peer_addr()
                .ok()
                .map(|p| a.register_adopted(p.ip()))
        });
        let acceptor = Arc::clone(&acceptor);
        let stopped = stopped.clone();
        let serving = async move {
            let HandedConn {
                stream,
                prefix,
                fresh,
                ..
            } = adopted;
            let adopted = stream
                .peer_addr()
                .and_then(|peer| Ok((TcpStream::from_std(stream)?, peer)));
            match adopted {
                Ok((stream, peer)) => {
                    let adopted = Adopted {
                        prefix: BytesMut::from(&prefix[..]),
                        fresh,
                    };
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY on client connection");
                    }
                    let serving = Serving::new(&acceptor, &stopped, peer, open, admitted);
                    spawn_connection(&acceptor, stream, peer, serving, Some(adopted));
                }
                Err(e) => tracing::debug!(error = %e, "a handed-over connection was already gone"),
            }
        };
        match &handles[slot] {
            Some(handle) => drop(handle.spawn(serving)),
            None => drop(tokio::spawn(serving)),
        }
    }
}

/// hyper's HTTP/2 server (h2c with prior knowledge, or h2 over TLS).
fn connection_builder() -> Http2Builder<TokioExecutor> {
    let mut builder = Http2Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

/// The first read of a new connection (a whole request head, nearly
/// always).
const FIRST_READ: usize = 4096;

/// How an HTTP/2 connection starts (RFC 9113 section 3.4): the method
/// `PRI` is not HTTP/1.
const H2_PREFACE_START: &[u8] = b"PRI ";

/// A connection the previous process handed over.
struct Adopted {
    /// Bytes already read from it.
    prefix: BytesMut,
    /// Its protocol is still to be told; else HTTP/1.1 between requests.
    fresh: bool,
}

/// What serving one client connection takes, whichever way it is served.
struct Serving {
    ctx: Arc<ConnCtx>,
    life: ConnLife,
    exits: Exits,
    stopped: watch::Receiver<bool>,
}

impl Serving {
    /// Counts the connection (metrics, its accept loop's share, admission)
    /// until `life` drops.
    fn new(
        acceptor: &Acceptor,
        stopped: &watch::Receiver<bool>,
        peer: SocketAddr,
        open: OpenConnection,
        admitted: Option<Admitted>,
    ) -> Serving {
        let metrics = crate::metrics::global();
        metrics
            .client_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exits = Exits {
            handoff: acceptor.handoff.clone(),
            lot: acceptor.lots.get(open.slot).cloned(),
        };
        let life = ConnLife {
            idle: admitted.as_ref().map(Admitted::signal),
            _guards: ConnGuards {
                _metrics: ClientConnection(metrics),
                _open: open,
                _admitted: admitted,
            },
        };
        Serving {
            ctx: ConnCtx::new(Arc::clone(&acceptor.shared), peer.ip()),
            life,
            exits,
            stopped: stopped.clone(),
        }
    }
}

/// Serves one client connection on its own task. `adopted`: it was handed
/// over by the previous process, or read from already (`fresh`).
fn spawn_connection(
    acceptor: &Arc<Acceptor>,
    stream: TcpStream,
    peer: SocketAddr,
    serving: Serving,
    adopted: Option<Adopted>,
) {
    let Serving {
        ctx,
        life,
        exits,
        stopped,
    } = serving;
    let acceptor = Arc::clone(acceptor);
    tokio::spawn(async move {
        let builder = &acceptor.builder;
        let first = match adopted {
            Some(Adopted {
                prefix,
                fresh: false,
            }) => {
                let io = ClientIo::Tcp(stream);
                return http1_server::serve(io, prefix, ctx, stopped, life, exits).await;
            }
            Some(Adopted {
                prefix,
                fresh: true,
            }) => prefix,
            None => BytesMut::with_capacity(FIRST_READ),
        };
        match acceptor.tls.as_ref() {
            None => {
                let conn = PlainConn {
                    stream,
                    first,
                    peer,
                    life,
                    exits,
                };
                serve_plain(conn, ctx, builder, stopped).await
            }
            // Boxed, like HTTP/2 below: the task of a plain HTTP/1.1
            // connection stays the size of what it needs.
            Some(tls) => {
                let tls = tls.acceptor().clone();
                Box::pin(serve_tls(stream, tls, ctx, builder, stopped, peer, life)).await
            }
        }
    });
}

/// A cleartext connection: HTTP/2 if it starts with the HTTP/2 preface
/// (h2c with prior knowledge), else HTTP/1.1.
async fn serve_plain(
    conn: PlainConn,
    ctx: Arc<ConnCtx>,
    builder: &Http2Builder<TokioExecutor>,
    stopped: watch::Receiver<bool>,
) {
    let PlainConn {
        mut stream,
        mut first,
        peer,
        life,
        exits,
    } = conn;
    let settings = ctx.shared.settings;
    let mut waiting = stopped.clone();
    let sniff = tokio::time::timeout(settings.header_read_timeout, async {
        // Enough bytes to tell the protocols apart (one read, nearly always).
        while first.len() < H2_PREFACE_START.len() && H2_PREFACE_START.starts_with(&first) {
            if stream.read_buf(&mut first).await? == 0 {
                return Ok::<bool, io::Error>(false);
            }
        }
        Ok(true)
    });
    let sniffed = tokio::select! {
        sniffed = sniff => sniffed,
        // Shutdown: a connection that sent nothing yet (or too little to
        // tell its protocol) is idle: it goes to the new process of an
        // upgrade, else it closes.
        _ = waiting.wait_for(|stop| *stop) => {
            if let Some((handoff, listener)) = exits.handoff.filter(|(h, _)| h.is_armed()) {
                handoff.hand_tcp(listener, stream, first.freeze(), true);
            }
            return;
        }
    };
    match sniffed {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, "client sent nothing in time");
            return;
        }
    }
    if first.starts_with(H2_PREFACE_START) {
        let mut io = TimedIo::new(
            stream,
            Arc::clone(&ctx.activity),
            settings.header_read_timeout,
            settings.idle_timeout,
        );
        io.set_multiplexed();
        let io = Prefixed {
            prefix: first.freeze(),
            io,
        };
        // The guards count the connection until it ends.
        let _life = life;
        Box::pin(serve_h2(builder, io, ctx, stopped, peer)).await;
    } else if crate::ring::is_running() {
        to_ring(stream, first, ctx, stopped, life, exits).await;
    } else {
        http1_server::serve(ClientIo::Tcp(stream), first, ctx, stopped, life, exits).await;
    }
}

/// Hands an HTTP/1.1 connection to the worker's io_uring loop (`ring`).
async fn to_ring(
    stream: TcpStream,
    first: BytesMut,
    ctx: Arc<ConnCtx>,
    stopped: watch::Receiver<bool>,
    life: ConnLife,
    exits: Exits,
) {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(error = %e, "a connection could not leave the event loop");
            return;
        }
    };
    let serving = Serving {
        ctx,
        life,
        exits,
        stopped,
    };
    let Some((stream, first, serving)) = hand_to_ring(stream, first, serving) else {
        return;
    };
    match TcpStream::from_std(stream) {
        Ok(stream) => {
            let Serving {
                ctx,
                life,
                exits,
                stopped,
            } = serving;
            let io = ClientIo::Tcp(stream);
            http1_server::serve(io, first, ctx, stopped, life, exits).await;
        }
        Err(e) => tracing::debug!(error = %e, "a connection cannot rejoin the event loop"),
    }
}

/// A new cleartext connection and what is known of it.
struct PlainConn {
    stream: TcpStream,
    /// Bytes already read from it.
    first: BytesMut,
    peer: SocketAddr,
    life: ConnLife,
    exits: Exits,
}

/// A TLS connection: HTTP/2 if ALPN chose it, else HTTP/1.1.
async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Arc<ConnCtx>,
    builder: &Http2Builder<TokioExecutor>,
    stopped: watch::Receiver<bool>,
    peer: SocketAddr,
    life: ConnLife,
) {
    let settings = ctx.shared.settings;
    // The handshake reads count as the request head's: the header-read
    // timeout bounds a client that stalls it.
    let io = TimedIo::new(
        stream,
        Arc::clone(&ctx.activity),
        settings.header_read_timeout,
        settings.idle_timeout,
    );
    let mut stream = match acceptor.accept(io).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let (io, session) = stream.get_mut();
    if session.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
        // tls-alpn-01 validation: the handshake was the answer.
        return;
    }
    if session.alpn_protocol() == Some(b"h2") {
        io.set_multiplexed();
        // The guards count the connection until it ends.
        let _life = life;
        Box::pin(serve_h2(builder, stream, ctx, stopped, peer)).await;
    } else {
        // A TLS session cannot move to another process nor park: `serve`
        // leaves out both.
        let io = ClientIo::Tls(Box::new(stream));
        let exits = Exits::default();
        http1_server::serve(io, BytesMut::new(), ctx, stopped, life, exits).await;
    }
}

/// Runs hyper's HTTP/2 server on one connection until it ends or shutdown
/// closes it.
async fn serve_h2<I>(
    builder: &Http2Builder<TokioExecutor>,
    io: I,
    ctx: Arc<ConnCtx>,
    mut stopped: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let active = ctx.activity.begin();
        let ctx = Arc::clone(&ctx);
        // Boxed: hyper keeps room for one request future per stream slot;
        // a box is only allocated per request.
        let handling: BoxedHandling = Box::pin(async move {
            let req = req.map(ClientBody::Hyper);
            Ok::<_, Infallible>(forward::handle(ctx, active, req).await)
        });
        handling
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = async { drop(stopped.wait_for(|stop| *stop).await) } => {
            // Idle: closes now; busy: after the streams in progress.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

type BoxedHandling = std::pin::Pin<
    Box<dyn Future<Output = Result<http::Response<crate::body::ResponseBody>, Infallible>> + Send>,
>;

/// What counts a client connection as open (metrics, its worker's share,
/// the admission) until dropped, whichever task holds it.
pub(crate) struct ConnGuards {
    _metrics: ClientConnection,
    _open: OpenConnection,
    _admitted: Option<Admitted>,
}

/// Counts an open client connection until dropped.
struct ClientConnection(&'static crate::metrics::ProxyMetrics);

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.0
            .client_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// Connections queued before the listener got TCP_NODELAY did not
    /// inherit it: they get it one by one until the queue runs dry.
    #[test]
    fn nodelay_set_on_a_listener_reaches_only_connections_queued_after_it() {
        use rustix::net::sockopt::tcp_nodelay;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _early = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(
            Nodelay::set_on_listener(&listener),
            Nodelay::EachUntilDrained
        );
        let _late = std::net::TcpStream::connect(addr).unwrap();
        let (early, _) = listener.accept().unwrap();
        let (late, _) = listener.accept().unwrap();
        assert!(
            !tcp_nodelay(&early).unwrap(),
            "queued before: not inherited"
        );
        assert!(tcp_nodelay(&late).unwrap(), "queued after: inherited");
        assert_eq!(Nodelay::set_on_listener(&listener), Nodelay::Inherited);
    }

    use super::*;
    use std::num::NonZeroUsize;

    /// Two workers' accept loops on one listening socket, as `serve_with`
    /// runs them, with their shared connection counts.
    fn two_accept_loops() -> (
        crate::Workers,
        SocketAddr,
        Arc<Balance>,
        watch::Sender<bool>,
    ) {
        let workers = crate::Workers::start(NonZeroUsize::new(2).unwrap()).unwrap();
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let acceptor = Arc::new(Acceptor {
            shared: Arc::new(Shared {
                router: Router::new(Vec::new()),
                settings: ProxySettings::default(),
                access_log: None,
                redirect_https: None,
                acme_http01: None,
                proto: HeaderValue::from_static("http"),
            }),
            tls: None,
            builder: connection_builder(),
            handoff: None,
            admission: None,
            lots: Box::new([]),
        });
        let balance = Arc::new(Balance::new(2));
        let (stop, stopped) = watch::channel(false);
        for (slot, handle) in workers.handles().iter().enumerate() {
            handle.spawn(accept_loop(
                socket.try_clone().unwrap(),
                Arc::clone(&acceptor),
                Arc::clone(&balance),
                slot,
                Nodelay::Each,
                stopped.clone(),
            ));
        }
        (workers, addr, balance, stop)
    }

    fn counts(balance: &Balance) -> Vec<usize> {
        balance
            .open
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn connections_arriving_together_are_shared_out_between_worker_accept_loops() {
        const CLIENTS: usize = 40;
        let (_workers, addr, balance, _stop) = two_accept_loops();
        // A client opening its pool: a burst of connections that stay open.
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counts(&balance).iter().sum::<usize>() < CLIENTS {
            assert!(
                std::time::Instant::now() < deadline,
                "not all accepted: {:?}",
                counts(&balance)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let counts = counts(&balance);
        // Evenly, give or take a loop that was not scheduled within the
        // deferral on a busy machine; without balancing, the first loop to
        // run takes nearly all of them.
        assert!(
            counts.iter().all(|&n| n >= CLIENTS / 4),
            "connections per accept loop: {counts:?}"
        );
        drop(clients);
    }

    #[test]
    fn closed_connections_leave_the_count_of_the_loop_that_accepted_them() {
        let (_workers, addr, balance, _stop) = two_accept_loops();
        let clients: Vec<_> = (0..6)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counts(&balance).iter().sum::<usize>() < 6 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(clients);
        while counts(&balance).iter().sum::<usize>() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                counts(&balance)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
