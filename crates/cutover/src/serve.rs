//! `cutover serve`: wires the daemon together.
//!
//! Order matters: the admin socket is bound first, so a second daemon on
//! the same state_dir stops before its recovery could touch the first's
//! releases; then the store, the proxy listeners, the engine (recovery),
//! the proxy and the admin API. Listening sockets (and the admin socket)
//! come from the process being upgraded when this one takes over (see
//! `handover`), else from systemd socket activation, else they are bound.
//! Connections are accepted only once the recovered live releases passed
//! their health gates (they wait in the backlog meanwhile).
//!
//! On SIGTERM/SIGINT the listeners stop accepting; in-flight proxy
//! requests finish while the engine brings every app to a safe point (a
//! running deployment halts at its step and cleans up, or finishes once
//! committed; one awaiting promotion stays so), each within its bound;
//! then the admin socket is removed. Releases keep running: they are
//! separate process groups, adopted again by the next start.
//!
//! On `cutover upgrade` (`POST /v1/upgrade`) or SIGUSR2 the daemon starts
//! the new binary and, once it serves, drains: idle connections go to the
//! new process, requests, streams and tunnels in flight finish here, the
//! admin socket file stays for the new process.

use crate::cli::{LogFormat, ServeArgs};
use crate::failure::{Failure, Outcome};
use crate::handover::{self, HandedOver, Inheritance, ListenerKind, ListenerTag, Upgrader};
use crate::systemd;
use cutover_api::{AdminSocket, KeepSocketFile, UpgradeAsk, UpgradeReport};
use cutover_config::Config;
use cutover_engine::{Engine, ShutdownOutcome};
use cutover_proxy::{Handoff, IntakeSender, ProxySettings, Router};
use cutover_store::Store;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing_subscriber::EnvFilter;

pub async fn run(config: Config, args: &ServeArgs) -> Outcome {
    init_tracing(args.log_format);
    raise_nofile_limit();
    create_state_dirs(&config)?;
    let mut inheritance = match std::env::var_os(handover::UPGRADE_SOCKET_ENV) {
        Some(path) => Some(take_over_from(&PathBuf::from(path))?),
        None => None,
    };
    let started = start(&config, inheritance.as_mut()).await;
    let daemon = match (started, inheritance) {
        (Ok(daemon), None) => {
            systemd::notify("READY=1");
            daemon
        }
        (Ok(daemon), Some(inheritance)) => {
            let from = inheritance.from_pid;
            let intakes = daemon.intakes.clone();
            inheritance.ready(intakes).map_err(|e| {
                Failure::failed(format!(
                    "cannot tell the running cutover this one serves: {e}"
                ))
            })?;
            tracing::info!("took over from pid {from}");
            systemd::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
            daemon
        }
        (Err(failure), Some(inheritance)) => {
            let reason = failure.message.clone().unwrap_or_default();
            inheritance.refuse(&reason);
            return Err(failure);
        }
        (Err(failure), None) => return Err(failure),
    };
    daemon.serve_until_stopped(&config).await
}

/// Connects to the process being upgraded and reads what it hands over; a
/// hello this binary cannot read is refused (the old process serves on).
fn take_over_from(path: &std::path::Path) -> Result<Inheritance, Failure> {
    Inheritance::receive(path).map_err(|(error, stream)| {
        let reason = format!("cannot take over from the running cutover: {error}");
        if let Some(stream) = stream {
            handover::refuse(&stream, &reason);
        }
        Failure::failed(reason)
    })
}

/// A started daemon: every part serving.
struct Daemon {
    engine: Engine,
    router: Router,
    proxies: Proxies,
    stop: watch::Sender<bool>,
    admin_task: JoinHandle<Result<(), cutover_api::ApiError>>,
    keep_admin_file: KeepSocketFile,
    upgrader: Upgrader,
    upgrade_asks: mpsc::Receiver<UpgradeAsk>,
    /// Where the connections handed over by the old process go, per listener.
    intakes: HashMap<SocketAddr, IntakeSender>,
}

