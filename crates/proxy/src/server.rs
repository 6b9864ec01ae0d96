//! The accept loop and client connections: HTTP/1.1 with keep-alive and
//! upgrades, HTTP/2 (h2c with prior knowledge), the timeouts of
//! [`crate::conn_io`], and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::conn_io::{ConnActivity, TimedIo};
use crate::error::ProxyError;
use crate::forward::{self, ConnCtx, Shared};
use crate::headers;
use crate::router::Router;
use crate::settings::ProxySettings;
use crate::tls::Tls;

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
    let tls = options.tls;
    let builder = Arc::new(connection_builder());
    // Every connection task holds a receiver: shutdown flips the value and
    // then waits until all receivers are gone.
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    tracing::debug!(%local, "proxy accepting connections");
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn_connection(&builder, &shared, tls.as_ref(), &stopped, stream, peer),
                Err(e) => {
                    tracing::warn!(%local, error = %e, "accepting a connection failed");
                    if is_resource_exhaustion(&e) {
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            },
        }
    }
    drop(listener);
    drop(stopped);
    tracing::debug!(%local, connections = stop.receiver_count(), "proxy shutting down; finishing in-flight requests");
    stop.send_replace(true);
    stop.closed().await;
    Ok(())
}

/// HTTP/1.1 (with upgrades) and HTTP/2 (h2c prior knowledge, or h2 over
/// TLS): the protocol is recognised by the connection's first bytes.
fn connection_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        // TimedIo enforces the header and idle timeouts (see conn_io).
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

/// Serves one client connection on its own task.
fn spawn_connection(
    builder: &Arc<Builder<TokioExecutor>>,
    shared: &Arc<Shared>,
    tls: Option<&Tls>,
    stopped: &watch::Receiver<bool>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on client connection");
    }
    let activity = Arc::new(ConnActivity::default());
    let settings = &shared.settings;
    let io = TimedIo::new(
        stream,
        Arc::clone(&activity),
        settings.header_read_timeout,
        settings.idle_timeout,
    );
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(shared),
        client_ip: headers::client_ip_value(peer.ip()),
        activity,
    });
    let service = service_fn(move |req| {
        let active = ctx.activity.begin();
        let ctx = Arc::clone(&ctx);
        // Boxed: hyper keeps room for one request future per connection for
        // the connection's whole life; a box is only allocated per request,
        // so idle keep-alive connections do not hold a request's worth of
        // state (several KiB).
        let handling: BoxedHandling =
            Box::pin(async move { Ok::<_, Infallible>(forward::handle(ctx, active, req).await) });
        handling
    });
    let builder = Arc::clone(builder);
    let stopped = stopped.clone();
    let acceptor = tls.map(|tls| tls.acceptor().clone());
    let metrics = crate::metrics::global();
    metrics
        .client_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let _open = ClientConnection(metrics);
        let Some(acceptor) = acceptor else {
            return serve_io(&builder, io, service, stopped, peer).await;
        };
        // The handshake reads count as the request head's: the header-read
        // timeout bounds a client that stalls it.
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
        }
        serve_io(&builder, stream, service, stopped, peer).await;
    });
}

/// Runs hyper on one connection until it ends or shutdown closes it.
async fn serve_io<I, S>(
    builder: &Builder<TokioExecutor>,
    io: I,
    service: S,
    mut stopped: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::body::ResponseBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = async { drop(stopped.wait_for(|stop| *stop).await) } => {
            // Idle: closes now; busy: after the response in progress.
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
