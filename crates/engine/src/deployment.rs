//! One deployment, step by step. Every transition is persisted (and then
//! published) before it takes effect; a failure before the switch stops
//! and cleans up the new slot and leaves the live one untouched. What
//! happens between "healthy" and "old release retired" (preview,
//! promotion, hooks, shifting, verification, revert) is in `rollout.rs`.

use crate::actor::{AppContext, LiveRelease};
use crate::engine::blocking;
use crate::health::{self, Unhealthy};
use crate::log_tail::tail_lines;
use crate::rollout::{self, Rollout};
use cutover_config::Slot;
use cutover_drivers::{ExitWatch, ReleaseSpec, StartedRelease};
use cutover_proxy::Upstream;
use cutover_store::{DeploymentPlan, DeploymentRecord, DeploymentState, ReleaseRecord, SlotUpdate};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Lines of the release's log quoted in a failure reason.
const LOG_TAIL_LINES: usize = 20;
const ABORTED_BY_REQUEST: &str = "aborted by request (`cutover abort`)";

pub(crate) struct DeploymentJob {
    pub context: AppContext,
    pub record: DeploymentRecord,
    pub force: bool,
    pub live: Option<LiveRelease>,
    pub cancelled: watch::Receiver<bool>,
    pub promoted: watch::Receiver<bool>,
    /// Set once the old release starts draining: from then on the
    /// deployment can no longer be aborted (only rolled back).
    pub committed: Arc<AtomicBool>,
    /// An instant rollback: the previous release, still running idle
    /// under `keep_old`, is switched to without starting anything.
    pub standby: Option<Standby>,
}

impl DeploymentJob {
    pub(crate) fn is_rollback(&self) -> bool {
        self.record.trigger == "rollback"
    }
}

/// A previous release kept running idle after a switch (`keep_old`).
#[derive(Clone)]
pub(crate) struct Standby {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub runtime_id: String,
    pub addr: SocketAddr,
    pub exited: ExitWatch,
    pub log_path: Option<PathBuf>,
}

pub(crate) enum Outcome {
    Succeeded {
        live: LiveRelease,
        standby: Option<Standby>,
    },
    /// Failed, aborted or rolled back: the release serving before serves again.
    Unchanged,
}

/// Why a deployment stopped before traffic moved.
pub(crate) enum Stop {
    Failed(String),
    Aborted(String),
}

/// The new release, once started, so a failure can clean it up.
pub(crate) struct NewRelease {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub log_path: PathBuf,
    pub started: Option<StartedRelease>,
}

pub(crate) async fn run(mut job: DeploymentJob) -> Outcome {
    let started = Instant::now();
    let mut new = None;
    let checked = match job.standby.take() {
        Some(standby) => reuse_standby(&mut job, standby, &mut new).await,
        None => prepare_and_check(&mut job, &mut new).await,
    };
    let (new, started_release) = match (checked, new) {
        (
            Ok(()),
            Some(NewRelease {
                slot,
                release,
                log_path,
                started: Some(started_release),
            }),
        ) => (
            NewRelease {
                slot,
                release,
                log_path,
                started: None,
            },
            started_release,
        ),
        (result, new) => {
            let stop = match result {
                Err(stop) => stop,
                Ok(()) => Stop::Failed(
                    "internal error: the new release was lost before the switch".to_string(),
                ),
            };
            fail_before_traffic(&job, new, stop).await;
            return Outcome::Unchanged;
        }
    };
    let app = job.context.name().to_string();
    let upstream = Upstream::new(
        &app,
        new.slot.as_str(),
        &new.release.version,
        started_release.addr,
    );
    let previous = match rollout::run(&mut job, &new, &started_release, &upstream).await {
        Rollout::Switched { previous } => previous,
        Rollout::Stopped(stop) => {
            let new = NewRelease {
                started: Some(started_release),
                ..new
            };
            fail_before_traffic(&job, Some(new), stop).await;
            return Outcome::Unchanged;
        }
        Rollout::Reverted { state, reason } => {
            retire_reverted(&job, &new, &started_release, &upstream).await;
            step(&job, state, &reason).await;
            run_failure_hooks(&job, Some((new.slot, &new.release.version)), &reason).await;
            return Outcome::Unchanged;
        }
    };

    rollout::run_hooks(
        &job,
        "after_switch",
        &job.context.app.hooks.after_switch,
        &new,
        &started_release,
        None,
    )
    .await;
    job.committed.store(true, Ordering::SeqCst);
    let standby = retire_old(&job, previous).await;
    let live = LiveRelease {
        slot: new.slot,
        release: new.release,
        runtime_id: started_release.runtime_id,
        addr: started_release.addr,
        upstream,
        exited: started_release.exited,
    };
    step(
        &job,
        DeploymentState::Succeeded,
        &format!(
            "{app} {} is live in {} (deployment took {:.2}s)",
            live.release.version,
            live.slot,
            started.elapsed().as_secs_f64()
        ),
    )
    .await;
    Outcome::Succeeded { live, standby }
}