async fn start(
    config: &Config,
    mut inheritance: Option<&mut Inheritance>,
) -> Result<Daemon, Failure> {
    let bound = bind(config, inheritance.as_deref_mut()).await?;
    let handed = inheritance
        .as_ref()
        .map(|i| handover::handed_releases(&i.apps))
        .unwrap_or_default();
    let engine = Engine::start_adopting(
        Arc::new(config.clone()),
        bound.store.clone(),
        bound.router.clone(),
        &handed,
    )
    .await
    .map_err(|e| Failure::failed(format!("starting the deployment engine failed: {e}")))?;
    wait_for_recovery(config, &engine).await;
    serve_bound(config, bound, engine)
}

/// Every socket and file the daemon needs, bound or adopted before the
/// engine recovers anything: a port clash stops the start before anything
/// is touched.
struct Bound {
    admin: AdminSocket,
    store: Store,
    router: Router,
    listeners: Listeners,
    admin_tcp: Option<cutover_api::AdminTcp>,
    webhooks: Option<cutover_webhook::Receiver>,
}

async fn bind(
    config: &Config,
    mut inheritance: Option<&mut Inheritance>,
) -> Result<Bound, Failure> {
    let admin = match inheritance.as_mut().and_then(|i| i.take_admin()) {
        Some(listener) => AdminSocket::adopt(listener, &config.admin.socket),
        None => AdminSocket::bind(&config.admin.socket).await,
    }
    .map_err(Failure::failed)?;
    let store = open_store(config).await?;
    let router = route_table(config);
    let mut sources = ListenerSources {
        inheritance,
        activated: systemd::activated_listeners(),
    };
    let listeners = Listeners::bind(config, &mut sources).await?;
    let admin_tcp = bind_admin_tcp(config, &mut sources).await?;
    let webhooks = match &config.webhook {
        Some(webhook) => {
            let inherited = webhook
                .listen
                .and_then(|listen| sources.take(ListenerKind::Webhook, listen));
            Some(
                cutover_webhook::Receiver::bind_or_adopt(
                    Arc::new(config.clone()),
                    store.clone(),
                    inherited,
                )
                .await
                .map_err(Failure::failed)?,
            )
        }
        None => None,
    };
    Ok(Bound {
        admin,
        store,
        router,
        listeners,
        admin_tcp,
        webhooks,
    })
}

/// Serves what was bound, in order: the webhook prefix is routed before
/// the proxy takes its first request; ACME orders go out once the
/// listeners answer the challenges; the admin API comes last.
fn serve_bound(config: &Config, bound: Bound, engine: Engine) -> Result<Daemon, Failure> {
    let Bound {
        admin,
        store,
        router,
        listeners,
        admin_tcp,
        webhooks,
    } = bound;
    let mut handover_fds = listeners.handover_fds()?;
    let (stop, stopped) = watch::channel(false);
    let handoff = Handoff::default();
    let acme_handles = (listeners.tls.clone(), listeners.acme_http01.clone());
    let webhook_line = match webhooks {
        Some(receiver) => {
            handover_fds.extend(webhook_fd(config, &receiver)?);
            serve_webhooks(receiver, &engine, store, &router, config, &stopped)
        }
        None => String::new(),
    };
    let (proxies, intakes) = listeners.serve(config, &router, &stopped, &handoff)?;
    let acme = crate::certs::start_acme(config, acme_handles)?;
    let socket = admin.path().to_path_buf();
    let (upgrades, upgrade_asks) = mpsc::channel(4);
    let admin_line = match admin_tcp {
        Some(admin_tcp) => {
            handover_fds.push(admin_tcp_fd(config, &admin_tcp)?);
            let admin_tcp = admin_tcp.with_certs(acme.clone());
            serve_admin_tcp(admin_tcp, &engine, upgrades.clone(), &stopped)
        }
        None => String::new(),
    };
    let upgrader = Upgrader {
        state_dir: config.state_dir.clone(),
        listeners: handover_fds,
        admin: admin
            .listener_fd()
            .map_err(|e| Failure::failed(format!("admin socket: {e}")))?,
        engine: engine.clone(),
    };
    let keep_admin_file = admin.keep_file();
    let admin_task = tokio::spawn(
        admin
            .with_upgrades(upgrades)
            .with_certs(acme)
            .serve(engine.clone(), stop_signal(&stopped)),
    );
    let lines = format!("{webhook_line}{admin_line}");
    announce(config, &proxies, &lines, &socket);
    Ok(Daemon {
        engine,
        router,
        proxies,
        stop,
        admin_task,
        keep_admin_file,
        upgrader,
        upgrade_asks,
        intakes,
    })
}

