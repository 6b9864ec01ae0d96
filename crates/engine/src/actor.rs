//! The per-app actor: owns the app's live release, runs one job (a
//! deployment, or the health gate after a restart) at a time, queues the
//! rest, collapses bursts and answers status. On shutdown it brings its
//! job to a safe point (see [`Actor::stop_at_safe_point`]) before it ends.

use crate::blocking::blocking;
use crate::cancel::{self, Canceller, Interrupt};
use crate::context::{AppContext, LiveRelease, Standby};
use crate::deployment::{self, DeploymentJob, Outcome};
use crate::deployment::{Candidate, Placed};
use crate::error::EngineError;
use crate::health;
use crate::journal::Journal;
use crate::model::{state_of, AppStatus, DeployRequest, DrainingRelease, LiveHealth, Trigger};
use crate::recovery::{self, AppHandover, Awaiting, HandoverRelease, Recovered};
use crate::slots;
use crate::supervise::{self, Next, Phase, RestartedBy, Supervisor};
use cutover_config::{OnLiveFailure, Promotion};
use cutover_store::{DeploymentRecord, DeploymentState, NewDeployment, ReleaseRecord};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

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
    /// An upgrade asks for the releases to hand over; refused while a
    /// deployment runs or waits (no new one starts while the engine is
    /// frozen).
    Handover {
        reply: Reply<AppHandover>,
    },
    /// The upgrade did not happen: a deployment suspended for it goes on.
    Thaw,
    /// The release with this runtime id ended (`how`).
    LiveExited {
        runtime_id: String,
        how: String,
    },
    /// The backoff before restarting the dead live release ended.
    RestartLive {
        runtime_id: String,
    },
    /// This app's part of a group deployment (already recorded): queued like
    /// any deployment; when its turn comes its job goes to the group.
    DeployMember {
        record: DeploymentRecord,
        seat: deployment::group::MemberSeat,
        reply: Reply<()>,
    },
}

/// How the daemon's stop reaches an actor, mini-redis style: one signal
/// broadcast to every actor, and a completion sender each actor holds
/// until it has stopped (the engine waits for the last one to drop).
pub(crate) struct Lifecycle {
    pub shutdown: watch::Receiver<bool>,
    pub stopped: mpsc::Sender<()>,
    /// Set while an upgrade hands the engine over: no deployment starts and
    /// no standby is stopped.
    pub frozen: Arc<AtomicBool>,
    /// Recovery health gates still running, over all apps.
    pub gates: Arc<watch::Sender<usize>>,
}

pub(crate) struct ActorHandle {
    pub commands: mpsc::Sender<Command>,
}

/// A deployment waiting for its turn.
struct Queued {
    record: DeploymentRecord,
    force: bool,
    /// Set for a member of a group deployment.
    seat: Option<deployment::group::MemberSeat>,
}

/// The job in progress.
enum Job {
    /// After a restart: the recovered live release must pass a health check
    /// before traffic goes to it.
    Gate(JoinHandle<Option<LiveRelease>>),
    Deployment(Box<RunningDeployment>),
    /// Stopping a standby release whose `keep_old` window ended.
    Retire(JoinHandle<()>),
    /// Starting the dead live release again in its slot (supervision).
    Restart(JoinHandle<Result<LiveRelease, String>>),
}

struct RunningDeployment {
    record: DeploymentRecord,
    cancel: Canceller,
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
    /// Tells the actor when the live release ends.
    exit_watch: Option<JoinHandle<()>>,
    supervisor: Supervisor,
    frozen: Arc<AtomicBool>,
    /// Recovered awaiting promotion: goes on once the job slot is free.
    awaiting: Option<Awaiting>,
    /// Suspended while awaiting promotion for an upgrade (its release
    /// runs on): the process that takes over, or a thaw, resumes it.
    suspended: Option<i64>,
}