/// Nothing served by the new release yet: stop it, record why, run `on_failure`.
async fn fail_before_traffic(job: &DeploymentJob, new: Option<NewRelease>, stop: Stop) {
    job.context.front.set_preview(job.context.name(), None);
    let (state, reason) = match stop {
        Stop::Failed(reason) => (DeploymentState::Failed, reason),
        Stop::Aborted(reason) => (
            DeploymentState::Aborted,
            format!("{reason}; nothing changed"),
        ),
    };
    let facts = new.as_ref().map(|n| (n.slot, n.release.version.clone()));
    cleanup(job, new).await;
    step(job, state, &reason).await;
    run_failure_hooks(
        job,
        facts
            .as_ref()
            .map(|(slot, version)| (*slot, version.as_str())),
        &reason,
    )
    .await;
}

async fn run_failure_hooks(job: &DeploymentJob, new: Option<(Slot, &str)>, reason: &str) {
    let hooks = &job.context.app.hooks.on_failure;
    if hooks.is_empty() {
        return;
    }
    let env = rollout::hook_env(job, "on_failure", new, None, Some(reason));
    if let Err(why) = rollout::run_hook_list(job, "on_failure", hooks, &env).await {
        tracing::warn!(app = %job.context.name(), deployment = job.record.id, "the on_failure hook failed: {why}");
    }
}

/// After traffic went back to the old release: drain and stop the new one.
async fn retire_reverted(
    job: &DeploymentJob,
    new: &NewRelease,
    started: &StartedRelease,
    upstream: &Upstream,
) {
    let timeout = job.context.app.drain_timeout;
    let drained = job
        .context
        .front
        .drain(job.context.name(), Some(upstream), timeout)
        .await;
    note(job, &drained.message(new.slot, timeout)).await;
    stop_slot(&job.context, new.slot, &started.runtime_id).await;
}

/// Drains the old release, then stops it — or keeps it idle for an instant
/// rollback when `keep_old` is set.
async fn retire_old(job: &DeploymentJob, previous: Option<Arc<Upstream>>) -> Option<Standby> {
    let context = &job.context;
    let old = job.live.as_ref()?;
    let timeout = context.app.drain_timeout;
    let drained = context
        .front
        .drain(context.name(), previous.as_deref(), timeout)
        .await;
    note(job, &drained.message(old.slot, timeout)).await;
    let keep_old = context.app.keep_old;
    if !keep_old.is_zero() && old.exited.exited().is_none() {
        step(
            job,
            DeploymentState::Retiring,
            &format!(
                "keeping {} ({}) running idle for {keep_old:?} for an instant rollback",
                old.slot, old.release.version
            ),
        )
        .await;
        let store = context.store.clone();
        let (name, slot) = (context.name().to_string(), old.slot);
        let _ = blocking(move || store.set_slot_state(&name, slot.as_str(), "standby")).await;
        return Some(Standby {
            slot: old.slot,
            release: old.release.clone(),
            runtime_id: old.runtime_id.clone(),
            addr: old.addr,
            exited: old.exited.clone(),
            log_path: None,
        });
    }
    step(
        job,
        DeploymentState::Retiring,
        &format!("stopping {} ({})", old.slot, old.release.version),
    )
    .await;
    stop_slot(context, old.slot, &old.runtime_id).await;
    None
}

/// An instant rollback: the standby release is already running; one health
/// check and it is ready to take traffic.
async fn reuse_standby(
    job: &mut DeploymentJob,
    standby: Standby,
    new: &mut Option<NewRelease>,
) -> Result<(), Stop> {
    let context = job.context.clone();
    let app = context.name().to_string();
    record_plan(job, standby.release.id, standby.slot).await?;
    let version = standby.release.version.clone();
    let log_path = standby.log_path.clone().unwrap_or_else(|| {
        context
            .logs_dir
            .join(format!("{}-{}.log", standby.slot, version))
    });
    *new = Some(NewRelease {
        slot: standby.slot,
        release: standby.release.clone(),
        log_path,
        started: Some(StartedRelease {
            addr: standby.addr,
            runtime_id: standby.runtime_id.clone(),
            exited: standby.exited.clone(),
        }),
    });
    step(
        job,
        DeploymentState::Checking,
        &format!(
            "instant rollback: {app} {version} is still running idle in {}; checking it once",
            standby.slot
        ),
    )
    .await;
    if let Some(how) = standby.exited.exited() {
        return Err(Stop::Failed(format!(
            "the idle release {version} in {} {how}",
            standby.slot
        )));
    }
    until_cancelled(job, health::check(standby.addr, &context.app.health))
        .await?
        .map_err(|why| {
            Stop::Failed(format!(
                "the idle release {version} in {} failed its health check: {why}",
                standby.slot
            ))
        })
}