/// After a restart, new connections wait in the listen backlog (they are
/// not accepted yet) until the live releases passed their health gates:
/// better a short wait than a 503. Bounded by the longest deploy_timeout.
async fn wait_for_recovery(config: &Config, engine: &Engine) {
    let bound = config
        .apps
        .iter()
        .map(|app| app.health.deploy_timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    if !engine.wait_recovered(bound).await {
        tracing::warn!("a live release is still being checked after {bound:?}; serving meanwhile");
    }
}

/// `[admin] listen`: tokens, certificate and socket before recovery, so a
/// bad token file or a port in use stops the start before anything is
/// touched.
async fn bind_admin_tcp(
    config: &Config,
    sources: &mut ListenerSources<'_>,
) -> Result<Option<cutover_api::AdminTcp>, Failure> {
    let Some(remote) = &config.admin.remote else {
        return Ok(None);
    };
    let inherited = sources.take(ListenerKind::Admin, remote.listen);
    cutover_api::AdminTcp::bind(remote, inherited)
        .await
        .map(Some)
        .map_err(Failure::failed)
}

fn admin_tcp_fd(
    config: &Config,
    admin: &cutover_api::AdminTcp,
) -> Result<(ListenerTag, OwnedFd), Failure> {
    let configured = config.admin.remote.as_ref().map(|r| r.listen);
    let fd = admin
        .listener_fd()
        .map_err(|e| Failure::failed(format!("admin listener: {e}")))?;
    match (configured, admin.local_addr()) {
        (Some(configured), Some(local)) => Ok((
            ListenerTag {
                kind: ListenerKind::Admin,
                configured,
                local,
            },
            fd,
        )),
        _ => Err(Failure::failed("the admin listener has no address")),
    }
}

/// Serves the admin API over TCP until the daemon stops; returns the
/// startup line's part.
fn serve_admin_tcp(
    admin: cutover_api::AdminTcp,
    engine: &Engine,
    upgrades: cutover_api::Upgrades,
    stopped: &watch::Receiver<bool>,
) -> String {
    let line = format!(", admin API on {}", admin.url());
    let serving = admin
        .with_upgrades(upgrades)
        .serve(engine.clone(), stop_signal(stopped));
    tokio::spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "the admin API over TCP stopped");
        }
    });
    line
}

/// The webhook receiver's own listener, for an upgrade; none when the
/// proxy's listeners take its requests (the new process binds a new one).
fn webhook_fd(
    config: &Config,
    receiver: &cutover_webhook::Receiver,
) -> Result<Option<(ListenerTag, OwnedFd)>, Failure> {
    let Some(configured) = config.webhook.as_ref().and_then(|w| w.listen) else {
        return Ok(None);
    };
    let configured = Some(configured);
    let local = receiver.local_addr();
    let fd = receiver
        .listener_fd()
        .map_err(|e| Failure::failed(format!("webhook listener: {e}")))?;
    match (configured, local) {
        (Some(configured), Some(local)) => Ok(Some((
            ListenerTag {
                kind: ListenerKind::Webhook,
                configured,
                local,
            },
            fd,
        ))),
        _ => Err(Failure::failed("the webhook listener has no address")),
    }
}

/// How the daemon's serving ended.
enum Ended {
    Signal(&'static str),
    Admin(AdminEnded),
    Upgraded(HandedOver),
}

impl Daemon {
    /// Serves until SIGTERM/SIGINT, the admin API failing, or an upgrade
    /// (`cutover upgrade`, SIGUSR2) that another process took over; then
    /// stops as each asks.
    async fn serve_until_stopped(mut self, config: &Config) -> Outcome {
        let ended = self.wait_for_the_end().await;
        let admin_ended = match ended {
            Ended::Signal(signal) => {
                tracing::info!("{signal} received; shutting down (releases keep running)");
                None
            }
            Ended::Admin(ended) => Some(ended),
            Ended::Upgraded(handed) => {
                return self.hand_over_and_drain(config, handed).await;
            }
        };
        let _ = self.stop.send(true);
        shut_down(config, self.proxies.tasks, &self.engine).await;
        admin_outcome(admin_ended, self.admin_task).await
    }

