//! The admin API's unix socket: bound only when no other daemon answers on
//! it, mode 0600, removed again when the server stops.

use crate::routes::router_with_shutdown;
use crate::shutdown::Shutdown;
use crate::transport::{Connections, Peer};
use crate::upgrade::Upgrades;
use cutover_engine::Engine;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// How long open connections may take to finish after shutdown was asked.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another `cutover serve` is already running with this state_dir (socket {} answers); stop it first, or give this one another state_dir", .socket.display())]
    AlreadyRunning { socket: PathBuf },
    #[error("{} exists and is not a unix socket; remove it or set [admin] socket to another path", .path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the admin API server failed: {0}")]
    Serve(#[source] io::Error),
    #[error("cannot listen on {addr} ([admin] listen): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("[admin] {0}")]
    Tokens(String),
    #[error("{0}")]
    Tls(String),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApiError + 'a {
    move |source| ApiError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A bound admin socket, not yet serving. Dropping it removes the socket file.
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    file: SocketFile,
    upgrades: Option<Upgrades>,
    certs: Option<cutover_acme::Acme>,
}

/// Once set, the admin socket's file stays when this process stops: the
/// process it was handed to (an upgrade) serves on it now.
#[derive(Debug, Clone, Default)]
pub struct KeepSocketFile(Arc<AtomicBool>);

impl KeepSocketFile {
    pub fn keep(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl AdminSocket {
    /// Creates the parent directory, refuses when another daemon answers on
    /// `path`, removes a stale socket file, binds and restricts the socket
    /// to its owner (mode 0600).
    pub async fn bind(path: &Path) -> Result<AdminSocket, ApiError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error("create the directory", parent))?;
        }
        match std::fs::symlink_metadata(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("inspect", path)(error)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ApiError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Ok(_) => match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path))
                .await
            {
                Ok(Ok(_)) | Err(_) => {
                    return Err(ApiError::AlreadyRunning {
                        socket: path.to_path_buf(),
                    })
                }
                Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing a stale admin socket");
                    std::fs::remove_file(path)
                        .map_err(io_error("remove the stale socket", path))?;
                }
                Ok(Err(error)) => {
                    return Err(io_error("connect to the existing socket", path)(error))
                }
            },
        }
        let listener = UnixListener::bind(path).map_err(io_error("bind the admin socket", path))?;
        let file = SocketFile::new(path);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("set the mode of", path))?;
        Ok(AdminSocket {
            listener,
            file,
            upgrades: None,
            certs: None,
        })
    }

    /// The admin socket another cutover process bound at `path` and handed
    /// to this one (an upgrade): serving on it never leaves a moment in
    /// which the CLI finds no listener.
    pub fn adopt(
        listener: std::os::unix::net::UnixListener,
        path: &Path,
    ) -> Result<AdminSocket, ApiError> {
        listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(listener))
            .map(|listener| AdminSocket {
                listener,
                file: SocketFile::new(path),
                upgrades: None,
                certs: None,
            })
            .map_err(io_error("adopt the admin socket", path))
    }

    /// Serves `POST /v1/upgrade` by sending each request to `upgrades`.
    /// Serves `/v1/certs` (and certificate metrics) from `certs`.
    pub fn with_certs(mut self, certs: Option<cutover_acme::Acme>) -> AdminSocket {
        self.certs = certs;
        self
    }

    pub fn with_upgrades(mut self, upgrades: Upgrades) -> AdminSocket {
        self.upgrades = Some(upgrades);
        self
    }

    /// A second descriptor of the listening socket, to hand to a new process.
    pub fn listener_fd(&self) -> io::Result<OwnedFd> {
        self.listener.as_fd().try_clone_to_owned()
    }

    /// Set it to leave the socket file in place when this process stops.
    pub fn keep_file(&self) -> KeepSocketFile {
        self.file.keep.clone()
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Serves the admin API until `shutdown` resolves; then ends event and
    /// log streams, lets requests finish (for a few seconds at most) and
    /// removes the socket file.
    pub async fn serve(
        self,
        engine: Engine,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        let AdminSocket {
            listener,
            file,
            upgrades,
            certs,
        } = self;
        let (stop, stopped) = watch::channel(false);
        let app = router_with_shutdown(engine, Shutdown::new(stopped.clone()), upgrades);
        let app = crate::certs::attach(app, certs);
        let connections = Connections::new(stopped);
        let mut stopping = std::pin::pin!(shutdown);
        let mut result = Ok(());
        loop {
            tokio::select! {
                () = &mut stopping => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => connections.spawn(stream, Peer(None), app.clone()),
                    Err(error) if is_transient(&error) => {
                        tracing::warn!(%error, "accepting an admin API connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => {
                        result = Err(ApiError::Serve(error));
                        break;
                    }
                },
            }
        }
        drop(listener);
        let _ = stop.send(true);
        if !connections.wait_closed(GRACE).await {
            tracing::warn!(
                "admin API connections still open {GRACE:?} after shutdown; closing them"
            );
        }
        drop(file);
        result
    }
}

/// Errors of `accept` that pass (out of descriptors or memory for a
/// moment, a connection reset before it was taken).
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::OutOfMemory
    ) || matches!(error.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

/// Serves the admin API on the unix socket at `path` until `shutdown`
/// resolves; see [`AdminSocket::bind`] and [`AdminSocket::serve`].
pub async fn serve_unix(
    path: &Path,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    AdminSocket::bind(path).await?.serve(engine, shutdown).await
}

/// Removes the socket file on drop, if it is still the one bound here.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    keep: KeepSocketFile,
}

impl SocketFile {
    fn new(path: &Path) -> SocketFile {
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        SocketFile {
            path: path.to_path_buf(),
            identity,
            keep: KeepSocketFile::default(),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.keep.0.load(Ordering::SeqCst) {
            return;
        }
        let current = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        if current.is_some() && current == self.identity {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(socket = %self.path.display(), %error, "cannot remove the admin socket");
            }
        }
    }
}
