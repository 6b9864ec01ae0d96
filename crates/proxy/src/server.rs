//! The accept loop and client connections: HTTP/1.1 with keep-alive, the
//! timeouts of [`crate::conn_io`], and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn_io::{ConnActivity, TimedIo};
use crate::error::ProxyError;
use crate::forward::{self, ConnCtx, Shared};
use crate::headers;
use crate::router::Router;
use crate::settings::ProxySettings;

/// Pause after an accept error caused by resource exhaustion (e.g. too many
/// open files): retrying at once would spin. Nothing signals when a
/// descriptor frees up, so this is a backoff, not a wait for a condition.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

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
    let local = listener.local_addr().map_err(ProxyError::Listener)?;
    let shared = Arc::new(Shared { router, settings });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        // TimedIo enforces the header and idle timeouts (see conn_io).
        .header_read_timeout(None);
    let builder = Arc::new(builder);
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
                Ok((stream, peer)) => spawn_connection(&builder, &shared, &stopped, stream, peer),
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

/// Serves one client connection on its own task.
fn spawn_connection(
    builder: &Arc<http1::Builder>,
    shared: &Arc<Shared>,
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
        async move { Ok::<_, Infallible>(forward::handle(ctx, active, req).await) }
    });
    let builder = Arc::clone(builder);
    let mut stopped = stopped.clone();
    tokio::spawn(async move {
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
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
    });
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