    async fn wait_for_the_end(&mut self) -> Ended {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr2 = signal(SignalKind::user_defined2()).ok();
        let mut terminate = std::pin::pin!(terminate_signal());
        loop {
            tokio::select! {
                signal = &mut terminate => return Ended::Signal(signal),
                ended = &mut self.admin_task => return Ended::Admin(ended),
                Some(ask) = self.upgrade_asks.recv() => {
                    let (report, handed) = self.upgrade(ask.binary).await;
                    let _ = ask.reply.send(report);
                    if let Some(handed) = handed {
                        return Ended::Upgraded(handed);
                    }
                }
                Some(()) = async { usr2.as_mut()?.recv().await } => {
                    tracing::info!("SIGUSR2 received; upgrading to this executable as it is on disk");
                    if let (_, Some(handed)) = self.upgrade(None).await {
                        return Ended::Upgraded(handed);
                    }
                }
            }
        }
    }

    /// One upgrade attempt; every step is logged and reported.
    async fn upgrade(&self, binary: Option<PathBuf>) -> (UpgradeReport, Option<HandedOver>) {
        let mut steps = Vec::new();
        let result = self.upgrader.upgrade(binary, &mut steps).await;
        for step in &steps {
            tracing::info!("upgrade: {step}");
        }
        match result {
            Ok(handed) => {
                let report = UpgradeReport {
                    steps,
                    pid: Some(handed.pid),
                    error: None,
                    busy: false,
                };
                (report, Some(handed))
            }
            Err(failed) => {
                let why = failed.why;
                tracing::error!("upgrade failed: {why}; this process keeps serving");
                let report = UpgradeReport {
                    steps,
                    pid: Some(std::process::id()),
                    error: Some(why),
                    busy: failed.busy,
                };
                (report, None)
            }
        }
    }

    /// After the new process took over: stop accepting, pass each idle
    /// connection to it at a request boundary, finish requests, streams and
    /// tunnels in flight (within the drain bound), leave the admin socket
    /// file to the new process, and exit.
    async fn hand_over_and_drain(mut self, config: &Config, handed: HandedOver) -> Outcome {
        self.keep_admin_file.keep();
        let (connections, handed_conns) = std::sync::mpsc::channel();
        self.proxies.handoff.arm(connections);
        let forwarding = handover::forward_connections(handed.stream, handed_conns);
        let _ = self.stop.send(true);
        // The new process holds the listeners it kept. One its config
        // dropped must close once this process stops accepting, not when
        // it exits: until then the kernel would queue connections on it
        // that nobody accepts.
        drop(std::mem::take(&mut self.upgrader.listeners));
        let grace = drain_grace(config);
        let tunnels = wait_for_tunnels(self.router.clone(), config, grace);
        tokio::join!(shut_down(config, self.proxies.tasks, &self.engine), tunnels);
        // Every listener stopped: no connection is handed over any more.
        self.proxies.handoff.disarm();
        let passed = tokio::task::spawn_blocking(move || forwarding.join().unwrap_or(0))
            .await
            .unwrap_or(0);
        tracing::info!(
            "handed over to pid {} ({passed} idle connection(s) passed on); this process exits",
            handed.pid
        );
        admin_outcome(None, self.admin_task).await
    }
}

/// Waits (up to `grace`) until no request, stream or upgraded connection
/// (WebSocket) of this process is left on any live release.
async fn wait_for_tunnels(router: Router, config: &Config, grace: Duration) {
    // Tunnels end on their own; nothing signals the last one, so this
    // looks every so often. Only the exit of a drained process waits here.
    const LOOK: Duration = Duration::from_millis(100);
    let busy = || {
        config
            .apps
            .iter()
            .filter_map(|app| router.live(&app.name))
            .map(|upstream| upstream.in_flight())
            .sum::<usize>()
    };
    let waited = tokio::time::timeout(grace, async {
        while busy() > 0 {
            tokio::time::sleep(LOOK).await;
        }
    });
    if waited.await.is_err() {
        tracing::warn!(
            "{} request(s) or tunnel(s) still open after {grace:?}; closing them",
            busy()
        );
    }
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
    let grace = drain_grace(config);
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

/// How long requests in flight may take after the stop: the longest
/// drain_timeout, at least 5 s.
fn drain_grace(config: &Config) -> Duration {
    config
        .apps
        .iter()
        .map(|app| app.drain_timeout)
        .max()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(5))
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
    let router = Router::with_paths(
        config
            .apps
            .iter()
            .map(|app| cutover_proxy::AppRoutes {
                name: app.name.clone(),
                hosts: app.hosts.clone(),
                paths: app.paths.clone(),
            })
            .collect(),
    );
    for app in &config.apps {
        if app.upstream_protocol == cutover_config::UpstreamProtocol::H2c {
            router.set_upstream_protocol(&app.name, cutover_proxy::UpstreamProtocol::H2c);
        }
    }
    router
}

/// Where listening sockets come from besides binding: the process being
/// upgraded (matched by config entry) or systemd socket activation
/// (matched by address).
struct ListenerSources<'a> {
    inheritance: Option<&'a mut Inheritance>,
    activated: Vec<std::net::TcpListener>,
}

