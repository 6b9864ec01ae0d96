//! The admin API over TCP (`[admin] listen`): the same router as the unix
//! socket behind a guard, optionally in TLS.
//!
//! The guard, per request, in this order:
//! 1. `Host` must name the listener (its address, a loopback name when it
//!    listens on loopback or a wildcard, or `[admin] hosts`): else 421, so
//!    a page whose DNS name was pointed at this address (DNS rebinding)
//!    gets nothing.
//! 2. A CORS preflight from an origin of `[admin] cors_origins` is answered
//!    204; no CORS header is ever sent for any other origin.
//! 3. `Authorization: Bearer <token>`: none or unknown is 401, a read-only
//!    token on anything but GET/HEAD is 403. Only the dashboard's page
//!    (`GET /`) and its static files (`GET /assets/…`) need none: they hold
//!    no data. Every refusal is logged with the peer, never the token.

use crate::error::HttpError;
use crate::routes::router_with_shutdown;
use crate::shutdown::Shutdown;
use crate::tokens::{Access, Tokens};
use crate::transport::{Connections, Peer};
use crate::upgrade::Upgrades;
use crate::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cutover_config::RemoteAdmin;
use cutover_engine::Engine;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How long open connections may take to finish after shutdown was asked.
const GRACE: Duration = Duration::from_secs(5);
/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are looked at for changes.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What the guard knows: the listener's configuration and its tokens.
#[derive(Debug)]
pub(crate) struct Guard {
    remote: RemoteAdmin,
    tokens: Arc<Tokens>,
}

/// The TCP listener of the admin API, bound, not yet serving.
pub struct AdminTcp {
    listener: TcpListener,
    guard: Arc<Guard>,
    tls: Option<(cutover_proxy::Tls, TlsAcceptor)>,
    upgrades: Option<Upgrades>,
    certs: Option<cutover_acme::Acme>,
}

impl std::fmt::Debug for AdminTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTcp")
            .field("listen", &self.guard.remote.listen)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl AdminTcp {
    /// Reads the tokens and the certificate, then binds `[admin] listen`
    /// (or serves on `inherited`, the listener of the process this one
    /// takes over from). Any problem is an error naming the file or address.
    pub async fn bind(
        remote: &RemoteAdmin,
        inherited: Option<std::net::TcpListener>,
    ) -> Result<AdminTcp, ApiError> {
        let tokens = Tokens::load(remote).map_err(ApiError::Tokens)?;
        let tls = match &remote.tls {
            Some(files) => Some(load_tls(files)?),
            None => None,
        };
        let addr = remote.listen;
        let listen_error = |source| ApiError::Listen { addr, source };
        let listener = match inherited {
            Some(listener) => listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(listen_error)?,
            None => TcpListener::bind(addr).await.map_err(listen_error)?,
        };
        Ok(AdminTcp {
            listener,
            guard: Arc::new(Guard {
                remote: remote.clone(),
                tokens: Arc::new(tokens),
            }),
            tls,
            upgrades: None,
            certs: None,
        })
    }

    /// Serves `/v1/certs` (and certificate metrics) from `certs`.
    pub fn with_certs(mut self, certs: Option<cutover_acme::Acme>) -> AdminTcp {
        self.certs = certs;
        self
    }

    /// Serves `POST /v1/upgrade` by sending each request to `upgrades`.
    pub fn with_upgrades(mut self, upgrades: Upgrades) -> AdminTcp {
        self.upgrades = Some(upgrades);
        self
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// `https://addr` or `http://addr`, for the startup line.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let addr = self.local_addr().unwrap_or(self.guard.remote.listen);
        format!("{scheme}://{addr}")
    }

    /// A second descriptor of the listening socket, to hand to a new process.
    pub fn listener_fd(&self) -> std::io::Result<OwnedFd> {
        self.listener.as_fd().try_clone_to_owned()
    }

    /// Serves until `shutdown` resolves; then ends event and log streams
    /// and lets requests finish (for a few seconds at most).
    pub async fn serve(
        self,
        engine: Engine,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        let AdminTcp {
            listener,
            guard,
            tls,
            upgrades,
            certs,
        } = self;
        let (stop, stopped) = watch::channel(false);
        let app = router_with_shutdown(engine, Shutdown::new(stopped.clone()), upgrades);
        let app = crate::certs::attach(app, certs).layer(axum::middleware::from_fn_with_state(
            Arc::clone(&guard),
            guard_request,
        ));
        let mut watches = vec![guard.tokens.watch()];
        watches.extend(
            tls.as_ref()
                .map(|(tls, _)| tls.watch(CERTIFICATE_CHECK_INTERVAL)),
        );
        let _watches = AbortOnDrop(watches);
        let acceptor = tls.map(|(_, acceptor)| acceptor);
        let connections = Connections::new(stopped.clone());
        let mut stopping = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut stopping => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => spawn_connection(&connections, stream, peer, acceptor.clone(), app.clone()),
                    Err(error) => {
                        tracing::warn!(%error, "accepting an admin API connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        let _ = stop.send(true);
        if !connections.wait_closed(GRACE).await {
            tracing::warn!(
                "admin API connections over TCP still open {GRACE:?} after shutdown; closing them"
            );
        }
        Ok(())
    }
}

/// Background tasks aborted when the server stops.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn spawn_connection(
    connections: &Connections,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
) {
    let peer = Peer(Some(peer));
    let Some(acceptor) = acceptor else {
        connections.spawn(stream, peer, app);
        return;
    };
    // The handshake runs on the connection's own task, so a slow client
    // never holds up the accept loop.
    let tracked = connections.track();
    tokio::spawn(async move {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => crate::transport::serve(stream, peer, app, tracked).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "admin API TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "admin API TLS handshake timed out"),
        }
    });
}

