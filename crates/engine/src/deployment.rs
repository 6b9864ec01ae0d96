//! One deployment, step by step. Every transition is persisted (and then
//! published) before it takes effect; a failure before the switch stops
//! and cleans up the new slot and leaves the live one untouched.

use crate::actor::{AppContext, LiveRelease};
use crate::engine::blocking;
use crate::health::{self, Unhealthy};
use crate::log_tail::tail_lines;
use cutover_config::Slot;
use cutover_drivers::{ReleaseSpec, StartedRelease};
use cutover_proxy::{DrainOutcome, Upstream};
use cutover_store::{DeploymentPlan, DeploymentRecord, DeploymentState, ReleaseRecord, SlotUpdate};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Lines of the release's log quoted in a failure reason.
const LOG_TAIL_LINES: usize = 20;

pub(crate) struct DeploymentJob {
    pub context: AppContext,
    pub record: DeploymentRecord,
    pub force: bool,
    pub live: Option<LiveRelease>,
    pub cancelled: watch::Receiver<bool>,
    /// Set once traffic has moved: from then on the deployment cannot be aborted.
    pub switched: Arc<AtomicBool>,
}

pub(crate) enum Outcome {
    Succeeded(LiveRelease),
    /// Failed or aborted: what serves traffic did not change.
    Unchanged,
}

/// Why a deployment stopped before the switch.
enum Stop {
    Failed(String),
    Aborted,
}

/// The new release, once started, so a failure can clean it up.
struct NewRelease {
    slot: Slot,
    release: ReleaseRecord,
    log_path: PathBuf,
    started: Option<StartedRelease>,
}

pub(crate) async fn run(mut job: DeploymentJob) -> Outcome {
    let started = Instant::now();
    let mut new = None;
    let checked = prepare_and_check(&mut job, &mut new).await;
    let checked = match (checked, new) {
        (Ok(()), Some(new)) => new,
        (result, new) => {
            cleanup(&job, new).await;
            let (state, reason) = match result {
                Err(Stop::Failed(reason)) => (DeploymentState::Failed, reason),
                Err(Stop::Aborted) => (
                    DeploymentState::Aborted,
                    "aborted by request before the switch; nothing changed".to_string(),
                ),
                Ok(()) => (
                    DeploymentState::Failed,
                    "internal error: the new release was lost before the switch".to_string(),
                ),
            };
            step(&job, state, &reason).await;
            return Outcome::Unchanged;
        }
    };
    let app = job.context.name();
    let from = job.live.as_ref().map_or_else(
        || "nothing".to_string(),
        |l| format!("{} ({})", l.slot, l.release.version),
    );
    let switching = format!(
        "switching {app} from {from} to {} ({})",
        checked.slot, checked.release.version
    );
    // The switch is recorded before it happens; without that record, it must not happen.
    if !step(&job, DeploymentState::Switching, &switching).await {
        cleanup(&job, Some(checked)).await;
        step(
            &job,
            DeploymentState::Failed,
            "the switch could not be recorded in the state store; nothing changed",
        )
        .await;
        return Outcome::Unchanged;
    }
    let NewRelease {
        slot,
        release,
        started: Some(new_release),
        ..
    } = checked
    else {
        step(
            &job,
            DeploymentState::Failed,
            "internal error: the checked release has no runtime",
        )
        .await;
        return Outcome::Unchanged;
    };
    let live = switch_and_retire(&job, slot, release, new_release).await;
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
    Outcome::Succeeded(live)
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
        None => {
            let store = context.store.clone();
            let (name, driver, v) = (app.clone(), context.driver.name(), version.clone());
            blocking(move || store.insert_release(&name, &v, driver, None))
                .await
                .map_err(|e| Stop::Failed(format!("cannot record the release: {e}")))?
        }
    };
    let plan = DeploymentPlan {
        release_id: release.id,
        target_slot: target.as_str().to_string(),
        from_release_id: job.live.as_ref().map(|l| l.release.id),
        from_slot: job.live.as_ref().map(|l| l.slot.as_str().to_string()),
    };
    let store = context.store.clone();
    let id = job.record.id;
    blocking(move || store.set_deployment_plan(id, &plan))
        .await
        .map_err(|e| Stop::Failed(format!("cannot record the deployment plan: {e}")))?;

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
        health::wait_until_healthy(addr, health, &mut exited, health.deploy_timeout),
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
            Err(Stop::Failed(format!("{app} {version} in slot {target} {how} before it became healthy{}", tail())))
        }
        Err(Unhealthy::TimedOut { after, last }) => Err(Stop::Failed(format!(
            "{app} {version} in slot {target} was not healthy after {:.1}s (deploy_timeout); last check: {last}{}",
            after.as_secs_f64(),
            tail()
        ))),
    }
}