impl ListenerSources<'_> {
    fn take(
        &mut self,
        kind: ListenerKind,
        configured: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        if let Some(inherited) = self
            .inheritance
            .as_mut()
            .and_then(|i| i.take_listener(kind, configured))
        {
            return Some(inherited);
        }
        let at = self
            .activated
            .iter()
            .position(|l| l.local_addr().is_ok_and(|local| local == configured))?;
        tracing::info!(%configured, "listening on the socket systemd passed");
        Some(self.activated.remove(at))
    }
}

/// The proxy's listeners, bound before recovery so a port clash stops the
/// start before anything is touched.
struct Listeners {
    plain: Vec<(ListenerTag, TcpListener)>,
    secure: Vec<(ListenerTag, TcpListener)>,
    tls: Option<cutover_proxy::Tls>,
    /// ACME http-01 tokens answered on the plain listeners.
    acme_http01: Option<cutover_proxy::Http01Answers>,
}

/// The proxy listeners serving, and how to name them.
struct Proxies {
    tasks: Vec<JoinHandle<()>>,
    /// What serves client traffic, for the startup line.
    serving: String,
    /// Reloads changed certificate files while the daemon runs.
    _certificate_watch: Option<JoinHandle<()>>,
    /// Armed by an upgrade: idle connections go to the new process.
    handoff: Handoff,
    /// The proxy's threads, kept until the process exits: upgraded
    /// connections (WebSockets) run on them after their listener stopped.
    _workers: Option<cutover_proxy::Workers>,
}

impl Listeners {
    async fn bind(
        config: &Config,
        sources: &mut ListenerSources<'_>,
    ) -> Result<Listeners, Failure> {
        // In nginx front mode nginx takes the client traffic: no listener here.
        let listen = match &config.proxy.nginx {
            Some(_) => &[][..],
            None => &config.proxy.listen[..],
        };
        let plain = bind_all(listen, ListenerKind::Listen, sources).await?;
        // HTTPS: certificates first, so that a bad file stops the start here.
        let tls = load_tls(config)?;
        let secure = match tls {
            Some(_) => bind_all(&config.proxy.tls.listen, ListenerKind::TlsListen, sources).await?,
            None => Vec::new(),
        };
        let acme_http01 = config
            .proxy
            .acme
            .as_ref()
            .map(|_| cutover_proxy::Http01Answers::default());
        Ok(Listeners {
            plain,
            secure,
            tls,
            acme_http01,
        })
    }

    /// Second descriptors of every listening socket, for an upgrade.
    fn handover_fds(&self) -> Result<Vec<(ListenerTag, OwnedFd)>, Failure> {
        self.plain
            .iter()
            .chain(&self.secure)
            .map(|(tag, listener)| {
                let fd = listener.as_fd().try_clone_to_owned().map_err(|e| {
                    Failure::failed(format!(
                        "cannot keep the listener {} for upgrades: {e}",
                        tag.local
                    ))
                })?;
                Ok((tag.clone(), fd))
            })
            .collect()
    }

