//! The engine handle: what the admin API (and tests) call.

use crate::actor::{self, ActorHandle, Command, Lifecycle};
use crate::blocking::blocking;
use crate::context::AppContext;
use crate::error::EngineError;
use crate::events::EventBus;
use crate::front::Front;
use crate::model::{AppStatus, DeployRequest, DeploymentDetail, SourceRequest};
use crate::recovery::AppHandover;
use crate::{pipeline, recovery};
use cutover_config::git_ref::{split_ref, validate_commit};
use cutover_config::{AppConfig, Config, DriverConfig, Slot, SourceConfig};
use cutover_drivers::docker::DockerDriver;
use cutover_drivers::process::ProcessDriver;
use cutover_drivers::swarm::SwarmDriver;
use cutover_drivers::Driver;
use cutover_proxy::Router;
use cutover_store::{AppRecord, DeploymentRecord, DeploymentSource, EventRecord, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Shutdown always allows at least this long: store writes, a hook, and
/// stopping a release whose stop_timeout is short all fit.
const SHUTDOWN_FLOOR: Duration = Duration::from_secs(10);

/// How a shutdown of the engine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every app's actor stopped at a safe point.
    Complete { took: Duration },
    /// Some deployment was still finishing when the bound ran out; the
    /// next start's recovery records and cleans it up.
    TimedOut { bound: Duration },
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) events: EventBus,
    pub(crate) apps: BTreeMap<String, ActorHandle>,
    /// Where traffic enters (release groups switch through it).
    pub(crate) front: Front,
    /// Release groups' deployments in progress.
    pub(crate) groups: crate::groups::Groups,
    /// Broadcast to every actor: stop at a safe point.
    shutdown: watch::Sender<bool>,
    /// Closes once every actor has stopped (each holds a sender).
    stopped: Mutex<Option<mpsc::Receiver<()>>>,
    /// Set while an upgrade hands the engine over (see [`Engine::freeze`]).
    pub(crate) frozen: Arc<AtomicBool>,
    /// Recovery health gates still running (see [`Engine::wait_recovered`]).
    gates: Arc<watch::Sender<usize>>,
}