/// Switches traffic, drains the old release and stops it. Nothing here can
/// undo the switch: failures to stop the old release are reported, not fatal.
async fn switch_and_retire(
    job: &DeploymentJob,
    slot: Slot,
    release: ReleaseRecord,
    started: StartedRelease,
) -> LiveRelease {
    let context = &job.context;
    let app = context.name();
    let upstream = Upstream::new(app, slot.as_str(), &release.version, started.addr);
    let previous = context.router.set_live(app, Some(upstream.clone()));
    job.switched.store(true, Ordering::SeqCst);
    let in_flight = previous.as_ref().map_or(0, |p| p.in_flight());
    let message = match &job.live {
        Some(old) => format!(
            "{slot} ({}) is live; draining {} ({}) with {in_flight} request(s) in flight",
            release.version, old.slot, old.release.version
        ),
        None => format!("{slot} ({}) is live", release.version),
    };
    let store = context.store.clone();
    let (name, id) = (app.to_string(), job.record.id);
    match blocking(move || store.record_switch(&name, slot.as_str(), id, &message)).await {
        Ok(event) => context.events.publish(event),
        Err(e) => tracing::error!(app = %app, "cannot record the switch to {slot}: {e}"),
    }

    if let Some(old) = &job.live {
        let drained = match &previous {
            Some(upstream) => upstream.drain(context.app.drain_timeout).await,
            None => DrainOutcome::Drained {
                waited: std::time::Duration::ZERO,
            },
        };
        let message = match drained {
            DrainOutcome::Drained { waited } => format!("{} drained after {:.3}s", old.slot, waited.as_secs_f64()),
            DrainOutcome::TimedOut { still_in_flight } => format!(
                "{} still had {still_in_flight} request(s) in flight at drain_timeout ({:?}); stopping it anyway",
                old.slot, context.app.drain_timeout
            ),
        };
        note(job, &message).await;
        step(
            job,
            DeploymentState::Retiring,
            &format!("stopping {} ({})", old.slot, old.release.version),
        )
        .await;
        stop_slot(context, old.slot, &old.runtime_id).await;
    }
    LiveRelease {
        slot,
        release,
        runtime_id: started.runtime_id,
        addr: started.addr,
        upstream,
        exited: started.exited,
    }
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

async fn cleanup(job: &DeploymentJob, new: Option<NewRelease>) {
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
async fn until_cancelled<T>(
    job: &mut DeploymentJob,
    work: impl Future<Output = T>,
) -> Result<T, Stop> {
    if *job.cancelled.borrow() {
        return Err(Stop::Aborted);
    }
    tokio::select! {
        value = work => Ok(value),
        _ = job.cancelled.wait_for(|cancelled| *cancelled) => Err(Stop::Aborted),
    }
}

/// Persists a transition, then publishes it; false when it could not be persisted.
async fn step(job: &DeploymentJob, state: DeploymentState, message: &str) -> bool {
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

async fn note(job: &DeploymentJob, message: &str) {
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
