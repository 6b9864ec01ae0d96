//! How a deployment ends. Committed: `after_switch` hooks, the old release
//! drained, then stopped or kept idle (`retiring`), `succeeded`. Halted:
//! the new release cleaned up and the reason recorded, with `on_failure`
//! hooks — the release that served before serves on.

use super::job::{Candidate, DeploymentJob, Halt, Leftover, Outcome, Stop, Switched};
use crate::context::{LiveRelease, Standby};
use crate::slots::{self, SlotFacts, SlotState};
use cutover_config::Slot;
use cutover_proxy::Upstream;
use cutover_store::DeploymentState;
use std::sync::atomic::Ordering;

/// From the committed switch to `succeeded`. Runs to its end even during
/// a shutdown: bounded by the drain timeout and the old release's stop.
pub(crate) async fn commit(job: &DeploymentJob, switched: Switched) -> Outcome {
    let Switched { new, previous, .. } = switched;
    run_after_switch_hooks(job, &new).await;
    job.committed.store(true, Ordering::SeqCst);
    let standby = retire_old(job, previous.as_deref()).await;
    let live = LiveRelease {
        slot: new.slot(),
        endpoints: new.endpoints(),
        release: new.placed.release,
        runtime_id: new.started.runtime_id,
        upstream: new.upstream,
        exited: new.started.exited,
    };
    let succeeded = format!(
        "{} {} is live in {} (deployment took {:.2}s)",
        job.app(),
        live.release.version,
        live.slot,
        job.started_at.elapsed().as_secs_f64()
    );
    job.journal
        .step(DeploymentState::Succeeded, &succeeded)
        .await;
    Outcome::Succeeded { live, standby }
}

/// `after_switch` hooks: their failure is reported but changes nothing.
async fn run_after_switch_hooks(job: &DeploymentJob, new: &Candidate) {
    let hooks = &job.context.app.hooks.after_switch;
    if hooks.is_empty() {
        return;
    }
    let env = job.hook_env("after_switch", Some(new.slot()), new.first_addr(), None);
    if let Err(why) = job.run_hooks("after_switch", hooks, &env).await {
        let message = format!("the after_switch hook failed ({why}); the deployment goes on");
        job.journal.note(&message).await;
    }
}

/// Drains the old release, then stops it — or keeps it idle for an instant
/// rollback when `keep_old` is set.
async fn retire_old(job: &DeploymentJob, previous: Option<&Upstream>) -> Option<Standby> {
    let context = &job.context;
    let old = job.live.as_ref()?;
    let timeout = context.app.drain_timeout;
    let drained = context.front.drain(context.name(), previous, timeout).await;
    job.journal.note(&drained.message(old.slot, timeout)).await;
    let keep_old = context.app.keep_old;
    if keep_old.is_zero() || old.exited.exited().is_some() {
        let stopping = format!("stopping {} ({})", old.slot, old.release.version);
        job.journal.step(DeploymentState::Retiring, &stopping).await;
        slots::stop(context, old.slot, &old.runtime_id).await;
        return None;
    }
    let keeping = format!(
        "keeping {} ({}) running idle for {keep_old:?} for an instant rollback",
        old.slot, old.release.version
    );
    job.journal.step(DeploymentState::Retiring, &keeping).await;
    slots::set_state(context, old.slot, SlotState::Standby).await;
    Some(Standby {
        slot: old.slot,
        release: old.release.clone(),
        runtime_id: old.runtime_id.clone(),
        endpoints: old.endpoints.clone(),
        exited: old.exited.clone(),
        log_path: None,
    })
}

/// Ends a deployment that stopped early; nothing it leaves serves traffic.
pub(crate) async fn halt(job: &DeploymentJob, halt: Halt) -> Outcome {
    match halt {
        Halt::BeforeTraffic { stop, leftover } => fail_before_traffic(job, stop, leftover).await,
        Halt::Reverted { new, state, reason } => {
            retire_reverted(job, &new).await;
            job.journal.step(state, &reason).await;
            run_failure_hooks(job, Some(new.slot()), &reason).await;
        }
    }
    Outcome::Unchanged
}

/// Nothing served by the new release yet: stop it, record why, run `on_failure`.
async fn fail_before_traffic(job: &DeploymentJob, stop: Stop, leftover: Leftover) {
    job.context.front.set_preview(job.app(), None);
    let (state, reason) = match stop {
        Stop::Failed(reason) => (DeploymentState::Failed, reason),
        Stop::Aborted(reason) => (
            DeploymentState::Aborted,
            format!("{reason}; nothing changed"),
        ),
    };
    let slot = clean_up(job, leftover).await;
    job.journal.step(state, &reason).await;
    run_failure_hooks(job, slot, &reason).await;
}

/// Stops what the new release left; returns its slot.
async fn clean_up(job: &DeploymentJob, leftover: Leftover) -> Option<Slot> {
    match leftover {
        Leftover::Nothing => None,
        Leftover::Running(new) => {
            slots::stop(&job.context, new.slot(), &new.started.runtime_id).await;
            Some(new.slot())
        }
        Leftover::Placed(placed) => {
            let facts = SlotFacts {
                release_id: Some(placed.release.id),
                log_path: Some(placed.log_path.display().to_string()),
                ..SlotFacts::default()
            };
            slots::record(&job.context, placed.slot, SlotState::Stopped, facts).await;
            Some(placed.slot)
        }
    }
}

/// After traffic went back to the old release: drain and stop the new one.
async fn retire_reverted(job: &DeploymentJob, new: &Candidate) {
    let timeout = job.context.app.drain_timeout;
    let drained = job
        .context
        .front
        .drain(job.app(), Some(&new.upstream), timeout)
        .await;
    job.journal
        .note(&drained.message(new.slot(), timeout))
        .await;
    slots::stop(&job.context, new.slot(), &new.started.runtime_id).await;
}

async fn run_failure_hooks(job: &DeploymentJob, slot: Option<Slot>, reason: &str) {
    let hooks = &job.context.app.hooks.on_failure;
    if hooks.is_empty() {
        return;
    }
    let env = job.hook_env("on_failure", slot, None, Some(reason));
    if let Err(why) = job.run_hooks("on_failure", hooks, &env).await {
        tracing::warn!(app = %job.app(), deployment = job.record.id, "the on_failure hook failed: {why}");
    }
}