impl Engine {
    /// Recovers every app's state (adopting the live release, failing
    /// interrupted deployments, stopping orphans) and starts the actors.
    /// Live routes are published as soon as each live release passes a
    /// health check: on `router`, or, with `[proxy] mode = "nginx"`, in
    /// nginx (then `router` only keeps track of the live releases).
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        router: Router,
    ) -> Result<Engine, EngineError> {
        Engine::start_adopting(config, store, router, &[]).await
    }

    /// [`Engine::start`] in the process that takes over from another one (an
    /// upgrade): a recorded live release that `handed` names (same runtime)
    /// and that still runs is routed at once, without a health gate — it
    /// served a moment ago — and monitored as usual from then on.
    pub async fn start_adopting(
        config: Arc<Config>,
        store: Store,
        router: Router,
        handed: &[AppHandover],
    ) -> Result<Engine, EngineError> {
        let events = EventBus::new();
        let front = match &config.proxy.nginx {
            Some(nginx) => {
                let advertise = config
                    .apps
                    .iter()
                    .filter_map(|app| Some((app.name.clone(), app.driver.advertise()?)))
                    .collect();
                Front::nginx(
                    cutover_nginx::Nginx::new(nginx.clone()),
                    router.clone(),
                    advertise,
                )
            }
            None => Front::Builtin(router.clone()),
        };
        let (shutdown, shutdown_signal) = watch::channel(false);
        let (stopped_sender, stopped) = mpsc::channel(1);
        let frozen = Arc::new(AtomicBool::new(false));
        let gates = Arc::new(watch::Sender::new(0));
        // Before any app: a group deployment cut short is settled for all
        // of its members at once (all switched, or none).
        crate::groups::recover(&store, &events).await?;
        let mut apps = BTreeMap::new();
        for app in &config.apps {
            let store_for_app = store.clone();
            let name = app.name.clone();
            tokio::task::spawn_blocking(move || store_for_app.ensure_app(&name))
                .await
                .map_err(|_| EngineError::Stopped)??;
            let context = app_context(&config, app, &store, &front, &events);
            let handed_live = handed
                .iter()
                .find(|h| h.app == app.name)
                .and_then(|h| h.live.as_ref());
            let recovered = recovery::recover(&context, handed_live).await?;
            let lifecycle = Lifecycle {
                shutdown: shutdown_signal.clone(),
                stopped: stopped_sender.clone(),
                frozen: frozen.clone(),
                gates: gates.clone(),
            };
            apps.insert(
                app.name.clone(),
                actor::spawn(context, recovered, lifecycle),
            );
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                store,
                events,
                apps,
                front,
                groups: crate::groups::Groups::default(),
                shutdown,
                stopped: Mutex::new(Some(stopped)),
                frozen,
                gates,
            }),
        })
    }

    /// Waits (up to `bound`) until every recovered live release passed or
    /// failed its health gate, so that a restarted daemon can leave new
    /// connections in the listen backlog instead of answering 503 while it
    /// checks. True if all gates ended in time.
    pub async fn wait_recovered(&self, bound: Duration) -> bool {
        let mut pending = self.inner.gates.subscribe();
        let ended = tokio::time::timeout(bound, pending.wait_for(|n| *n == 0)).await;
        ended.is_ok()
    }

    /// For an upgrade: from now on no deployment starts, is promoted or
    /// aborted (requests are refused) and no `keep_old` standby is stopped;
    /// answers what every app hands over. A deployment awaiting promotion
    /// is suspended (its release runs on; the new process, or a thaw, goes
    /// on awaiting it). Refused, and thawed again, while any other
    /// deployment runs or is queued: the upgrade then waits for nothing and
    /// says which one to finish or abort.
    pub async fn freeze(&self) -> Result<Vec<AppHandover>, EngineError> {
        self.inner.frozen.store(true, Ordering::SeqCst);
        let mut handed = Vec::with_capacity(self.inner.apps.len());
        for name in self.inner.apps.keys() {
            match self.ask(name, |reply| Command::Handover { reply }).await {
                Ok(app) => handed.push(app),
                Err(refused) => {
                    self.thaw().await;
                    return Err(refused);
                }
            }
        }
        Ok(handed)
    }

    /// Deployments may start again (the upgrade did not happen); one that
    /// was suspended while awaiting promotion goes on awaiting it.
    pub async fn thaw(&self) {
        self.inner.frozen.store(false, Ordering::SeqCst);
        for actor in self.inner.apps.values() {
            let _ = actor.commands.send(Command::Thaw).await;
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn actor(&self, app: &str) -> Result<&ActorHandle, EngineError> {
        self.inner
            .apps
            .get(app)
            .ok_or_else(|| EngineError::UnknownApp(app.to_string()))
    }

    pub(crate) async fn ask<T>(
        &self,
        app: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.actor(app)?
            .commands
            .send(make(reply))
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Queues a deployment; returns it at once (state `queued` or later).
    pub async fn deploy(
        &self,
        app: &str,
        request: DeployRequest,
    ) -> Result<DeploymentRecord, EngineError> {
        validate_version(&request.version)?;
        self.ask(app, |reply| Command::Deploy { request, reply })
            .await
    }

    /// Queues a deployment of the release that was live before the current one.
    pub async fn rollback(&self, app: &str) -> Result<DeploymentRecord, EngineError> {
        self.ask(app, |reply| Command::Rollback { reply }).await
    }

    /// Aborts the running deployment if it has not switched yet.
    pub async fn abort(&self, app: &str) -> Result<DeploymentRecord, EngineError> {
        self.ask(app, |reply| Command::Abort { reply }).await
    }

    /// Promotes a deployment waiting for promotion.
    pub async fn promote(&self, app: &str) -> Result<DeploymentRecord, EngineError> {
        self.ask(app, |reply| Command::Promote { reply }).await
    }

    pub async fn status(&self) -> Result<Vec<AppStatus>, EngineError> {
        let mut all = Vec::with_capacity(self.inner.apps.len());
        for name in self.inner.apps.keys() {
            all.push(self.app_status(name).await?);
        }
        Ok(all)
    }

    pub async fn app_status(&self, app: &str) -> Result<AppStatus, EngineError> {
        self.ask(app, |reply| Command::Status { reply }).await
    }

    /// Deployments of the app, newest first.
    pub async fn history(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, EngineError> {
        self.actor(app)?;
        let store = self.inner.store.clone();
        let app = app.to_string();
        blocking(move || store.deployments(&app, limit)).await
    }

    pub async fn deployment(&self, id: i64) -> Result<DeploymentDetail, EngineError> {
        let store = self.inner.store.clone();
        blocking(move || {
            let deployment = store.deployment(id)?;
            let events = store.events(id, 0)?;
            Ok(deployment.map(|deployment| DeploymentDetail { deployment, events }))
        })
        .await?
        .ok_or(EngineError::UnknownDeployment(id))
    }

    /// Follows a deployment's events: those already stored, then new ones as
    /// they happen; the channel closes after the terminal event.
    pub async fn follow(&self, id: i64) -> Result<mpsc::Receiver<EventRecord>, EngineError> {
        self.inner.events.follow(&self.inner.store, id).await
    }

    /// App-level events (the live release turning unhealthy or healthy
    /// again) of every app; filter by `AppEvent::app`.
    pub fn app_events(
        &self,
        app: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<crate::events::AppEvent>, EngineError> {
        self.actor(app)?;
        Ok(self.inner.events.subscribe_apps())
    }

    /// The log file of the app's release in `slot` (the live slot by default).
    pub async fn log_path(&self, app: &str, slot: Option<Slot>) -> Result<PathBuf, EngineError> {
        self.actor(app)?;
        let store = self.inner.store.clone();
        let name = app.to_string();
        let record: Option<AppRecord> = blocking(move || store.app(&name)).await?;
        let record = record.ok_or_else(|| EngineError::UnknownApp(app.to_string()))?;
        let slot_name = match slot {
            Some(slot) => slot.as_str().to_string(),
            None => record.live_slot.clone().ok_or_else(|| {
                EngineError::Conflict(format!(
                    "`{app}` has no live release; name a slot with --slot blue|green"
                ))
            })?,
        };
        record
            .slot(&slot_name)
            .and_then(|s| s.log_path.clone())
            .map(PathBuf::from)
            .ok_or_else(|| {
                EngineError::Conflict(format!(
                    "slot {slot_name} of `{app}` has no release log yet"
                ))
            })
    }

    /// How long [`Engine::shutdown`] waits at most: the largest of
    /// a floor of 10 s and, over the apps, drain_timeout + the driver's
    /// stop_timeout + the hook timeout for each configured hook. That is
    /// what the slowest safe point takes: a committed deployment runs its
    /// `after_switch` hooks, drains the old release and stops it; an
    /// interrupted one finishes a running `before_switch` hook, drains the
    /// new release (when a shift or verification had sent traffic to it),
    /// stops it and runs `on_failure`. Health checks, promotion waits,
    /// verification windows and builds are interrupted, not waited for.
    pub fn shutdown_bound(&self) -> Duration {
        shutdown_bound(&self.inner.config)
    }

    /// Stops every app's actor at a safe point and waits for all of them,
    /// up to [`Engine::shutdown_bound`]: waiting deployments are recorded
    /// as aborted, a running one is interrupted before its commit (its new
    /// release stopped, the live one untouched) or finishes after it; one
    /// awaiting promotion stays so (the next start goes on awaiting it).
    /// The releases keep serving while cutover is down.
    pub async fn shutdown(&self) -> ShutdownOutcome {
        let began = Instant::now();
        let bound = self.shutdown_bound();
        let _ = self.inner.shutdown.send(true);
        let stopped = self.inner.stopped.lock().ok().and_then(|mut s| s.take());
        let Some(mut stopped) = stopped else {
            return ShutdownOutcome::Complete {
                took: Duration::ZERO,
            };
        };
        // recv() yields None once the last actor dropped its sender.
        match tokio::time::timeout(bound, stopped.recv()).await {
            Ok(_) => ShutdownOutcome::Complete {
                took: began.elapsed(),
            },
            Err(_) => ShutdownOutcome::TimedOut { bound },
        }
    }

    /// Queues a deployment that builds `request.commit` of the app's
    /// `[app.source]` and deploys the result. Returns at once.
    pub async fn deploy_source(
        &self,
        app: &str,
        request: SourceRequest,
    ) -> Result<DeploymentRecord, EngineError> {
        self.source_of(app)?;
        let (kind, name) = split_ref(&request.git_ref).map_err(EngineError::BadRequest)?;
        let commit = validate_commit(&request.commit).map_err(EngineError::BadRequest)?;
        let version = pipeline::version_for(kind, name, &commit);
        let source = DeploymentSource {
            provider: request.provider,
            delivery: request.delivery,
            git_ref: request.git_ref,
            commit,
            build: Some("queued".to_string()),
        };
        let request = DeployRequest {
            version,
            trigger: request.trigger,
            force: request.force,
            source: Some(source),
        };
        self.deploy(app, request).await
    }

    /// `cutover deploy APP --ref REF`: asks the repository where `reference`
    /// (a branch or tag name, or a full ref) points, then queues the same
    /// build and deployment a webhook would.
    pub async fn deploy_ref(
        &self,
        app: &str,
        reference: &str,
        force: bool,
        trigger: &str,
    ) -> Result<DeploymentRecord, EngineError> {
        let source = self.source_of(app)?.clone();
        let (git_ref, commit) = pipeline::resolve_ref(&source, reference).await?;
        let request = SourceRequest {
            provider: "cli".to_string(),
            delivery: None,
            git_ref,
            commit,
            force,
            trigger: trigger.to_string(),
        };
        self.deploy_source(app, request).await
    }

    fn source_of(&self, app: &str) -> Result<&SourceConfig, EngineError> {
        let config = self
            .config()
            .app(app)
            .ok_or_else(|| EngineError::UnknownApp(app.to_string()))?;
        config.source.as_ref().ok_or_else(|| {
            EngineError::BadRequest(format!(
                "app `{app}` has no [app.source] (repo, build, artifact), so it cannot be deployed from a git ref; deploy a version with --version"
            ))
        })
    }
}

fn shutdown_bound(config: &Config) -> Duration {
    config
        .apps
        .iter()
        .map(|app| {
            let stop = app.driver.stop_timeout();
            let hooks = &app.hooks;
            let hook_lists = [&hooks.before_switch, &hooks.after_switch, &hooks.on_failure];
            let hook_count = hook_lists.iter().map(|list| list.len()).sum::<usize>();
            let hook_time = hooks.timeout * u32::try_from(hook_count).unwrap_or(u32::MAX);
            app.drain_timeout + stop + hook_time
        })
        .fold(SHUTDOWN_FLOOR, Duration::max)
}

fn app_context(
    config: &Config,
    app: &AppConfig,
    store: &Store,
    front: &Front,
    events: &EventBus,
) -> AppContext {
    let instance = config.state_dir.display().to_string();
    let driver: Arc<dyn Driver> = match &app.driver {
        DriverConfig::Process(process) => {
            Arc::new(ProcessDriver::new(&app.name, process.clone(), &instance))
        }
        DriverConfig::Docker(docker) => Arc::new(DockerDriver::new(
            &app.name,
            docker.clone(),
            &config.state_dir,
        )),
        DriverConfig::Swarm(swarm) => Arc::new(SwarmDriver::new(
            &app.name,
            swarm.clone(),
            &config.state_dir,
            app.health.deploy_timeout,
        )),
    };
    AppContext {
        app: Arc::new(app.clone()),
        work_dir: config
            .file
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
        logs_dir: config.logs_dir().join(&app.name),
        driver,
        store: store.clone(),
        front: front.clone(),
        events: events.clone(),
    }
}

/// A version ends up in argv, file names and logs: keep it to a safe alphabet.
pub(crate) fn validate_version(version: &str) -> Result<(), EngineError> {
    let ok = !version.is_empty()
        && version.len() <= 128
        && !version.starts_with(['-', '.'])
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::BadRequest(format!(
            "version `{}` is not valid: use 1-128 letters, digits, `.`, `_`, `-` or `+`, not starting with `-` or `.`",
            version.escape_debug()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(apps: &str) -> Config {
        let source = format!("state_dir = \"state\"\n{apps}");
        Config::parse(Path::new("/srv/cutover.toml"), &source).unwrap()
    }

    const APP: &str = r#"
[[app]]
name = "web"
drain_timeout = "40s"
[app.health]
path = "/health"
[app.process]
command = ["./web", "{port}"]
stop_timeout = "5s"
"#;

    #[test]
    fn shutdown_waits_for_the_slowest_safe_point_and_at_least_the_floor() {
        assert_eq!(shutdown_bound(&config("")), SHUTDOWN_FLOOR);
        assert_eq!(shutdown_bound(&config(APP)), Duration::from_secs(45));
        let with_hooks = format!(
            "{APP}[app.hooks]\ntimeout = \"10s\"\nbefore_switch = [[\"./smoke\"]]\non_failure = [[\"./page\"], [\"./log\"]]\n"
        );
        assert_eq!(
            shutdown_bound(&config(&with_hooks)),
            Duration::from_secs(75)
        );
    }
}
