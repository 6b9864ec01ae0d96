//! The per-app actor: owns the app's live release, runs one job (a
//! deployment, or the health gate after a restart) at a time, queues the
//! rest, collapses bursts and answers status.

use crate::deployment::{self, DeploymentJob, Outcome, Standby};
use crate::engine::{blocking, AppStatus, DeployRequest, LiveHealth};
use crate::error::EngineError;
use crate::events::EventBus;
use crate::front::Front;
use crate::health;
use crate::recovery::{self, Recovered};
use cutover_config::{AppConfig, Promotion, Slot};
use cutover_drivers::{Driver, ExitWatch};
use cutover_proxy::Upstream;
use cutover_store::{DeploymentRecord, DeploymentState, NewDeployment, ReleaseRecord, Store};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// What every part of an app's control plane shares.
#[derive(Clone)]
pub(crate) struct AppContext {
    pub app: Arc<AppConfig>,
    /// Where hooks and verification commands run: the config file's directory.
    pub work_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub driver: Arc<dyn Driver>,
    pub store: Store,
    /// Where traffic enters: the built-in proxy or nginx.
    pub front: Front,
    pub events: EventBus,
}

impl AppContext {
    pub(crate) fn name(&self) -> &str {
        &self.app.name
    }
}

/// The release serving an app's traffic.
#[derive(Clone)]
pub(crate) struct LiveRelease {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub runtime_id: String,
    pub addr: SocketAddr,
    pub upstream: Arc<Upstream>,
    pub exited: ExitWatch,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

pub(crate) enum Command {
    Deploy {
        request: DeployRequest,
        reply: Reply<DeploymentRecord>,
    },
    Rollback {
        reply: Reply<DeploymentRecord>,
    },
    Abort {
        reply: Reply<DeploymentRecord>,
    },
    Promote {
        reply: Reply<DeploymentRecord>,
    },
    /// `keep_old` ran out for the standby release with this runtime id.
    ExpireStandby {
        runtime_id: String,
    },
    Status {
        reply: Reply<AppStatus>,
    },
    Shutdown,
}

pub(crate) struct ActorHandle {
    pub commands: mpsc::Sender<Command>,
}

/// A deployment waiting for its turn.
struct Queued {
    record: DeploymentRecord,
    force: bool,
}

/// The job in progress.
enum Job {
    /// After a restart: the recovered live release must pass a health check
    /// before traffic goes to it.
    Gate(JoinHandle<Option<LiveRelease>>),
    Deployment(Box<RunningDeployment>),
    /// Stopping a standby release whose `keep_old` window ended.
    Retire(JoinHandle<()>),
}

struct RunningDeployment {
    record: DeploymentRecord,
    cancel: watch::Sender<bool>,
    promote: watch::Sender<bool>,
    committed: Arc<AtomicBool>,
    task: JoinHandle<Outcome>,
}

struct Actor {
    context: AppContext,
    /// For timers that talk back to this actor.
    commands: mpsc::Sender<Command>,
    live: Option<LiveRelease>,
    job: Option<Job>,
    queue: VecDeque<Queued>,
    /// The previous release kept running idle under `keep_old`.
    standby: Option<Standby>,
    health: Arc<AtomicU8>,
    monitor: Option<JoinHandle<()>>,
}

pub(crate) fn spawn(context: AppContext, recovered: Recovered) -> ActorHandle {
    let (commands, receiver) = mpsc::channel(64);
    let mut actor = Actor {
        context,
        commands: commands.clone(),
        live: None,
        job: None,
        queue: VecDeque::new(),
        standby: None,
        health: Arc::new(AtomicU8::new(HEALTH_UNKNOWN)),
        monitor: None,
    };
    if let Some(live) = recovered.live {
        let context = actor.context.clone();
        actor.job = Some(Job::Gate(tokio::spawn(recovery::gate(context, live))));
    }
    tokio::spawn(actor.run(receiver));
    ActorHandle { commands }
}

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_OK: u8 = 1;
const HEALTH_BAD: u8 = 2;

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.handle(command).await,
                },
                finished = wait_job(&mut self.job) => {
                    self.job = None;
                    self.finish(finished);
                    self.start_next().await;
                }
            }
        }
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Deploy { request, reply } => {
                let _ = reply.send(self.enqueue(request, None).await);
            }
            Command::Rollback { reply } => {
                let _ = reply.send(self.rollback().await);
            }
            Command::Abort { reply } => {
                let _ = reply.send(self.abort().await);
            }
            Command::Promote { reply } => {
                let _ = reply.send(self.promote().await);
            }
            Command::ExpireStandby { runtime_id } => self.expire_standby(&runtime_id),
            Command::Status { reply } => {
                let _ = reply.send(self.status().await);
            }
            Command::Shutdown => {}
        }
    }

    async fn enqueue(
        &mut self,
        request: DeployRequest,
        release: Option<&ReleaseRecord>,
    ) -> Result<DeploymentRecord, EngineError> {
        let name = self.context.name().to_string();
        if let Some(live) = &self.live {
            if live.release.version == request.version && !request.force && release.is_none() {
                return Err(EngineError::Conflict(format!(
                    "{name} {} is already live in {}; pass --force to deploy it again",
                    request.version, live.slot
                )));
            }
        }
        let max_queued = self.context.app.max_queued;
        if self.job.is_some() && max_queued == 0 {
            return Err(self.busy().await);
        }
        let new = NewDeployment {
            app: name.clone(),
            trigger: request.trigger.clone(),
            version: request.version.clone(),
            release_id: release.map(|r| r.id),
            source: request.source.clone(),
        };
        let store = self.context.store.clone();
        let record = blocking(move || store.insert_deployment(&new)).await?;
        self.publish_all(record.id).await;
        if self.job.is_some() && self.queue.len() >= max_queued {
            // Bursts collapse to the newest: the newest waiting request is replaced.
            if let Some(superseded) = self.queue.pop_back() {
                let message = format!(
                    "superseded by deployment {} ({} {})",
                    record.id, name, record.version
                );
                self.transition(superseded.record.id, DeploymentState::Aborted, &message)
                    .await;
            }
        }
        self.queue.push_back(Queued {
            record: record.clone(),
            force: request.force,
        });
        if self.job.is_none() {
            self.start_next().await;
        }
        Ok(record)
    }

    async fn busy(&self) -> EngineError {
        let (running, state) = match &self.job {
            Some(Job::Deployment(running)) => {
                let store = self.context.store.clone();
                let id = running.record.id;
                let state = blocking(move || store.deployment(id))
                    .await
                    .ok()
                    .flatten()
                    .map(|d| d.state);
                (id, state.unwrap_or_else(|| "running".to_string()))
            }
            _ => (0, "recovering after a restart".to_string()),
        };
        EngineError::Busy {
            app: self.context.name().to_string(),
            running,
            state,
        }
    }

    async fn rollback(&mut self) -> Result<DeploymentRecord, EngineError> {
        let store = self.context.store.clone();
        let name = self.context.name().to_string();
        let last = blocking(move || store.last_succeeded(&name)).await?;
        let Some((release_id, version)) =
            last.and_then(|d| Some((d.from_release_id?, d.from_version?)))
        else {
            return Err(EngineError::NothingToRollBack(
                self.context.name().to_string(),
            ));
        };
        let store = self.context.store.clone();
        let release = blocking(move || store.release(release_id))
            .await?
            .ok_or_else(|| EngineError::NothingToRollBack(self.context.name().to_string()))?;
        let request = DeployRequest {
            version,
            trigger: "rollback".to_string(),
            force: true,
            source: None,
        };
        self.enqueue(request, Some(&release)).await
    }

    async fn abort(&mut self) -> Result<DeploymentRecord, EngineError> {
        let name = self.context.name().to_string();
        match &self.job {
            Some(Job::Deployment(running)) => {
                if running.committed.load(Ordering::SeqCst) {
                    return Err(EngineError::Conflict(format!(
                        "deployment {} of {name} is already draining the old release and cannot be aborted; use `cutover rollback {name}`",
                        running.record.id
                    )));
                }
                let _ = running.cancel.send(true);
                Ok(running.record.clone())
            }
            _ => Err(EngineError::NothingInProgress {
                app: name,
                action: "abort",
            }),
        }
    }

    async fn promote(&mut self) -> Result<DeploymentRecord, EngineError> {
        let name = self.context.name().to_string();
        let Some(Job::Deployment(running)) = &self.job else {
            return Err(EngineError::NothingInProgress {
                app: name,
                action: "promote",
            });
        };
        let store = self.context.store.clone();
        let id = running.record.id;
        let record = blocking(move || store.deployment(id))
            .await?
            .ok_or(EngineError::UnknownDeployment(id))?;
        if record.state != DeploymentState::AwaitingPromotion.as_str() {
            return Err(EngineError::Conflict(format!(
                "deployment {id} of {name} is `{}`, not awaiting promotion{}",
                record.state,
                if self.context.app.promotion == Promotion::Auto {
                    " (this app promotes automatically)"
                } else {
                    "; promote it once it is healthy"
                }
            )));
        }
        let _ = running.promote.send(true);
        Ok(record)
    }

    /// The `keep_old` window of the standby release ended: stop it, unless a
    /// deployment is using its slot right now (then that deployment owns it).
    fn expire_standby(&mut self, runtime_id: &str) {
        if self
            .standby
            .as_ref()
            .is_none_or(|s| s.runtime_id != runtime_id)
        {
            return;
        }
        if self.job.is_some() {
            // Try again when the current job is done.
            let commands = self.commands.clone();
            let runtime_id = runtime_id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let _ = commands.send(Command::ExpireStandby { runtime_id }).await;
            });
            return;
        }
        if let Some(standby) = self.standby.take() {
            let context = self.context.clone();
            tracing::info!(app = %context.name(), slot = %standby.slot, "keep_old ended: stopping the idle {}", standby.release.version);
            self.job = Some(Job::Retire(tokio::spawn(async move {
                deployment::stop_slot(&context, standby.slot, &standby.runtime_id).await;
            })));
        }
    }

    fn keep_standby(&mut self, standby: Standby) {
        let commands = self.commands.clone();
        let runtime_id = standby.runtime_id.clone();
        let keep_old = self.context.app.keep_old;
        tokio::spawn(async move {
            tokio::time::sleep(keep_old).await;
            let _ = commands.send(Command::ExpireStandby { runtime_id }).await;
        });
        self.standby = Some(standby);
    }

    async fn status(&self) -> Result<AppStatus, EngineError> {
        let store = self.context.store.clone();
        let name = self.context.name().to_string();
        let current_id = match &self.job {
            Some(Job::Deployment(running)) => Some(running.record.id),
            _ => None,
        };
        let (record, current) = blocking(move || {
            let record = store.app(&name)?;
            let current = match current_id {
                Some(id) => store.deployment(id)?,
                None => None,
            };
            Ok((record, current))
        })
        .await?;
        let routed = self.context.front.live(self.context.name());
        let health = match (self.health.load(Ordering::Relaxed), &routed) {
            (_, None) => LiveHealth::Unknown,
            (HEALTH_OK, _) => LiveHealth::Healthy,
            (HEALTH_BAD, _) => LiveHealth::Unhealthy,
            _ => LiveHealth::Unknown,
        };
        Ok(AppStatus {
            name: self.context.name().to_string(),
            hosts: self.context.app.hosts.clone(),
            driver: self.context.driver.name(),
            live_slot: self.live.as_ref().map(|l| l.slot.as_str().to_string()),
            live_version: self.live.as_ref().map(|l| l.release.version.clone()),
            health,
            in_flight: routed.map_or(0, |u| u.in_flight()),
            current_deployment: current,
            queued: self.queue.iter().map(|q| q.record.id).collect(),
            slots: record.map(|r| r.slots).unwrap_or_default(),
        })
    }

    fn finish(&mut self, finished: Finished) {
        match finished {
            Finished::Gate(Some(live)) => {
                self.live = Some(live);
                self.restart_monitor();
            }
            Finished::Deployment(Outcome::Succeeded { live, standby }) => {
                self.live = Some(live);
                self.restart_monitor();
                if let Some(standby) = standby {
                    self.keep_standby(standby);
                }
            }
            Finished::Gate(None) | Finished::Deployment(Outcome::Unchanged) | Finished::Retired => {
            }
            Finished::Lost(why) => {
                tracing::error!(app = %self.context.name(), "a deployment task ended abnormally: {why}");
            }
        }
    }

    async fn start_next(&mut self) {
        while self.job.is_none() {
            let Some(next) = self.queue.pop_front() else {
                return;
            };
            let (cancel, cancelled) = watch::channel(false);
            let (promote, promoted) = watch::channel(false);
            let committed = Arc::new(AtomicBool::new(false));
            // A rollback to the release kept idle is instant; any other
            // deployment takes over its slot (and stops it there).
            let standby = self.standby.take().filter(|standby| {
                next.record.trigger == "rollback"
                    && next.record.release_id == Some(standby.release.id)
            });
            let job = DeploymentJob {
                context: self.context.clone(),
                record: next.record.clone(),
                force: next.force,
                live: self.live.clone(),
                cancelled,
                promoted,
                committed: committed.clone(),
                standby,
            };
            let task = tokio::spawn(deployment::run(job));
            self.job = Some(Job::Deployment(Box::new(RunningDeployment {
                record: next.record,
                cancel,
                promote,
                committed,
                task,
            })));
        }
    }

    async fn transition(&self, id: i64, state: DeploymentState, message: &str) {
        let store = self.context.store.clone();
        let message = message.to_string();
        match blocking(move || store.transition(id, state, &message)).await {
            Ok(event) => self.context.events.publish(event),
            Err(e) => {
                tracing::error!(app = %self.context.name(), deployment = id, "cannot record {}: {e}", state.as_str())
            }
        }
    }

    async fn publish_all(&self, id: i64) {
        let store = self.context.store.clone();
        if let Ok(events) = blocking(move || store.events(id, 0)).await {
            for event in events {
                self.context.events.publish(event);
            }
        }
    }

    /// Keeps checking the live release every `interval` so status shows its health.
    fn restart_monitor(&mut self) {
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
        let Some(live) = &self.live else { return };
        let addr = live.addr;
        let runtime_id = live.runtime_id.clone();
        let driver = self.context.driver.clone();
        let config = self.context.app.health.clone();
        let health = self.health.clone();
        let app = self.context.name().to_string();
        let events = self.context.events.clone();
        health.store(HEALTH_OK, Ordering::Relaxed);
        self.monitor = Some(tokio::spawn(async move {
            let mut was_healthy = true;
            loop {
                tokio::time::sleep(config.interval).await;
                // The HTTP check, and the runtime's own (a Docker HEALTHCHECK).
                let result = match health::check(addr, &config).await {
                    Ok(()) => match driver.check(&runtime_id).await {
                        cutover_drivers::RuntimeHealth::Failing(why) => Err(why),
                        _ => Ok(()),
                    },
                    Err(why) => Err(why),
                };
                health.store(
                    if result.is_ok() {
                        HEALTH_OK
                    } else {
                        HEALTH_BAD
                    },
                    Ordering::Relaxed,
                );
                let change = match (&result, was_healthy) {
                    (Err(why), true) => Some((
                        "unhealthy",
                        format!("the live release of {app} turned unhealthy: {why}"),
                    )),
                    (Ok(()), false) => Some((
                        "healthy",
                        format!("the live release of {app} is healthy again"),
                    )),
                    _ => None,
                };
                if let Some((kind, message)) = change {
                    if kind == "unhealthy" {
                        tracing::warn!(app = %app, "{message}");
                    } else {
                        tracing::info!(app = %app, "{message}");
                    }
                    events.publish_app(crate::AppEvent {
                        app: app.clone(),
                        at: cutover_store::now_ms(),
                        kind: kind.to_string(),
                        message,
                    });
                }
                was_healthy = result.is_ok();
            }
        }));
    }
}

enum Finished {
    Gate(Option<LiveRelease>),
    Retired,
    Deployment(Outcome),
    Lost(String),
}

/// Resolves when the current job ends; never while there is none.
async fn wait_job(job: &mut Option<Job>) -> Finished {
    match job {
        None => std::future::pending().await,
        Some(Job::Gate(task)) => match task.await {
            Ok(live) => Finished::Gate(live),
            Err(e) => Finished::Lost(e.to_string()),
        },
        Some(Job::Deployment(running)) => match (&mut running.task).await {
            Ok(outcome) => Finished::Deployment(outcome),
            Err(e) => Finished::Lost(e.to_string()),
        },
        Some(Job::Retire(task)) => match task.await {
            Ok(()) => Finished::Retired,
            Err(e) => Finished::Lost(e.to_string()),
        },
    }
}
