//! `cutover serve`: wires the daemon together.
//!
//! Order matters: the admin socket is bound first, so a second daemon on
//! the same state_dir stops before its recovery could touch the first's
//! releases; then the store, the proxy listeners, the engine (recovery),
//! the proxy and the admin API. On SIGTERM/SIGINT the listeners stop
//! accepting; in-flight proxy requests finish while the engine brings every
//! app to a safe point (a running deployment halts at its step and cleans
//! up, or finishes once committed), each within its bound; then the admin
//! socket is removed. Releases keep running: they are separate process
//! groups, adopted again by the next start.

use crate::cli::{LogFormat, ServeArgs};
use crate::failure::{Failure, Outcome};
use cutover_api::AdminSocket;
use cutover_config::Config;
use cutover_engine::{Engine, ShutdownOutcome};
use cutover_proxy::{ProxySettings, Router};
use cutover_store::Store;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing_subscriber::EnvFilter;

pub async fn run(config: Config, args: &ServeArgs) -> Outcome {
    init_tracing(args.log_format);
    create_state_dirs(&config)?;
    let admin = AdminSocket::bind(&config.admin.socket)
        .await
        .map_err(Failure::failed)?;
    let store = open_store(&config).await?;
    let router = route_table(&config);
    let listeners = Listeners::bind(&config).await?;
    // The webhook receiver binds before recovery too, so a port clash stops
    // the start before anything is touched.
    let webhooks = match &config.webhook {
        Some(_) => Some(
            cutover_webhook::Receiver::bind(Arc::new(config.clone()), store.clone())
                .await
                .map_err(Failure::failed)?,
        ),
        None => None,
    };
    let engine = Engine::start(Arc::new(config.clone()), store.clone(), router.clone())
        .await
        .map_err(|e| Failure::failed(format!("starting the deployment engine failed: {e}")))?;

    let (stop, stopped) = watch::channel(false);
    let proxies = listeners.serve(&config, &router, &stopped)?;
    let webhook_line = match webhooks {
        Some(receiver) => serve_webhooks(receiver, &engine, store, &stopped),
        None => String::new(),
    };
    let socket = admin.path().to_path_buf();
    let mut admin_task = tokio::spawn(admin.serve(engine.clone(), stop_signal(&stopped)));
    announce(&config, &proxies, &webhook_line, &socket);

    let admin_ended = tokio::select! {
        signal = terminate_signal() => {
            tracing::info!("{signal} received; shutting down (releases keep running)");
            None
        }
        ended = &mut admin_task => Some(ended),
    };
    let _ = stop.send(true);
    shut_down(&config, proxies.tasks, &engine).await;
    admin_outcome(admin_ended, admin_task).await
}

type AdminEnded = Result<Result<(), cutover_api::ApiError>, tokio::task::JoinError>;

/// The daemon's exit status from how the admin API ended: by itself it is
/// a failure; after a signal it should end cleanly.
async fn admin_outcome(
    admin_ended: Option<AdminEnded>,
    admin_task: JoinHandle<Result<(), cutover_api::ApiError>>,
) -> Outcome {
    let ended = match admin_ended {
        Some(Ok(Ok(()))) => return Err(Failure::failed("the admin API stopped unexpectedly")),
        Some(ended) => ended,
        None => admin_task.await,
    };
    match ended {
        Ok(Ok(())) => {
            tracing::info!("cutover stopped");
            Ok(())
        }
        Ok(Err(error)) => Err(Failure::failed(error)),
        Err(error) => Err(Failure::failed(format!("the admin API failed: {error}"))),
    }
}

/// After the stop signal: in-flight proxy requests finish (an endless
/// response, a stream, is bounded by the longest drain timeout) while the
/// engine brings every app to a safe point (bounded by its own
/// [`Engine::shutdown_bound`]); both run at once, so the daemon exits
/// within the larger of the two bounds.
async fn shut_down(config: &Config, proxies: Vec<JoinHandle<()>>, engine: &Engine) {
    let grace = config
        .apps
        .iter()
        .map(|app| app.drain_timeout)
        .max()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(5));
    let proxies_done = async {
        let drained = tokio::time::timeout(grace, async {
            for proxy in proxies {
                let _ = proxy.await;
            }
        });
        if drained.await.is_err() {
            tracing::warn!("proxy requests still in flight after {grace:?}; closing them");
        }
    };
    let engine_done = async {
        match engine.shutdown().await {
            ShutdownOutcome::Complete { took } => {
                tracing::info!("the deployment engine stopped at a safe point after {:.2}s", took.as_secs_f64())
            }
            ShutdownOutcome::TimedOut { bound } => tracing::warn!(
                "a deployment was still finishing after {bound:?}; the next start records and cleans it up"
            ),
        }
    };
    tokio::join!(proxies_done, engine_done);
}

fn stop_signal(stopped: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stopped = stopped.clone();
    async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }
}

