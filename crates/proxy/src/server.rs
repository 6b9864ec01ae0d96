//! The accept loop and client connections: TLS, telling HTTP/1.1 (served
//! by `server_h1`) from HTTP/2 (hyper: h2c with prior knowledge, or ALPN
//! `h2`), and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderValue;
use hyper::server::conn::http2::Builder as Http2Builder;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::body::ClientBody;
use crate::conn_io::{ConnActivity, TimedIo};
use crate::error::ProxyError;
use crate::forward::{self, ConnCtx, Shared};
use crate::headers;
use crate::router::Router;
use crate::server_h1::{self, ClientIo, Prefixed};
use crate::settings::ProxySettings;
use crate::tls::Tls;
use crate::workers::Workers;

/// Pause after an accept error caused by resource exhaustion (e.g. too many
/// open files): retrying at once would spin. Nothing signals when a
/// descriptor frees up, so this is a backoff, not a wait for a condition.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
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
    /// Accept and serve connections on these worker threads, each with its
    /// own event loop; `None`: on the runtime that calls [`serve_with`].
    pub workers: Option<Workers>,
}

/// [`serve`] with [`ServeOptions`].
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    settings: ProxySettings,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let local = listener.local_addr().map_err(ProxyError::Listener)?;
    let shared = Arc::new(Shared {
        router,
        settings,
        access_log: options.access_log,
        redirect_https: options.redirect_https.filter(|_| options.tls.is_none()),
        proto: if options.tls.is_some() {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        },
    });
    let acceptor = Arc::new(Acceptor {
        shared,
        tls: options.tls,
        builder: connection_builder(),
    });
    // Accept loops and connection tasks each hold a receiver: shutdown
    // flips the value and then waits until all receivers are gone.
    let (stop, stopped) = watch::channel(false);
    let mut loops = Vec::new();
    // Held until every connection has ended: the last clone of the workers
    // stops their threads.
    let workers = options.workers;
    match &workers {
        None => {
            loops.push(tokio::spawn(accept_loop(
                listener,
                Arc::clone(&acceptor),
                stopped.clone(),
            )));
        }
        Some(workers) => {
            // Every worker polls its own registration of one listening
            // socket; the kernel hands each connection to one of them.
            let shared_socket = listener.into_std().map_err(ProxyError::Listener)?;
            for handle in workers.handles() {
                let socket = shared_socket.try_clone().map_err(ProxyError::Listener)?;
                let acceptor = Arc::clone(&acceptor);
                let stopped = stopped.clone();
                loops.push(handle.spawn(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept_loop(listener, acceptor, stopped).await,
                        Err(e) => {
                            tracing::error!(%local, error = %e, "a proxy worker cannot accept connections");
                        }
                    }
                }));
            }
        }
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

/// What every connection of one listener is served with.
struct Acceptor {
    shared: Arc<Shared>,
    tls: Option<Tls>,
    builder: Http2Builder<TokioExecutor>,
}

/// Accepts connections until `stopped` turns true, each served on its own
/// task of the current runtime.
async fn accept_loop(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
    stopped: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let mut stopping = stopped.clone();
    loop {
        tokio::select! {
            biased;
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    spawn_connection(&acceptor, &stopped, stream, peer);
                    // One connection per turn: other workers woken for the
                    // same burst of connections get their share.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(?local, error = %e, "accepting a connection failed");
                    if is_resource_exhaustion(&e) {
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            },
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

/// How an HTTP/2 connection starts (RFC 9113 section 3.4): the method
/// `PRI` is not HTTP/1.
const H2_PREFACE_START: &[u8] = b"PRI ";

/// Serves one client connection on its own task.
fn spawn_connection(
    acceptor: &Arc<Acceptor>,
    stopped: &watch::Receiver<bool>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on client connection");
    }
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(&acceptor.shared),
        client_ip: headers::client_ip_value(peer.ip()),
        activity: Arc::new(ConnActivity::default()),
    });
    let acceptor = Arc::clone(acceptor);
    let stopped = stopped.clone();
    let metrics = crate::metrics::global();
    metrics
        .client_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let _open = ClientConnection(metrics);
        let builder = &acceptor.builder;
        match acceptor.tls.as_ref() {
            None => serve_plain(stream, ctx, builder, stopped, peer).await,
            // Boxed, like HTTP/2 below: the task of a plain HTTP/1.1
            // connection stays the size of what it needs.
            Some(tls) => {
                let tls = tls.acceptor().clone();
                Box::pin(serve_tls(stream, tls, ctx, builder, stopped, peer)).await
            }
        }
    });
}

/// A cleartext connection: HTTP/2 if it starts with the HTTP/2 preface
/// (h2c with prior knowledge), else HTTP/1.1.
async fn serve_plain(
    mut stream: TcpStream,
    ctx: Arc<ConnCtx>,
    builder: &Http2Builder<TokioExecutor>,
    stopped: watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let settings = ctx.shared.settings;
    let mut first = BytesMut::with_capacity(4096);
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
        // Shutdown: a connection that sent nothing yet is idle; close it.
        _ = waiting.wait_for(|stop| *stop) => return,
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
        Box::pin(serve_h2(builder, io, ctx, stopped, peer)).await;
    } else {
        server_h1::serve(ClientIo::Tcp(stream), first, ctx, stopped).await;
    }
}

/// A TLS connection: HTTP/2 if ALPN chose it, else HTTP/1.1.
async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Arc<ConnCtx>,
    builder: &Http2Builder<TokioExecutor>,
    stopped: watch::Receiver<bool>,
    peer: SocketAddr,
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
    if session.alpn_protocol() == Some(b"h2") {
        io.set_multiplexed();
        Box::pin(serve_h2(builder, stream, ctx, stopped, peer)).await;
    } else {
        server_h1::serve(
            ClientIo::Tls(Box::new(stream)),
            BytesMut::new(),
            ctx,
            stopped,
        )
        .await;
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
