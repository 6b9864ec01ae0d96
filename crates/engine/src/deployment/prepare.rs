//! `preparing` and `starting`: the release is found, built from git or
//! recorded, placed in the target slot (the one not live) and started.

use super::job::{Candidate, DeploymentJob, Halt, Leftover, Placed, Stop};
use crate::blocking::blocking;
use crate::pipeline::{self, BuildError, BuildInput, LiveCommit};
use crate::slots::{self, SlotFacts, SlotState};
use cutover_config::Slot;
use cutover_drivers::ReleaseSpec;
use cutover_store::{DeploymentState, ReleaseRecord};
use std::path::PathBuf;

/// `preparing`: the release to deploy (built first when it comes from
/// git), recorded with its target slot, and prepared by the driver (an
/// image pulled or built). Nothing runs in the slot yet.
pub(crate) async fn prepare(job: &mut DeploymentJob) -> Result<Placed, Halt> {
    prepare_release(job)
        .await
        .map_err(|stop| Halt::before_traffic(stop, Leftover::Nothing))
}

async fn prepare_release(job: &mut DeploymentJob) -> Result<Placed, Stop> {
    let (app, version) = (job.app().to_string(), job.version().to_string());
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
    let preparing = format!("preparing {app} {version} for slot {target}");
    job.journal
        .step(DeploymentState::Preparing, &preparing)
        .await;
    let release = find_or_build_release(job).await?;
    job.record_plan(release.id, target).await?;
    let log_path = job
        .context
        .logs_dir
        .join(format!("{}-{}-{}.log", job.record.id, target, version));
    let placed = Placed {
        slot: target,
        release,
        log_path,
    };
    let spec = release_spec(job, &placed);
    job.cancel
        .until(job.context.driver.prepare(&spec))
        .await?
        .map_err(|e| Stop::Failed(format!("preparing {app} {version} failed: {e}")))?;
    retire_leftover(job, target).await;
    Ok(placed)
}

/// The release a rollback names, the one a build from git produces, or a
/// new record for the version asked for.
async fn find_or_build_release(job: &mut DeploymentJob) -> Result<ReleaseRecord, Stop> {
    if let Some(id) = job.record.release_id {
        let store = job.context.store.clone();
        if let Ok(Some(release)) = blocking(move || store.release(id)).await {
            return Ok(release);
        }
    }
    let artifact = match job.record.source.is_some() {
        true => Some(build_from_git(job).await?),
        false => None,
    };
    let store = job.context.store.clone();
    let (name, driver) = (job.app().to_string(), job.context.driver.name());
    let version = job.version().to_string();
    blocking(move || {
        let artifact_path = artifact.as_ref().and_then(|b| b.artifact.as_ref());
        let shown = artifact_path.map(|p| p.display().to_string());
        let release = store.insert_release(&name, &version, driver, shown.as_deref())?;
        if let Some(built) = &artifact {
            store.set_release_commit(release.id, &built.commit)?;
        }
        Ok(release)
    })
    .await
    .map_err(|e| Stop::Failed(format!("cannot record the release: {e}")))
}

/// Builds the deployment's commit (pipeline.rs), in `preparing`.
async fn build_from_git(job: &mut DeploymentJob) -> Result<pipeline::Built, Stop> {
    let app = job.app().to_string();
    let Some(source) = job.context.app.source.clone() else {
        return Err(Stop::Failed(format!(
            "app `{app}` has no [app.source] any more; cannot build"
        )));
    };
    let Some(facts) = job.record.source.clone() else {
        return Err(Stop::Failed(format!(
            "deployment {} has no source facts",
            job.record.id
        )));
    };
    let live = match job.force {
        true => None,
        false => live_commit(job).await,
    };
    let input = BuildInput {
        app: &app,
        source: &source,
        facts: &facts,
        version: &job.record.version,
        deployment_id: job.record.id,
        logs_dir: &job.context.logs_dir,
        live,
        force: job.force,
    };
    match pipeline::build(&input, &job.journal, &mut job.cancel).await {
        Ok(built) => Ok(built),
        Err(BuildError::Failed(why)) => Err(Stop::Failed(why)),
        Err(BuildError::Skipped(why)) => Err(Stop::Aborted(why)),
        Err(BuildError::Interrupted(why)) => Err(why.into()),
    }
}

/// The commit of the live release, when it was built from git.
async fn live_commit(job: &DeploymentJob) -> Option<LiveCommit> {
    let live = job.live.as_ref()?;
    let store = job.context.store.clone();
    let release_id = live.release.id;
    let commit = blocking(move || store.release_commit(release_id))
        .await
        .ok()
        .flatten()?;
    Some(LiveCommit {
        commit,
        version: live.release.version.clone(),
    })
}

/// `starting`: the slot is recorded as starting, then the driver starts
/// the release there.
pub(crate) async fn start(job: &mut DeploymentJob, placed: Placed) -> Result<Candidate, Halt> {
    let (app, version, target) = (
        job.app().to_string(),
        job.version().to_string(),
        placed.slot,
    );
    let starting = format!("starting {app} {version} in slot {target}");
    job.journal.step(DeploymentState::Starting, &starting).await;
    let facts = SlotFacts {
        release_id: Some(placed.release.id),
        log_path: Some(placed.log_path.display().to_string()),
        ..SlotFacts::default()
    };
    slots::record(&job.context, target, SlotState::Starting, facts.clone()).await;
    let spec = release_spec(job, &placed);
    let started = match job.cancel.until(job.context.driver.start(&spec)).await {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => {
            let why = format!("could not start {app} {version} in slot {target}: {e}");
            return Err(Halt::before_traffic(
                Stop::Failed(why),
                Leftover::Placed(placed),
            ));
        }
        Err(why) => return Err(Halt::before_traffic(why.into(), Leftover::Placed(placed))),
    };
    let endpoints = crate::context::Endpoints::of(&started);
    let facts = SlotFacts {
        runtime_id: Some(started.runtime_id.clone()),
        addr: endpoints.first_addr().map(|a| a.to_string()),
        endpoints: endpoints.records(),
        ..facts
    };
    slots::record(&job.context, target, SlotState::Checking, facts).await;
    Ok(Candidate::new(&job.context.app, placed, started))
}

fn release_spec(job: &DeploymentJob, placed: &Placed) -> ReleaseSpec {
    ReleaseSpec {
        app: job.app().to_string(),
        slot: placed.slot,
        version: job.version().to_string(),
        deployment_id: job.record.id,
        log_path: placed.log_path.clone(),
        artifact: placed.release.artifact.as_ref().map(PathBuf::from),
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
        let message = format!("stopping the idle release {version} left in {target}");
        job.journal.note(&message).await;
        slots::stop(context, target, runtime_id).await;
    }
}
