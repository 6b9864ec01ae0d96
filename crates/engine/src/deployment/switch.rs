//! `switching`: `before_switch` hooks, the recorded intent to switch, the
//! gradual shift (when configured), then the switch itself: every new
//! request goes to the new release.

use super::job::{Candidate, DeploymentJob, Halt, Leftover, Stop, Switched};
use super::verify::{self, default_rules};
use crate::slots::SlotState;
use cutover_config::{ShiftConfig, VerifyConfig};
use cutover_store::DeploymentState;

pub(crate) async fn switch(job: &mut DeploymentJob, new: Candidate) -> Result<Switched, Halt> {
    if let Err(stop) = before_switch(job, &new).await {
        return Err(Halt::before_traffic(stop, Leftover::Running(new)));
    }
    let shift = match job.is_rollback() {
        true => None,
        false => job.context.app.shift.clone(),
    };
    let new = match shift {
        Some(shift) => shift_gradually(job, new, &shift).await?,
        None => new,
    };
    job.context.front.set_preview(job.app(), None);
    crate::context::sync_endpoints(&new.upstream, &new.endpoints());
    let previous = match job
        .context
        .front
        .set_live(job.app(), Some(new.upstream.clone()))
        .await
    {
        Ok(previous) => previous,
        // Only nginx can refuse; then nothing changed.
        Err(why) => {
            let stop = Stop::Failed(format!(
                "switching {} to {} ({}) failed; {} keeps serving: {why}",
                job.app(),
                new.slot(),
                new.version(),
                job.live_label()
            ));
            return Err(Halt::before_traffic(stop, Leftover::Running(new)));
        }
    };
    let verify = match job.is_rollback() {
        true => None,
        false => job.context.app.verify.clone(),
    };
    record_switched(job, &new, &previous, verify.as_ref()).await;
    Ok(Switched {
        new,
        previous,
        verify,
    })
}

/// The `before_switch` hooks, a last look for an abort, and the switch
/// recorded before traffic moves (without that record it must not).
pub(crate) async fn before_switch(job: &mut DeploymentJob, new: &Candidate) -> Result<(), Stop> {
    let env = job.hook_env("before_switch", Some(new.slot()), new.first_addr(), None);
    let hooks = job.context.app.hooks.before_switch.clone();
    if let Err(reason) = job.run_hooks("before_switch", &hooks, &env).await {
        return Err(Stop::Aborted(format!(
            "the before_switch hook failed: {reason}"
        )));
    }
    if let Some(why) = job.cancel.requested() {
        return Err(why.into());
    }
    let switching = format!(
        "switching {} from {} to {} ({})",
        job.app(),
        job.live_label(),
        new.slot(),
        new.version()
    );
    match job
        .journal
        .step(DeploymentState::Switching, &switching)
        .await
    {
        true => Ok(()),
        false => Err(Stop::Failed(
            "the switch could not be recorded in the state store; nothing changed".to_string(),
        )),
    }
}

/// `shift`: a growing share of new clients (sticky) reaches the new
/// release, each step verified; a failed step moves all traffic back.
async fn shift_gradually(
    job: &mut DeploymentJob,
    new: Candidate,
    shift: &ShiftConfig,
) -> Result<Candidate, Halt> {
    let rules = VerifyConfig {
        window: shift.every,
        command: None,
        ..job.context.app.verify.clone().unwrap_or_else(default_rules)
    };
    let (app, front) = (job.app().to_string(), job.context.front.clone());
    for percent in shift.steps.iter().copied().filter(|p| *p < 100) {
        front.set_preview(&app, None);
        front.set_canary(&app, Some((new.upstream.clone(), percent)));
        let message = format!(
            "{percent}% of new clients now reach {} ({}), sticky by the cookie `{}`; verifying for {:?}",
            new.slot(),
            new.version(),
            cutover_proxy::STICKY_COOKIE,
            shift.every
        );
        job.journal.note(&message).await;
        match verify::watch(job, &new, &rules).await {
            Ok(summary) => {
                let passed = format!("step {percent}% passed: {summary}");
                job.journal.note(&passed).await;
            }
            Err(failure) => {
                front.set_canary(&app, None);
                let reason = format!(
                    "{} at the {percent}% step; all traffic is back on {}",
                    failure.reason,
                    job.live_label()
                );
                return Err(Halt::Reverted {
                    new,
                    state: failure.state,
                    reason,
                });
            }
        }
    }
    Ok(new)
}

/// Records the new live slot with the deployment's next state:
/// `verifying` (the old slot stays ready) or `draining`.
async fn record_switched(
    job: &DeploymentJob,
    new: &Candidate,
    previous: &Option<std::sync::Arc<cutover_proxy::Upstream>>,
    verify: Option<&VerifyConfig>,
) {
    let version = new.version();
    let in_flight = previous.as_ref().map_or(0, |p| p.in_flight());
    let message = match (&job.live, verify) {
        (Some(old), Some(v)) => format!(
            "{} ({version}) is live; {} ({}) stays ready while {version} is verified for {:?}",
            new.slot(), old.slot, old.release.version, v.window
        ),
        (Some(old), None) if job.context.front.is_nginx() => format!(
            "{} ({version}) is live; draining {} ({}) until the nginx workers that served before the reload have exited",
            new.slot(), old.slot, old.release.version
        ),
        (Some(old), None) => format!(
            "{} ({version}) is live; draining {} ({}) with {in_flight} request(s) in flight",
            new.slot(), old.slot, old.release.version
        ),
        (None, _) => format!("{} ({version}) is live", new.slot()),
    };
    let (state, old_state) = match verify {
        Some(_) => (DeploymentState::Verifying, SlotState::Standby),
        None => (DeploymentState::Draining, SlotState::Draining),
    };
    job.journal
        .switch(Some(new.slot()), old_state, state, &message)
        .await;
}