    fn serve(
        self,
        config: &Config,
        router: &Router,
        stopped: &watch::Receiver<bool>,
        handoff: &Handoff,
    ) -> Result<(Proxies, HashMap<SocketAddr, IntakeSender>), Failure> {
        let trusted_proxies = cutover_proxy::TrustedProxies::new(
            config
                .proxy
                .trusted_proxies
                .iter()
                .filter_map(|block| cutover_proxy::Cidr::new(block.addr, block.prefix)),
        );
        let settings = ProxySettings {
            max_body: config.proxy.max_body,
            header_read_timeout: config.proxy.header_read_timeout,
            idle_timeout: config.proxy.idle_timeout,
            upstream_connect_timeout: config.proxy.upstream_connect_timeout,
            upstream_response_timeout: config.proxy.upstream_response_timeout,
            trusted_proxies,
        };
        let mut options = proxy_options(config)?;
        options.handoff = Some(handoff.clone());
        options.admission = Some(proxy_admission(config, trusted_proxies));
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
            .map(|(tag, _)| tag.local.port())
            .filter(|_| config.proxy.tls.redirect_http);
        let plain = self.plain.into_iter().map(|listener| {
            let options = cutover_proxy::ServeOptions {
                redirect_https,
                acme_http01: self.acme_http01.clone(),
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
        let mut intakes = HashMap::new();
        for ((tag, listener), options) in plain.chain(secure) {
            let local = tag.local;
            let (intake_sender, intake) = cutover_proxy::intake();
            intakes.insert(local, intake_sender);
            let serving = cutover_proxy::serve_adopting(
                listener,
                router.clone(),
                settings,
                options,
                intake,
                stop_signal(stopped),
            );
            tasks.push(tokio::spawn(async move {
                if let Err(error) = serving.await {
                    tracing::error!(%local, %error, "a proxy listener stopped");
                }
            }));
        }
        let proxies = Proxies {
            tasks,
            serving,
            _certificate_watch: certificate_watch,
            handoff: handoff.clone(),
            _workers: options.workers.clone(),
        };
        Ok((proxies, intakes))
    }

    fn describe(&self, config: &Config, options: &cutover_proxy::ServeOptions) -> String {
        let bound: Vec<String> = self
            .plain
            .iter()
            .map(|(tag, _)| tag.local.to_string())
            .chain(
                self.secure
                    .iter()
                    .map(|(tag, _)| format!("https://{}", tag.local)),
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

/// Each configured address: taken over (upgrade), passed by systemd, or
/// bound now.
async fn bind_all(
    addrs: &[SocketAddr],
    kind: ListenerKind,
    sources: &mut ListenerSources<'_>,
) -> Result<Vec<(ListenerTag, TcpListener)>, Failure> {
    let key = match kind {
        ListenerKind::Listen => "[proxy] listen",
        ListenerKind::TlsListen => "[proxy] tls_listen",
        ListenerKind::Webhook => "[webhook] listen",
        ListenerKind::Admin => "[admin] listen",
    };
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let failed =
            |e: std::io::Error| Failure::failed(format!("cannot listen on {addr} ({key}): {e}"));
        let listener = match sources.take(kind, *addr) {
            Some(listener) => listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(failed)?,
            None => TcpListener::bind(addr).await.map_err(failed)?,
        };
        let local = listener.local_addr().unwrap_or(*addr);
        let tag = ListenerTag {
            kind,
            configured: *addr,
            local,
        };
        listeners.push((tag, listener));
    }
    Ok(listeners)
}

/// Starts the webhook dispatcher and receiver; without a listener of its
/// own, the proxy's listeners forward `path_prefix` to it. Returns the
/// startup line's part.
fn serve_webhooks(
    receiver: cutover_webhook::Receiver,
    engine: &Engine,
    store: Store,
    router: &Router,
    config: &Config,
    stopped: &watch::Receiver<bool>,
) -> String {
    let line = match (config.webhook.as_ref(), receiver.local_addr()) {
        (Some(webhook), Some(addr)) if webhook.listen.is_none() => {
            let upstream = cutover_proxy::Upstream::new("_cutover", "webhook", "receiver", addr);
            router.set_reserved_path(&webhook.path_prefix, Some(upstream));
            format!(", webhooks on the proxy under {}/", webhook.path_prefix)
        }
        (_, Some(addr)) => format!(", webhooks on {addr}"),
        (_, None) => String::new(),
    };
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
    // Once: on stdout for a person, or as a log record with JSON logs
    // (stdout and stderr often end up in the same journal).
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("{line}");
    } else {
        println!("{}", cutover_config::display::escape(&line));
    }
}

/// Set when `cutover serve` logs JSON (`--log-format json` or `--json`).
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
        acme_http01: None,
        workers: None,
        handoff: None,
        admission: None,
    })
}

/// Raises the soft limit on open files to the hard limit (as nginx's
/// `worker_rlimit_nofile`): every client connection holds a descriptor,
/// and most hold an upstream one too.
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => tracing::warn!(error = %e, "cannot raise the limit on open files"),
        }
    }
    tracing::info!(
        nofile = limit
            .current
            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        "limit on open files"
    );
}