fn load_tls(
    files: &cutover_config::TlsCert,
) -> Result<(cutover_proxy::Tls, TlsAcceptor), ApiError> {
    let tls = cutover_proxy::Tls::load(vec![cutover_proxy::CertKeyFiles {
        cert: files.cert.clone(),
        key: files.key.clone(),
    }])
    .map_err(|error| ApiError::Tls(format!("{error} ([admin] tls)")))?;
    let acceptor = tls
        .http1_acceptor()
        .map_err(|error| ApiError::Tls(format!("{error} ([admin] tls)")))?;
    Ok((tls, acceptor))
}

/// The guard of every request over TCP; see the module's docs.
async fn guard_request(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<Peer>()
        .copied()
        .unwrap_or(Peer(None));
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if let Err(refused) = check_host(&guard.remote, request.headers()) {
        tracing::warn!(%peer, %method, path, "admin API request refused: {}", refused.message);
        return refused.into_response();
    }
    let origin = allowed_origin(&guard.remote, request.headers());
    if let (Some(origin), true) = (&origin, is_preflight(&request)) {
        return preflight(origin.clone());
    }
    if !is_public(&method, &path) {
        if let Err(refused) = authorize(&guard.tokens, &method, request.headers()) {
            tracing::warn!(%peer, %method, path, "admin API request refused: {}", refused.message);
            return unauthorized(refused);
        }
    }
    let mut response = next.run(request).await;
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// The dashboard's page and static files: no data, no token.
fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/" || path.starts_with("/assets/"))
}

fn check_host(remote: &RemoteAdmin, headers: &HeaderMap) -> Result<(), HttpError> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    match host {
        Some(host) if cutover_config::admin::host_allowed(remote, host) => Ok(()),
        Some(host) => Err(HttpError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this admin API does not answer for host `{}`; add it to [admin] hosts if it names this server",
                host.escape_debug()
            ),
        )),
        None => Err(HttpError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "the request has no Host header",
        )),
    }
}

/// Whether the token allows the request; the error says what is missing.
fn authorize(tokens: &Tokens, method: &Method, headers: &HeaderMap) -> Result<(), HttpError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(presented) = presented else {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "this request needs a token: send `Authorization: Bearer <token>` (the CLI sends $CUTOVER_TOKEN)",
        ));
    };
    match tokens.access(presented) {
        Access::Full => Ok(()),
        Access::ReadOnly if method == Method::GET || method == Method::HEAD => Ok(()),
        Access::ReadOnly => Err(HttpError::new(
            StatusCode::FORBIDDEN,
            format!("a read-only token may not {method}: this needs a token of [admin] token_file"),
        )),
        Access::Denied => Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "the token is not valid",
        )),
    }
}

fn unauthorized(error: HttpError) -> Response {
    let challenge = error.status == StatusCode::UNAUTHORIZED;
    let mut response = error.into_response();
    if challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cutover\""),
        );
    }
    response
}

/// The request's `Origin` when `[admin] cors_origins` lists it.
fn allowed_origin(remote: &RemoteAdmin, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin
        .to_str()
        .ok()?
        .trim_end_matches('/')
        .to_ascii_lowercase();
    remote.cors_origins.contains(&text).then(|| origin.clone())
}

fn is_preflight(request: &Request) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight(origin: HeaderValue) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, last-event-id"),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            ),
            (header::VARY, HeaderValue::from_static("origin")),
        ],
    )
        .into_response()
}
