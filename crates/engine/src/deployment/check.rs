//! `checking`: the new release must pass its health check before any
//! traffic goes to it (invariant 1) — polled until healthy or
//! `deploy_timeout`, or once for a release kept idle under `keep_old`.

use super::job::{Candidate, DeploymentJob, Halt, Leftover, Placed, Stop};
use crate::context::Standby;
use crate::health::{self, Unhealthy};
use crate::log_tail::tail_lines;
use cutover_drivers::StartedRelease;
use cutover_store::DeploymentState;
use std::path::Path;

/// Lines of the release's log quoted in a failure reason.
const LOG_TAIL_LINES: usize = 20;

pub(crate) async fn check(job: &mut DeploymentJob, new: Candidate) -> Result<Candidate, Halt> {
    match wait_until_healthy(job, &new).await {
        Ok(()) => Ok(new),
        Err(stop) => Err(Halt::before_traffic(stop, Leftover::Running(new))),
    }
}

async fn wait_until_healthy(job: &mut DeploymentJob, new: &Candidate) -> Result<(), Stop> {
    let (app, version, target) = (job.app().to_string(), new.version().to_string(), new.slot());
    let health = job.context.app.health.clone();
    let endpoints = new.endpoints();
    let checking = format!(
        "health-checking {version} at {} ({} on each, up to {:?})",
        endpoints.describe(),
        health.path,
        health.deploy_timeout
    );
    job.journal.step(DeploymentState::Checking, &checking).await;
    let mut exited = new.started.exited.clone();
    let runtime = (job.context.driver.as_ref(), new.started.runtime_id.as_str());
    let current = move || endpoints.current();
    let polling = health::wait_until_healthy(
        &current,
        &health,
        &mut exited,
        health.deploy_timeout,
        runtime,
    );
    let log_path = &new.placed.log_path;
    match job.cancel.until(polling).await? {
        Ok(took) => {
            let healthy = format!("{version} in {target} is healthy after {:.2}s", took.as_secs_f64());
            job.journal.note(&healthy).await;
            Ok(())
        }
        Err(Unhealthy::Exited(how)) => Err(Stop::Failed(format!(
            "{app} {version} in slot {target} {how} before it became healthy{}",
            log_tail(log_path)
        ))),
        Err(Unhealthy::TimedOut { after, last }) => Err(Stop::Failed(format!(
            "{app} {version} in slot {target} was not healthy after {:.1}s (deploy_timeout); last check: {last}{}",
            after.as_secs_f64(),
            log_tail(log_path)
        ))),
    }
}

/// The end of the release's log, for a failure reason.
fn log_tail(log_path: &Path) -> String {
    let lines = tail_lines(log_path, LOG_TAIL_LINES);
    if lines.is_empty() {
        format!(" (its log {} is empty)", log_path.display())
    } else {
        format!("\n--- last lines of {} ---\n{lines}", log_path.display())
    }
}

/// An instant rollback: the standby release is already running; one health
/// check and it is ready to take traffic.
pub(crate) async fn check_standby(
    job: &mut DeploymentJob,
    standby: Standby,
) -> Result<Candidate, Halt> {
    if let Err(stop) = job.record_plan(standby.release.id, standby.slot).await {
        return Err(Halt::before_traffic(stop, Leftover::Nothing));
    }
    let log_path = standby.log_path.clone().unwrap_or_else(|| {
        let file = format!("{}-{}.log", standby.slot, standby.release.version);
        job.context.logs_dir.join(file)
    });
    let started = StartedRelease {
        endpoints: standby.endpoints.initial.clone(),
        endpoint_changes: standby.endpoints.changes.clone(),
        runtime_id: standby.runtime_id.clone(),
        exited: standby.exited.clone(),
    };
    let placed = Placed {
        slot: standby.slot,
        release: standby.release,
        log_path,
    };
    let new = Candidate::new(&job.context.app, placed, started);
    match check_once(job, &new).await {
        Ok(()) => Ok(new),
        Err(stop) => Err(Halt::before_traffic(stop, Leftover::Running(new))),
    }
}

async fn check_once(job: &mut DeploymentJob, new: &Candidate) -> Result<(), Stop> {
    let (version, slot) = (new.version().to_string(), new.slot());
    let checking = format!(
        "instant rollback: {} {version} is still running idle in {slot}; checking it once",
        job.app()
    );
    job.journal.step(DeploymentState::Checking, &checking).await;
    if let Some(how) = new.started.exited.exited() {
        return Err(Stop::Failed(format!(
            "the idle release {version} in {slot} {how}"
        )));
    }
    let health = job.context.app.health.clone();
    job.cancel
        .until(health::check_all(&new.endpoints().current(), &health))
        .await?
        .map_err(|why| {
            Stop::Failed(format!(
                "the idle release {version} in {slot} failed its health check: {why}"
            ))
        })
}