pub(crate) fn spawn(
    context: AppContext,
    recovered: Recovered,
    lifecycle: Lifecycle,
) -> ActorHandle {
    let (commands, receiver) = mpsc::channel(64);
    let mut actor = Actor {
        context: context.clone(),
        commands: commands.clone(),
        live: None,
        job: None,
        queue: VecDeque::new(),
        standby: None,
        health: Arc::new(AtomicU8::new(HEALTH_UNKNOWN)),
        monitor: None,
        exit_watch: None,
        supervisor: Supervisor::new(
            context.app.supervise.clone(),
            RestartedBy::of(context.driver.name()),
        ),
        frozen: lifecycle.frozen.clone(),
        awaiting: recovered.awaiting,
        suspended: None,
    };
    match recovered.live {
        // Handed over by the process this one replaced: already routed.
        Some(live) if recovered.routed => {
            actor.live = Some(live);
            actor.restart_monitor();
        }
        Some(live) => {
            let context = actor.context.clone();
            let gates = lifecycle.gates.clone();
            gates.send_modify(|pending| *pending += 1);
            actor.job = Some(Job::Gate(tokio::spawn(async move {
                let gated = recovery::gate(context, live).await;
                gates.send_modify(|pending| *pending = pending.saturating_sub(1));
                gated
            })));
        }
        None => {}
    }
    if let Some(standby) = recovered.standby {
        actor.keep_standby(standby);
    }
    if actor.job.is_none() {
        if let Some(awaiting) = actor.awaiting.take() {
            actor.resume(awaiting);
        }
    }
    tokio::spawn(actor.run(receiver, lifecycle));
    ActorHandle { commands }
}

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_OK: u8 = 1;
const HEALTH_BAD: u8 = 2;

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut lifecycle: Lifecycle) {
        loop {
            tokio::select! {
                // A dropped engine stops the actor as a shutdown does.
                () = shutdown_requested(&mut lifecycle.shutdown) => break,
                command = commands.recv() => match command {
                    None => break,
                    Some(command) => self.handle(command).await,
                },
                finished = wait_job(&mut self.job) => {
                    self.job = None;
                    self.finish(finished).await;
                    self.start_next().await;
                    self.recheck_live().await;
                }
            }
        }
        self.stop_at_safe_point().await;
        drop(lifecycle.stopped);
    }

    /// The daemon is stopping. Waiting deployments are recorded as aborted;
    /// a running one is interrupted: before its commit it halts at its
    /// current step (new release stopped, reason recorded, live release
    /// untouched), after it (draining) it finishes; one awaiting promotion
    /// is left so (its task dropped at its wait, which is as safe as a
    /// crash there: every transition was recorded first), for the next
    /// start to go on awaiting. The recovery health gate is simply
    /// dropped: the next start checks again. Releases keep running; the
    /// engine bounds how long this may take.
    async fn stop_at_safe_point(&mut self) {
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
        if let Some(watch) = self.exit_watch.take() {
            watch.abort();
        }
        let reason = format!(
            "{} before it started; nothing changed",
            Interrupt::Shutdown.reason()
        );
        for queued in std::mem::take(&mut self.queue) {
            self.transition(queued.record.id, DeploymentState::Aborted, &reason)
                .await;
        }
        match self.job.take() {
            Some(Job::Gate(task)) => task.abort(),
            Some(Job::Deployment(running)) if self.awaits_promotion(running.record.id).await => {
                // Nothing to bring to a safe point: it waits, its release
                // runs on, and the next start (or the process this one is
                // upgraded to) goes on waiting with it.
                running.task.abort();
                tracing::info!(app = %self.context.name(), deployment = running.record.id,
                    "shutting down: the deployment awaiting promotion stays so");
            }
            Some(Job::Deployment(running)) => {
                tracing::info!(app = %self.context.name(), deployment = running.record.id,
                    "shutting down: bringing the running deployment to a safe point");
                running.cancel.interrupt(Interrupt::Shutdown);
                if let Err(e) = running.task.await {
                    tracing::error!(app = %self.context.name(), "the deployment task ended abnormally: {e}");
                }
            }
            Some(Job::Retire(task)) => {
                let _ = task.await;
            }
            // Stopped where it is: the next start adopts or starts the
            // recorded live release, as after any stop.
            Some(Job::Restart(task)) => task.abort(),
            None => {}
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
            Command::Handover { reply } => {
                let _ = reply.send(self.handover().await);
            }
            Command::Thaw => self.thaw().await,
            Command::LiveExited { runtime_id, how } => self.live_died(&runtime_id, how).await,
            Command::RestartLive { runtime_id } => self.restart_live(&runtime_id),
            Command::DeployMember {
                record,
                seat,
                reply,
            } => {
                let _ = reply.send(self.enqueue_member(record, seat).await);
            }
        }
    }

    /// Whether deployment `id` is recorded as awaiting promotion.
    async fn awaits_promotion(&self, id: i64) -> bool {
        let store = self.context.store.clone();
        let record = blocking(move || store.deployment(id)).await;
        // A group's member is never left awaiting alone: it is interrupted
        // with its group.
        matches!(record, Ok(Some(record)) if state_of(&record) == Some(DeploymentState::AwaitingPromotion) && record.group_deployment_id.is_none())
    }

    /// The releases to hand to the process that takes over, if nothing is
    /// in progress (the engine is frozen, so nothing new starts). A
    /// deployment awaiting promotion is suspended (its release runs on):
    /// the new process goes on awaiting it.
    async fn handover(&mut self) -> Result<AppHandover, EngineError> {
        let name = self.context.name().to_string();
        if let Some(Job::Deployment(running)) = &self.job {
            if self.awaits_promotion(running.record.id).await {
                if let Some(Job::Deployment(running)) = self.job.take() {
                    running.task.abort();
                    tracing::info!(app = %name, deployment = running.record.id,
                        "suspended the deployment awaiting promotion for the upgrade");
                    self.suspended = Some(running.record.id);
                }
            }
        }
        match &self.job {
            Some(Job::Deployment(running)) => {
                return Err(EngineError::Conflict(format!(
                    "deployment {} of app {name} is running; retry after it ends or abort it (`cutover abort {name}`)",
                    running.record.id
                )))
            }
            Some(Job::Gate(_)) => {
                return Err(EngineError::Conflict(format!(
                    "the live release of app {name} is still being checked after a restart; retry in a moment"
                )))
            }
            Some(Job::Restart(_)) => {
                return Err(EngineError::Conflict(format!(
                    "the live release of app {name} is being restarted; retry in a moment"
                )))
            }
            Some(Job::Retire(_)) | None => {}
        }
        if let Some(queued) = self.queue.front() {
            return Err(EngineError::Conflict(format!(
                "deployment {} of app {name} is queued; retry after it ends or abort it",
                queued.record.id
            )));
        }
        let live = self.live.as_ref().map(|live| HandoverRelease {
            slot: live.slot,
            version: live.release.version.clone(),
            runtime_id: live.runtime_id.clone(),
            endpoints: live.endpoints.current().iter().map(|e| e.addr).collect(),
        });
        let standby = self.standby.as_ref().map(|standby| HandoverRelease {
            slot: standby.slot,
            version: standby.release.version.clone(),
            runtime_id: standby.runtime_id.clone(),
            endpoints: standby.endpoints.current().iter().map(|e| e.addr).collect(),
        });
        Ok(AppHandover {
            app: name,
            live,
            standby,
        })
    }

    /// The upgrade did not happen: the deployment suspended for it goes on
    /// awaiting promotion (or is recorded as failed if its release ended).
    async fn thaw(&mut self) {
        let Some(id) = self.suspended.take() else {
            return;
        };
        match recovery::resume_suspended(&self.context, id).await {
            Some(awaiting) if self.job.is_none() => self.resume(awaiting),
            Some(awaiting) => self.awaiting = Some(awaiting),
            None => {
                let why = "its release stopped while cutover was being upgraded";
                self.transition(id, DeploymentState::Failed, why).await;
            }
        }
    }

    /// Goes on with a deployment awaiting promotion (after a restart, an
    /// upgrade, or one that did not happen).
    fn resume(&mut self, awaiting: Awaiting) {
        let placed = Placed {
            slot: awaiting.slot,
            release: awaiting.release,
            log_path: awaiting.log_path,
        };
        let new = Candidate::new(&self.context.app, placed, awaiting.started);
        tracing::info!(app = %self.context.name(), deployment = awaiting.record.id,
            "going on awaiting promotion of {}", new.placed.release.version);
        self.launch(awaiting.record, false, move |job| {
            deployment::resume_promotion(job, new)
        });
    }

    async fn enqueue(
        &mut self,
        request: DeployRequest,
        release: Option<&ReleaseRecord>,
    ) -> Result<DeploymentRecord, EngineError> {
        let name = self.context.name().to_string();
        if self.frozen.load(Ordering::SeqCst) {
            return Err(EngineError::Upgrading(format!("deploy {name}")));
        }
        if let Some(live) = &self.live {
            if live.release.version == request.version && !request.force && release.is_none() {
                return Err(EngineError::Conflict(format!(
                    "{name} {} is already live in {}; pass --force to deploy it again",
                    request.version, live.slot
                )));
            }
        }
        let max_queued = self.context.app.max_queued;
        // A waiting member of a group deployment is never replaced.
        let member_waits = self.queue.back().is_some_and(|q| q.seat.is_some());
        let full = self.queue.len() >= max_queued;
        if self.job.is_some() && (max_queued == 0 || (full && member_waits)) {
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
            seat: None,
        });
        if self.job.is_none() {
            self.start_next().await;
        }
        Ok(record)
    }

    /// Queues this app's part of a group deployment. It never replaces a
    /// waiting deployment (nor is it collapsed): the group needs every
    /// member, and a single deployment of the app waits behind it.
    async fn enqueue_member(
        &mut self,
        record: DeploymentRecord,
        seat: deployment::group::MemberSeat,
    ) -> Result<(), EngineError> {
        if self.frozen.load(Ordering::SeqCst) {
            let why = "cutover is being upgraded; nothing changed";
            self.transition(record.id, DeploymentState::Aborted, why)
                .await;
            return Err(EngineError::Upgrading(format!(
                "deploy {}",
                self.context.name()
            )));
        }
        self.publish_all(record.id).await;
        self.queue.push_back(Queued {
            record,
            force: true,
            seat: Some(seat),
        });
        if self.job.is_none() {
            self.start_next().await;
        }
        Ok(())
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
                    .map(|d| match d.group_deployment_id {
                        Some(group) => format!("{}, part of group deployment {group}", d.state),
                        None => d.state,
                    });
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
            trigger: Trigger::ROLLBACK.to_string(),
            force: true,
            source: None,
        };
        self.enqueue(request, Some(&release)).await
    }

    async fn abort(&mut self) -> Result<DeploymentRecord, EngineError> {
        let name = self.context.name().to_string();
        self.refuse_while_frozen("abort")?;
        match &self.job {
            Some(Job::Deployment(running)) => {
                if running.committed.load(Ordering::SeqCst) {
                    return Err(EngineError::Conflict(format!(
                        "deployment {} of {name} is already draining the old release and cannot be aborted; use `cutover rollback {name}`",
                        running.record.id
                    )));
                }
                running.cancel.interrupt(Interrupt::Abort);
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
        self.refuse_while_frozen("promote")?;
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
        if state_of(&record) != Some(DeploymentState::AwaitingPromotion) {
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

    fn refuse_while_frozen(&self, action: &str) -> Result<(), EngineError> {
        match self.frozen.load(Ordering::SeqCst) {
            true => Err(EngineError::Upgrading(format!(
                "{action} {}",
                self.context.name()
            ))),
            false => Ok(()),
        }
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
        if self.job.is_some() || self.frozen.load(Ordering::SeqCst) {
            // Try again when the current job is done (or the upgrade that
            // may hand the standby over is).
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
                slots::stop(&context, standby.slot, &standby.runtime_id).await;
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
        // After a switch the routed release is live, though the deployment
        // that switched is still draining the one `self.live` names.
        let (live_slot, live_version) = match (&routed, &self.live) {
            (Some(routed), _) => (
                Some(routed.slot().to_string()),
                Some(routed.release().to_string()),
            ),
            (None, Some(live)) => (
                Some(live.slot.as_str().to_string()),
                Some(live.release.version.clone()),
            ),
            (None, None) => None.unzip(),
        };
        Ok(AppStatus {
            name: self.context.name().to_string(),
            hosts: self.context.app.hosts.clone(),
            driver: self.context.driver.name(),
            live_slot,
            live_version,
            health,
            in_flight: routed.as_ref().map_or(0, |u| u.in_flight()),
            endpoints: routed
                .as_ref()
                .map_or_else(Vec::new, |u| endpoint_status(u)),
            draining: self.draining(routed.as_ref()),
            supervision: self.supervisor.report(Instant::now()),
            current_deployment: current,
            queued: self.queue.iter().map(|q| q.record.id).collect(),
            slots: record.map(|r| r.slots).unwrap_or_default(),
        })
    }

    /// The previous live release, while the running deployment has moved
    /// traffic off it and not yet finished.
    fn draining(&self, routed: Option<&Arc<cutover_proxy::Upstream>>) -> Option<DrainingRelease> {
        let previous = self.live.as_ref()?;
        let switched_away = routed.is_some_and(|routed| !Arc::ptr_eq(routed, &previous.upstream));
        let deploying = matches!(self.job, Some(Job::Deployment(_)));
        (switched_away && deploying).then(|| DrainingRelease {
            slot: previous.slot.as_str().to_string(),
            version: previous.release.version.clone(),
            in_flight: previous.upstream.in_flight(),
        })
    }

    async fn finish(&mut self, finished: Finished) {
        match finished {
            Finished::Gate(Some(live)) => {
                self.live = Some(live);
                self.restart_monitor();
            }
            Finished::Deployment(Outcome::Succeeded { live, standby }) => {
                self.live = Some(live);
                self.supervisor.replaced();
                self.restart_monitor();
                if let Some(standby) = standby {
                    self.keep_standby(standby);
                }
            }
            Finished::Restart(restarted) => self.restart_finished(restarted).await,
            Finished::Deployment(Outcome::Unchanged) => {
                // A switch to the standby that did not happen: supervision
                // takes over again (see `recheck_live`).
                if self.supervisor.phase() == Phase::SwitchingToStandby {
                    self.supervisor.replaced();
                }
            }
            Finished::Gate(None) | Finished::Retired => {}
            Finished::Lost(why) => {
                tracing::error!(app = %self.context.name(), "a deployment task ended abnormally: {why}");
            }
        }
    }

    async fn start_next(&mut self) {
        while self.job.is_none() {
            if let Some(awaiting) = self.awaiting.take() {
                self.resume(awaiting);
                continue;
            }
            let Some(next) = self.queue.pop_front() else {
                return;
            };
            let trigger = Trigger::of(&next.record);
            // A rollback to the release kept idle is instant; any other
            // deployment takes over its slot (and stops it there).
            let standby = self.standby.take().filter(|standby| {
                trigger == Trigger::Rollback && next.record.release_id == Some(standby.release.id)
            });
            match next.seat {
                Some(seat) => self.launch(next.record, next.force, move |job| {
                    deployment::group::member(job, standby, seat)
                }),
                None => self.launch(next.record, next.force, move |job| {
                    deployment::run(job, standby)
                }),
            }
        }
    }

    /// Makes `record` the running deployment, driven by `run`.
    fn launch<F>(
        &mut self,
        record: DeploymentRecord,
        force: bool,
        run: impl FnOnce(DeploymentJob) -> F,
    ) where
        F: std::future::Future<Output = Outcome> + Send + 'static,
    {
        let (cancel, cancel_signal) = cancel::channel();
        let (promote, promoted) = watch::channel(false);
        let committed = Arc::new(AtomicBool::new(false));
        let job = DeploymentJob {
            journal: Journal::new(&self.context, record.id),
            context: self.context.clone(),
            record: record.clone(),
            trigger: Trigger::of(&record),
            force,
            live: self.live.clone(),
            cancel: cancel_signal,
            promoted,
            committed: committed.clone(),
            started_at: Instant::now(),
        };
        let task = tokio::spawn(run(job));
        self.job = Some(Job::Deployment(Box::new(RunningDeployment {
            record,
            cancel,
            promote,
            committed,
            task,
        })));
    }

    async fn transition(&self, id: i64, state: DeploymentState, message: &str) {
        Journal::new(&self.context, id).step(state, message).await;
    }

    async fn publish_all(&self, id: i64) {
        Journal::new(&self.context, id).publish_stored().await;
    }

    /// Keeps checking the live release every `interval` so status shows its
    /// health, each endpoint in or out of rotation, and the endpoint set
    /// following the driver's (a replaced swarm task).
    fn restart_monitor(&mut self) {
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
        self.watch_live_exit();
        let Some(live) = &self.live else { return };
        self.health.store(HEALTH_OK, Ordering::Relaxed);
        let watched = Monitored {
            context: self.context.clone(),
            upstream: live.upstream.clone(),
            endpoints: live.endpoints.clone(),
            runtime_id: live.runtime_id.clone(),
            health: self.health.clone(),
        };
        self.monitor = Some(tokio::spawn(watched.run()));
    }
}

/// The live release under watch, for `status` and app events.
struct Monitored {
    context: AppContext,
    /// The release this monitor started on (the live one then).
    upstream: Arc<cutover_proxy::Upstream>,
    endpoints: crate::context::Endpoints,
    runtime_id: String,
    health: Arc<AtomicU8>,
}

impl Monitored {
    async fn run(mut self) {
        let config = self.context.app.health.clone();
        let app = self.context.name().to_string();
        let mut was_healthy = true;
        loop {
            self.next_round(config.interval).await;
            let Some(routed) = self.context.front.live(&app) else {
                continue;
            };
            let ours = Arc::ptr_eq(&routed, &self.upstream);
            if ours {
                self.follow_endpoints(&config).await;
            }
            let result = self.check(&config, &routed, ours).await;
            // A check that outlived a switch judged a release that no longer
            // takes traffic (it drains, then stops): not the app's health.
            let still_live = self.context.front.live(&app);
            if still_live.is_none_or(|live| !Arc::ptr_eq(&live, &routed)) {
                continue;
            }
            let flag = if result.is_ok() {
                HEALTH_OK
            } else {
                HEALTH_BAD
            };
            self.health.store(flag, Ordering::Relaxed);
            let (kind, message) = match (&result, was_healthy) {
                (Err(why), true) => {
                    let message = format!("the live release of {app} turned unhealthy: {why}");
                    tracing::warn!(app = %app, "{message}");
                    ("unhealthy", message)
                }
                (Ok(()), false) => {
                    let message = format!("the live release of {app} is healthy again");
                    tracing::info!(app = %app, "{message}");
                    ("healthy", message)
                }
                _ => continue,
            };
            was_healthy = result.is_ok();
            self.context.events.publish_app(crate::events::AppEvent {
                app: app.clone(),
                at: cutover_store::now_ms(),
                kind: kind.to_string(),
                message,
            });
        }
    }

    /// The next check is due after `interval`, or at once when the
    /// driver's endpoints changed.
    async fn next_round(&mut self, interval: std::time::Duration) {
        match &mut self.endpoints.changes {
            Some(changes) => {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    changed = changes.changed() => if changed.is_err() {
                        tokio::time::sleep(interval).await;
                    },
                }
            }
            None => tokio::time::sleep(interval).await,
        }
    }

    /// Endpoints the driver no longer has leave the rotation at once; new
    /// ones join once they pass a health check.
    async fn follow_endpoints(&self, config: &cutover_config::HealthConfig) {
        let current = self.endpoints.current();
        let known: Vec<std::net::SocketAddr> =
            self.upstream.endpoints().iter().map(|e| e.addr).collect();
        let mut keep: Vec<cutover_drivers::Endpoint> = current
            .iter()
            .filter(|e| known.contains(&e.addr))
            .cloned()
            .collect();
        let joining: Vec<&cutover_drivers::Endpoint> = current
            .iter()
            .filter(|e| !known.contains(&e.addr))
            .collect();
        if joining.is_empty() && keep.len() == known.len() {
            return;
        }
        for endpoint in joining {
            match health::check(endpoint.addr, config).await {
                Ok(()) => keep.push(endpoint.clone()),
                Err(why) => {
                    tracing::debug!(app = %self.context.name(), "new endpoint {} ({}) is not healthy yet: {why}", endpoint.label, endpoint.addr)
                }
            }
        }
        keep.sort();
        let now: Vec<std::net::SocketAddr> = keep.iter().map(|e| e.addr).collect();
        if now.len() == known.len() && now.iter().all(|a| known.contains(a)) {
            return;
        }
        tracing::info!(app = %self.context.name(), "endpoints of the live release now: {}",
            keep.iter().map(|e| format!("{} ({})", e.label, e.addr)).collect::<Vec<_>>().join(", "));
        self.upstream
            .set_endpoints(crate::context::endpoint_specs(&keep));
        self.refresh_front().await;
    }

    async fn refresh_front(&self) {
        if let Err(why) = self.context.front.refresh(self.context.name()).await {
            tracing::error!(app = %self.context.name(), "cannot update the front with the live endpoints: {why}");
        }
    }

    /// The HTTP check of every endpoint of the release traffic goes to —
    /// after a switch that is the new one, not the one this monitor
    /// started on, which is draining and will stop — each endpoint of ours
    /// put in or out of rotation by its result, and the runtime's own check
    /// (a Docker HEALTHCHECK, swarm tasks) while it is ours.
    async fn check(
        &self,
        config: &cutover_config::HealthConfig,
        routed: &cutover_proxy::Upstream,
        ours: bool,
    ) -> Result<(), String> {
        let endpoints = routed.endpoints();
        if endpoints.is_empty() {
            return Err("the release has no endpoint in rotation".to_string());
        }
        let checks = endpoints.iter().map(|e| health::check(e.addr, config));
        let results = futures_util::future::join_all(checks).await;
        let mut changed = false;
        let mut failures = Vec::new();
        for (endpoint, result) in endpoints.iter().zip(results) {
            if ours && endpoint.healthy != result.is_ok() {
                routed.set_endpoint_healthy(endpoint.addr, result.is_ok());
                changed = true;
            }
            if let Err(why) = result {
                failures.push(match endpoints.len() {
                    1 => why,
                    _ => format!("endpoint {} ({}): {why}", endpoint.label, endpoint.addr),
                });
            }
        }
        if changed {
            self.refresh_front().await;
        }
        if !failures.is_empty() {
            return Err(failures.join("; "));
        }
        if !ours {
            return Ok(());
        }
        match self.context.driver.check(&self.runtime_id).await {
            cutover_drivers::RuntimeHealth::Failing(why) => Err(why),
            _ => Ok(()),
        }
    }
}

fn endpoint_status(upstream: &cutover_proxy::Upstream) -> Vec<crate::model::EndpointStatus> {
    upstream
        .endpoints()
        .into_iter()
        .map(|e| crate::model::EndpointStatus {
            label: e.label,
            addr: e.addr.to_string(),
            healthy: e.healthy && !e.ejected,
            in_flight: e.in_flight,
            requests: e.requests,
            failures: e.failures,
        })
        .collect()
}

async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

enum Finished {
    Gate(Option<LiveRelease>),
    Restart(Result<LiveRelease, String>),
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
        Some(Job::Restart(task)) => match task.await {
            Ok(restarted) => Finished::Restart(restarted),
            Err(e) => Finished::Restart(Err(e.to_string())),
        },
    }
}

/// Supervision of the live release (see `supervise.rs`): its end is
/// noticed through the driver's exit watch, then it is restarted in place
/// after a backoff, or the `keep_old` standby takes over, or cutover gives
/// up (and says so) — always as the actor's job, never beside a deployment.
impl Actor {
    /// Tells this actor when the live release ends.
    fn watch_live_exit(&mut self) {
        if let Some(watch) = self.exit_watch.take() {
            watch.abort();
        }
        let Some(live) = &self.live else { return };
        let mut exited = live.exited.clone();
        let runtime_id = live.runtime_id.clone();
        let commands = self.commands.clone();
        self.exit_watch = Some(tokio::spawn(async move {
            let how = exited.wait().await;
            let _ = commands.send(Command::LiveExited { runtime_id, how }).await;
        }));
    }

    /// The release `runtime_id` ended. Only the live one matters, and only
    /// when no job owns the slots (a deployment retires the old live
    /// release itself; when a job ends, `recheck_live` looks again).
    async fn live_died(&mut self, runtime_id: &str, how: String) {
        let Some(live) = &self.live else { return };
        if live.runtime_id != runtime_id || self.job.is_some() {
            return;
        }
        if self.supervisor.by() == RestartedBy::Orchestrator {
            tracing::warn!(app = %self.context.name(), "the live service {how}; the swarm orchestrator replaces its tasks");
            return;
        }
        if self.supervisor.phase() != Phase::Watching {
            return;
        }
        let what = format!(
            "the live release of {} ({} in {}) {how}",
            self.context.name(),
            live.release.version,
            live.slot
        );
        if self.fail_over_to_standby(&what, &how).await {
            return;
        }
        let supervise = &self.context.app.supervise;
        let (kind, message) = match self.supervisor.died(&how, Instant::now()) {
            Next::RestartAfter { delay, attempt } => {
                self.schedule_restart(runtime_id.to_string(), delay);
                (
                    "restarting",
                    format!(
                        "{what}; restarting it in {:.1}s (attempt {attempt} of {} within {}s)",
                        delay.as_secs_f64(),
                        supervise.limit,
                        supervise.window.as_secs()
                    ),
                )
            }
            Next::GiveUp => (
                "gave_up",
                format!(
                    "{what}; it was restarted {} times within {}s: cutover stops restarting it, deploy to serve {} again",
                    supervise.limit,
                    supervise.window.as_secs(),
                    self.context.name()
                ),
            ),
            Next::StayDown => (
                "down",
                format!("{what}; restart = \"never\": it stays down until a deployment"),
            ),
        };
        self.announce(kind, message);
    }

    /// With `on_live_failure = "standby"` and a standby kept: the instant
    /// rollback to it (a deployment: health-checked, recorded, switched).
    async fn fail_over_to_standby(&mut self, what: &str, how: &str) -> bool {
        let wanted = self.context.app.supervise.on_live_failure == OnLiveFailure::Standby;
        if !wanted || self.standby.is_none() || self.frozen.load(Ordering::SeqCst) {
            return false;
        }
        self.supervisor.switching_to_standby(how);
        match self.rollback().await {
            Ok(record) => {
                let message = format!(
                    "{what}; switching to the standby release (deployment {}, {})",
                    record.id, record.version
                );
                self.announce("standby", message);
                true
            }
            Err(why) => {
                tracing::warn!(app = %self.context.name(), "cannot switch to the standby ({why}); restarting instead");
                self.supervisor.replaced();
                false
            }
        }
    }

    fn schedule_restart(&self, runtime_id: String, delay: std::time::Duration) {
        let commands = self.commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = commands.send(Command::RestartLive { runtime_id }).await;
        });
    }

    /// The backoff ended: restart the dead live release, unless a job (a
    /// deployment) or an upgrade is in the way — then in a moment.
    fn restart_live(&mut self, runtime_id: &str) {
        let Some(live) = &self.live else { return };
        if live.runtime_id != runtime_id || self.supervisor.phase() != Phase::BackingOff {
            return;
        }
        if self.job.is_some() || self.frozen.load(Ordering::SeqCst) {
            self.schedule_restart(
                runtime_id.to_string(),
                std::time::Duration::from_millis(500),
            );
            return;
        }
        self.supervisor.restarting();
        tracing::info!(app = %self.context.name(), slot = %live.slot, version = %live.release.version,
            "restarting the live release in its slot");
        let task = tokio::spawn(supervise::restart_in_place(
            self.context.clone(),
            live.clone(),
        ));
        self.job = Some(Job::Restart(task));
    }

    async fn restart_finished(&mut self, restarted: Result<LiveRelease, String>) {
        match restarted {
            Ok(live) => {
                self.supervisor.restarted();
                let message = format!(
                    "the live release of {} ({} in {}) was restarted and is healthy again",
                    self.context.name(),
                    live.release.version,
                    live.slot
                );
                self.live = Some(live);
                self.restart_monitor();
                self.announce("restarted", message);
            }
            Err(why) => {
                self.supervisor.restart_failed();
                self.supervisor.replaced_phase_only();
                let Some(runtime_id) = self.live.as_ref().map(|l| l.runtime_id.clone()) else {
                    return;
                };
                self.live_died(&runtime_id, why).await;
            }
        }
    }

    /// After a job: a live release that died meanwhile (its end was
    /// ignored while the job owned the slots) is dealt with now.
    async fn recheck_live(&mut self) {
        if self.job.is_some() {
            return;
        }
        if self.supervisor.phase() == Phase::SwitchingToStandby {
            self.supervisor.replaced();
        }
        let Some(live) = &self.live else { return };
        if let Some(how) = live.exited.exited() {
            let runtime_id = live.runtime_id.clone();
            self.live_died(&runtime_id, how).await;
        }
    }

    /// An app event (SSE `GET /v1/apps/{app}/events`) and a log line.
    fn announce(&self, kind: &str, message: String) {
        match kind {
            "restarted" => tracing::info!(app = %self.context.name(), "{message}"),
            "gave_up" => tracing::error!(app = %self.context.name(), "{message}"),
            _ => tracing::warn!(app = %self.context.name(), "{message}"),
        }
        self.context.events.publish_app(crate::events::AppEvent {
            app: self.context.name().to_string(),
            at: cutover_store::now_ms(),
            kind: kind.to_string(),
            message,
        });
    }
}