async fn prepare_and_check(
    job: &mut DeploymentJob,
    new: &mut Option<NewRelease>,
) -> Result<(), Stop> {
    let context = job.context.clone();
    let app = context.name().to_string();
    let version = job.record.version.clone();
    let target = job
        .live
        .as_ref()
        .map_or(Slot::Blue, |live| live.slot.other());
    if let Some(live) = job
        .live
        .as_ref()
        .filter(|l| l.release.version == version && !job.force)
    {
        return Err(Stop::Failed(format!(
            "{app} {version} is already live in {}; nothing to do",
            live.slot
        )));
    }

    step(
        job,
        DeploymentState::Preparing,
        &format!("preparing {app} {version} for slot {target}"),
    )
    .await;
    let release = match job.record.release_id {
        Some(id) => {
            let store = context.store.clone();
            blocking(move || store.release(id)).await.ok().flatten()
        }
        None => None,
    };
    let release = match release {
        Some(release) => release,
        // Built from git: the build runs here, in `preparing` (pipeline.rs).
        None if job.record.source.is_some() => crate::pipeline::build(job).await?,
        None => {
            let store = context.store.clone();
            let (name, driver, v) = (app.clone(), context.driver.name(), version.clone());
            blocking(move || store.insert_release(&name, &v, driver, None))
                .await
                .map_err(|e| Stop::Failed(format!("cannot record the release: {e}")))?
        }
    };
    record_plan(job, release.id, target).await?;

    let log_path = context
        .logs_dir
        .join(format!("{}-{}-{}.log", job.record.id, target, version));
    let spec = ReleaseSpec {
        app: app.clone(),
        slot: target,
        version: version.clone(),
        deployment_id: job.record.id,
        log_path: log_path.clone(),
        artifact: release.artifact.as_ref().map(PathBuf::from),
    };
    until_cancelled(job, context.driver.prepare(&spec))
        .await?
        .map_err(|e| Stop::Failed(format!("preparing {app} {version} failed: {e}")))?;

    retire_leftover(job, target).await;

    step(
        job,
        DeploymentState::Starting,
        &format!("starting {app} {version} in slot {target}"),
    )
    .await;
    let slot_update = SlotUpdate {
        state: "starting".to_string(),
        release_id: Some(release.id),
        log_path: Some(log_path.display().to_string()),
        ..SlotUpdate::default()
    };
    record_slot(&context, target, slot_update).await;
    *new = Some(NewRelease {
        slot: target,
        release: release.clone(),
        log_path: log_path.clone(),
        started: None,
    });
    let started = until_cancelled(job, context.driver.start(&spec))
        .await?
        .map_err(|e| {
            Stop::Failed(format!(
                "could not start {app} {version} in slot {target}: {e}"
            ))
        })?;
    let addr = started.addr;
    record_slot(
        &context,
        target,
        SlotUpdate {
            state: "checking".to_string(),
            release_id: Some(release.id),
            runtime_id: Some(started.runtime_id.clone()),
            addr: Some(addr.to_string()),
            log_path: Some(log_path.display().to_string()),
        },
    )
    .await;
    let mut exited = started.exited.clone();
    let runtime_id = started.runtime_id.clone();
    if let Some(new) = new.as_mut() {
        new.started = Some(started);
    }

    let health = &context.app.health;
    step(
        job,
        DeploymentState::Checking,
        &format!(
            "health-checking {version} at http://{addr}{} (up to {:?})",
            health.path, health.deploy_timeout
        ),
    )
    .await;
    let outcome = until_cancelled(
        job,
        health::wait_until_healthy(
            addr,
            health,
            &mut exited,
            health.deploy_timeout,
            (context.driver.as_ref(), &runtime_id),
        ),
    )
    .await?;
    let tail = || {
        let lines = tail_lines(&log_path, LOG_TAIL_LINES);
        if lines.is_empty() {
            format!(" (its log {} is empty)", log_path.display())
        } else {
            format!("\n--- last lines of {} ---\n{lines}", log_path.display())
        }
    };
    match outcome {
        Ok(took) => {
            note(job, &format!("{version} in {target} is healthy after {:.2}s", took.as_secs_f64())).await;
            Ok(())
        }
        Err(Unhealthy::Exited(how)) => {
            Err(Stop::Failed(format!(
                "{app} {version} in slot {target} {how} before it became healthy{}",
                tail()
            )))
        }
        Err(Unhealthy::TimedOut { after, last }) => Err(Stop::Failed(format!(
            "{app} {version} in slot {target} was not healthy after {:.1}s (deploy_timeout); last check: {last}{}",
            after.as_secs_f64(),
            tail()
        ))),
    }
}