/// The state directory and its logs are private to the daemon's user
/// (0700): they hold the database, release and build logs, artifacts.
/// An existing directory made with looser modes is tightened.
fn create_state_dirs(config: &Config) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    for dir in [config.state_dir.clone(), config.logs_dir()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| {
                Failure::failed(format!(
                    "cannot create {}: {e}; check that state_dir is writable",
                    dir.display()
                ))
            })?;
    }
    Ok(())
}

async fn open_store(config: &Config) -> Result<Store, Failure> {
    let path = config.database_path();
    tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| Failure::failed(format!("opening the state database failed: {e}")))?
        .map_err(Failure::failed)
}

fn route_table(config: &Config) -> Router {
    let router = Router::new(
        config
            .apps
            .iter()
            .map(|app| (app.name.clone(), app.hosts.clone()))
            .collect(),
    );
    for app in &config.apps {
        if app.upstream_protocol == cutover_config::UpstreamProtocol::H2c {
            router.set_upstream_protocol(&app.name, cutover_proxy::UpstreamProtocol::H2c);
        }
    }
    router
}

/// The proxy's listeners, bound before recovery so a port clash stops the
/// start before anything is touched.
struct Listeners {
    plain: Vec<(SocketAddr, TcpListener)>,
    secure: Vec<(SocketAddr, TcpListener)>,
    tls: Option<cutover_proxy::Tls>,
}

/// The proxy listeners serving, and how to name them.
struct Proxies {
    tasks: Vec<JoinHandle<()>>,
    /// What serves client traffic, for the startup line.
    serving: String,
    /// Reloads changed certificate files while the daemon runs.
    _certificate_watch: Option<JoinHandle<()>>,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Listeners, Failure> {
        // In nginx front mode nginx takes the client traffic: no listener here.
        let listen = match &config.proxy.nginx {
            Some(_) => &[][..],
            None => &config.proxy.listen[..],
        };
        let plain = bind_all(listen, "[proxy] listen").await?;
        // HTTPS: certificates first, so that a bad file stops the start here.
        let tls = load_tls(config)?;
        let secure = match tls {
            Some(_) => bind_all(&config.proxy.tls.listen, "[proxy] tls_listen").await?,
            None => Vec::new(),
        };
        Ok(Listeners { plain, secure, tls })
    }

    fn serve(
        self,
        config: &Config,
        router: &Router,
        stopped: &watch::Receiver<bool>,
    ) -> Result<Proxies, Failure> {
        let settings = ProxySettings {
            max_body: config.proxy.max_body,
            header_read_timeout: config.proxy.header_read_timeout,
            idle_timeout: config.proxy.idle_timeout,
            upstream_connect_timeout: config.proxy.upstream_connect_timeout,
            upstream_response_timeout: config.proxy.upstream_response_timeout,
            trusted_proxies: cutover_proxy::TrustedProxies::new(
                config
                    .proxy
                    .trusted_proxies
                    .iter()
                    .filter_map(|block| cutover_proxy::Cidr::new(block.addr, block.prefix)),
            ),
        };
        let mut options = proxy_options(config)?;
        if !(self.plain.is_empty() && self.secure.is_empty()) {
            options.workers = Some(proxy_workers(config)?);
        }
        let serving = self.describe(config, &options);
        spawn_reload_on_sighup(options.clone(), self.tls.clone());
        let certificate_watch = self
            .tls
            .as_ref()
            .map(|tls| tls.watch(CERTIFICATE_CHECK_INTERVAL));
        let redirect_https = self
            .secure
            .first()
            .map(|(local, _)| local.port())
            .filter(|_| config.proxy.tls.redirect_http);
        let plain = self.plain.into_iter().map(|listener| {
            let options = cutover_proxy::ServeOptions {
                redirect_https,
                ..options.clone()
            };
            (listener, options)
        });
        let tls = self.tls;
        let secure = self.secure.into_iter().map(|listener| {
            let options = cutover_proxy::ServeOptions {
                tls: tls.clone(),
                ..options.clone()
            };
            (listener, options)
        });
        let mut tasks = Vec::new();
        for ((local, listener), options) in plain.chain(secure) {
            let serving = cutover_proxy::serve_with(
                listener,
                router.clone(),
                settings,
                options,
                stop_signal(stopped),
            );
            tasks.push(tokio::spawn(async move {
                if let Err(error) = serving.await {
                    tracing::error!(%local, %error, "a proxy listener stopped");
                }
            }));
        }
        Ok(Proxies {
            tasks,
            serving,
            _certificate_watch: certificate_watch,
        })
    }

    fn describe(&self, config: &Config, options: &cutover_proxy::ServeOptions) -> String {
        let bound: Vec<String> = self
            .plain
            .iter()
            .map(|(local, _)| local.to_string())
            .chain(
                self.secure
                    .iter()
                    .map(|(local, _)| format!("https://{local}")),
            )
            .collect();
        match (&config.proxy.nginx, &options.workers) {
            (Some(nginx), _) => format!("through nginx ({})", nginx.conf.display()),
            (None, Some(workers)) => {
                format!("{} on {} proxy workers", bound.join(", "), workers.count())
            }
            (None, None) => bound.join(", "),
        }
    }
}