/// The proxy's connection limits (`[proxy] max_connections`, by default
/// derived from the limit on open files, and `max_connections_per_client`),
/// shared by every listener.
fn proxy_admission(
    config: &Config,
    trusted: cutover_proxy::TrustedProxies,
) -> cutover_proxy::Admission {
    let max = config.proxy.max_connections.unwrap_or_else(|| {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        // No limit on open files: the kernel's own (fs.nr_open) still binds.
        cutover_proxy::Admission::default_max_connections(nofile.unwrap_or(1 << 20))
    });
    tracing::info!(
        max_connections = max,
        max_connections_per_client = config.proxy.max_connections_per_client,
        "client connection limits"
    );
    cutover_proxy::Admission::new(max, config.proxy.max_connections_per_client, trusted)
}

/// The proxy's worker threads (`[proxy] workers`, one per CPU by default;
/// `[proxy] io`).
fn proxy_workers(config: &Config) -> Result<cutover_proxy::Workers, Failure> {
    let count = config
        .proxy
        .workers
        .unwrap_or_else(cutover_proxy::workers::per_cpu);
    let io = match config.proxy.io {
        cutover_config::ProxyIo::Auto => cutover_proxy::Io::Auto,
        cutover_config::ProxyIo::Uring => cutover_proxy::Io::Uring,
        cutover_config::ProxyIo::Epoll => cutover_proxy::Io::Epoll,
    };
    let workers = cutover_proxy::Workers::start_with(count, io).map_err(|e| {
        Failure::failed(format!(
            "cannot start the proxy's worker threads: {e}{}",
            if io == cutover_proxy::Io::Uring {
                " (set [proxy] io = \"epoll\" or \"auto\" where the kernel refuses io_uring)"
            } else {
                ""
            }
        ))
    })?;
    tracing::info!(workers = workers.count(), io = ?workers.io(), "proxy workers started");
    Ok(workers)
}

/// How often the certificate files are checked for changes.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The HTTPS listeners' certificates (`[[proxy.tls]]`), if any; a file that
/// is missing or unusable stops the start with an error naming it.
fn load_tls(config: &Config) -> Result<Option<cutover_proxy::Tls>, Failure> {
    let acme = config.proxy.acme.is_some();
    if (config.proxy.tls.certs.is_empty() && !acme) || config.proxy.nginx.is_some() {
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
    let load = match acme {
        true => cutover_proxy::Tls::with_acme,
        false => cutover_proxy::Tls::load,
    };
    let tls = load(files).map_err(|e| {
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
    JSON_LOGS.store(
        format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
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
    // No colours: log lines carry text from outside (refs, release
    // output), and every control character in them is shown escaped.
    let json = format == LogFormat::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || EscapingStderr { json })
        .with_ansi(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some((value, error)) = bad_filter {
        tracing::warn!("RUST_LOG={value:?} is not a valid filter ({error}); logging at info");
    }
}

/// stderr for the daemon's log, through the one escaping rule
/// (`cutover_config::display`): control and bidi characters in a record
/// are written as escapes (JSON escapes in JSON records, which decode to
/// the same text). Each record arrives in one write.
struct EscapingStderr {
    json: bool,
}

impl std::io::Write for EscapingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let escaped = match self.json {
            true => cutover_config::display::escape_json(&text),
            false => cutover_config::display::escape(&text),
        };
        std::io::stderr().write_all(escaped.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