/// Records which release goes to which slot, and what was live before.
async fn record_plan(job: &DeploymentJob, release_id: i64, target: Slot) -> Result<(), Stop> {
    let plan = DeploymentPlan {
        release_id,
        target_slot: target.as_str().to_string(),
        from_release_id: job.live.as_ref().map(|l| l.release.id),
        from_slot: job.live.as_ref().map(|l| l.slot.as_str().to_string()),
    };
    let store = job.context.store.clone();
    let id = job.record.id;
    blocking(move || store.set_deployment_plan(id, &plan))
        .await
        .map_err(|e| Stop::Failed(format!("cannot record the deployment plan: {e}")))
}

/// Something not live may still run in the target slot (left by an
/// earlier failure to stop): stop it before reusing the slot.
async fn retire_leftover(job: &DeploymentJob, target: Slot) {
    let context = &job.context;
    let store = context.store.clone();
    let name = context.name().to_string();
    let Ok(Some(record)) = blocking(move || store.app(&name)).await else {
        return;
    };
    let Some(slot) = record.slot(target.as_str()) else {
        return;
    };
    if let Some(runtime_id) = &slot.runtime_id {
        let version = slot.release.as_ref().map_or("?", |r| r.version.as_str());
        note(
            job,
            &format!("stopping the idle release {version} left in {target}"),
        )
        .await;
        stop_slot(context, target, runtime_id).await;
    }
}

/// Stops a release and records the slot as stopped (keeping its release and log).
pub(crate) async fn stop_slot(context: &AppContext, slot: Slot, runtime_id: &str) {
    if let Err(e) = context.driver.stop(runtime_id).await {
        tracing::error!(app = %context.name(), %slot, "stopping the release failed: {e}");
    }
    let store = context.store.clone();
    let name = context.name().to_string();
    if let Err(e) = blocking(move || store.clear_runtime(&name, slot.as_str(), "stopped")).await {
        tracing::error!(app = %context.name(), %slot, "cannot record the stopped slot: {e}");
    }
}

pub(crate) async fn cleanup(job: &DeploymentJob, new: Option<NewRelease>) {
    let Some(new) = new else { return };
    match &new.started {
        Some(started) => stop_slot(&job.context, new.slot, &started.runtime_id).await,
        None => {
            record_slot(
                &job.context,
                new.slot,
                SlotUpdate {
                    state: "stopped".to_string(),
                    release_id: Some(new.release.id),
                    log_path: Some(new.log_path.display().to_string()),
                    ..SlotUpdate::default()
                },
            )
            .await
        }
    }
}

async fn record_slot(context: &AppContext, slot: Slot, update: SlotUpdate) {
    let store = context.store.clone();
    let name = context.name().to_string();
    if let Err(e) = blocking(move || store.set_slot(&name, slot.as_str(), &update)).await {
        tracing::error!(app = %context.name(), %slot, "cannot record the slot: {e}");
    }
}

/// Runs `work` unless the deployment is aborted first.
pub(crate) async fn until_cancelled<T>(
    job: &mut DeploymentJob,
    work: impl Future<Output = T>,
) -> Result<T, Stop> {
    if *job.cancelled.borrow() {
        return Err(Stop::Aborted(ABORTED_BY_REQUEST.to_string()));
    }
    tokio::select! {
        value = work => Ok(value),
        _ = job.cancelled.wait_for(|cancelled| *cancelled) => Err(Stop::Aborted(ABORTED_BY_REQUEST.to_string())),
    }
}

/// Persists a transition, then publishes it; false when it could not be persisted.
pub(crate) async fn step(job: &DeploymentJob, state: DeploymentState, message: &str) -> bool {
    let store = job.context.store.clone();
    let (id, text) = (job.record.id, message.to_string());
    tracing::info!(app = %job.context.name(), deployment = id, state = state.as_str(), "{message}");
    match blocking(move || store.transition(id, state, &text)).await {
        Ok(event) => {
            job.context.events.publish(event);
            true
        }
        Err(e) => {
            tracing::error!(app = %job.context.name(), deployment = id, "cannot record {}: {e}", state.as_str());
            false
        }
    }
}

pub(crate) async fn note(job: &DeploymentJob, message: &str) {
    let store = job.context.store.clone();
    let (id, text) = (job.record.id, message.to_string());
    match blocking(move || store.note(id, &text)).await {
        Ok(event) => job.context.events.publish(event),
        Err(e) => {
            tracing::error!(app = %job.context.name(), deployment = id, "cannot record a note: {e}")
        }
    }
    tracing::info!(app = %job.context.name(), deployment = job.record.id, "{message}");
}