async fn bind_all(
    addrs: &[SocketAddr],
    key: &str,
) -> Result<Vec<(SocketAddr, TcpListener)>, Failure> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::failed(format!("cannot listen on {addr} ({key}): {e}")))?;
        let local = listener.local_addr().unwrap_or(*addr);
        listeners.push((local, listener));
    }
    Ok(listeners)
}

/// Starts the webhook dispatcher and receiver; returns the startup line's part.
fn serve_webhooks(
    receiver: cutover_webhook::Receiver,
    engine: &Engine,
    store: Store,
    stopped: &watch::Receiver<bool>,
) -> String {
    let line = receiver
        .local_addr()
        .map(|addr| format!(", webhooks on {addr}"))
        .unwrap_or_default();
    cutover_webhook::spawn_dispatcher(engine.clone(), store, receiver.wake());
    let serving = receiver.serve(stop_signal(stopped));
    tokio::spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "the webhook receiver stopped");
        }
    });
    line
}

fn announce(config: &Config, proxies: &Proxies, webhook_line: &str, socket: &std::path::Path) {
    let apps: Vec<&str> = config.apps.iter().map(|app| app.name.as_str()).collect();
    let apps = if apps.is_empty() {
        "none".to_string()
    } else {
        apps.join(", ")
    };
    let line = format!(
        "cutover serving {} (apps: {apps}){webhook_line}, admin socket {}",
        proxies.serving,
        socket.display()
    );
    println!("{line}");
    tracing::info!("{line}");
}

/// The proxy listeners' options from `[proxy]`: the access log.
fn proxy_options(config: &Config) -> Result<cutover_proxy::ServeOptions, Failure> {
    use cutover_config::AccessLog;
    use cutover_proxy::{AccessLogFormat, AccessLogTarget};
    let format = match config.proxy.access_log {
        AccessLog::Off => None,
        AccessLog::Combined => Some(AccessLogFormat::Combined),
        AccessLog::Json => Some(AccessLogFormat::Json),
    };
    let access_log = match format {
        None => None,
        Some(format) => {
            let target = match &config.proxy.access_log_file {
                Some(path) => AccessLogTarget::File(path.clone()),
                None => AccessLogTarget::Stdout,
            };
            let log = cutover_proxy::AccessLog::start(format, target)
                .map_err(|e| Failure::failed(format!("{e} ([proxy] access_log_file)")))?;
            Some(log)
        }
    };
    Ok(cutover_proxy::ServeOptions {
        access_log,
        tls: None,
        redirect_https: None,
        workers: None,
    })
}

/// The proxy's worker threads (`[proxy] workers`, one per CPU by default).
fn proxy_workers(config: &Config) -> Result<cutover_proxy::Workers, Failure> {
    match config.proxy.workers {
        Some(count) => cutover_proxy::Workers::start(count),
        None => cutover_proxy::Workers::start_per_cpu(),
    }
    .map_err(|e| Failure::failed(format!("cannot start the proxy's worker threads: {e}")))
}

/// How often the certificate files are checked for changes.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The HTTPS listeners' certificates (`[[proxy.tls]]`), if any; a file that
/// is missing or unusable stops the start with an error naming it.
fn load_tls(config: &Config) -> Result<Option<cutover_proxy::Tls>, Failure> {
    if config.proxy.tls.certs.is_empty() || config.proxy.nginx.is_some() {
        return Ok(None);
    }
    let files = config
        .proxy
        .tls
        .certs
        .iter()
        .map(|c| cutover_proxy::CertKeyFiles {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect();
    let tls = cutover_proxy::Tls::load(files).map_err(|e| {
        Failure::failed(format!("{e} ([[proxy.tls]] in {})", config.file.display()))
    })?;
    tracing::info!(names = %tls.names().join(", "), "TLS certificates loaded");
    Ok(Some(tls))
}

/// SIGHUP: reopen the access log file (after log rotation) and reload the
/// TLS certificates (keeping the current ones if the files are bad).
fn spawn_reload_on_sighup(options: cutover_proxy::ServeOptions, tls: Option<cutover_proxy::Tls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot install the SIGHUP handler; reopening logs needs a restart");
            return;
        }
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reopening the access log, reloading certificates");
            if let Some(log) = &options.access_log {
                log.reopen();
            }
            if let Some(tls) = &tls {
                tls.reload_and_log("SIGHUP");
            }
        }
    });
}

/// Resolves on SIGTERM or SIGINT, naming it.
async fn terminate_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            tracing::warn!("cannot install signal handlers; stop cutover with SIGKILL");
            std::future::pending().await
        }
    }
}

fn init_tracing(format: LogFormat) {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => {
            let bad = std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (v, error));
            (EnvFilter::new("info"), bad)
        }
    };
    // Colours only for a person watching a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some((value, error)) = bad_filter {
        tracing::warn!("RUST_LOG={value:?} is not a valid filter ({error}); logging at info");
    }
}
