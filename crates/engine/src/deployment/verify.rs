//! `verifying`: after the switch (and at each step of a shift) the new
//! release is watched — its exit, its health checks, its ratio of 5xx
//! answers as the proxy measured them, then the optional external command.
//! A failure switches traffic back to the release that served before.

use super::job::{Candidate, DeploymentJob, Halt, Switched};
use crate::slots::SlotState;
use cutover_config::VerifyConfig;
use cutover_proxy::Upstream;
use cutover_store::DeploymentState;
use std::time::Duration;
use tokio::time::Instant;

/// Health checks that must fail in a row before verification gives up.
const FAILED_CHECKS_TO_ROLL_BACK: u32 = 2;
/// How often the error ratio is looked at during verification.
const VERIFY_TICK: Duration = Duration::from_millis(250);

pub(crate) struct VerifyFailure {
    pub state: DeploymentState,
    pub reason: String,
}

impl VerifyFailure {
    fn failed(reason: String) -> VerifyFailure {
        VerifyFailure {
            state: DeploymentState::RolledBack,
            reason,
        }
    }
}

/// The rules of a shift step when `[app] verify` sets none.
pub(crate) fn default_rules() -> VerifyConfig {
    VerifyConfig {
        window: Duration::from_secs(30),
        max_error_ratio: 0.05,
        min_requests: 20,
        command: None,
    }
}

/// Verifies the switched release; on failure, traffic goes back.
pub(crate) async fn verify(job: &mut DeploymentJob, switched: Switched) -> Result<Switched, Halt> {
    let Some(rules) = switched.verify.clone() else {
        return Ok(switched);
    };
    let failure = match watch(job, &switched.new, &rules).await {
        Ok(summary) => {
            let passed = format!("verification passed: {summary}");
            job.journal.note(&passed).await;
            return Ok(switched);
        }
        Err(failure) => failure,
    };
    let (app, from) = (job.app().to_string(), job.live_label());
    let new = &switched.new;
    if let Err(why) = job
        .context
        .front
        .set_live(&app, switched.previous.clone())
        .await
    {
        // Only nginx can refuse: the new release keeps serving.
        let message = format!(
            "{}; switching back to {from} FAILED, {} ({}) stays live: {why}",
            failure.reason,
            new.slot(),
            new.version()
        );
        job.journal.note(&message).await;
        return Ok(switched);
    }
    let back = job.live.as_ref().map(|l| l.slot);
    let message = format!("{}; switching back to {from}", failure.reason);
    job.journal
        .switch(
            back,
            SlotState::Stopping,
            DeploymentState::Switching,
            &message,
        )
        .await;
    Err(Halt::Reverted {
        new: switched.new,
        state: failure.state,
        reason: format!("{}; traffic is back on {from}", failure.reason),
    })
}

/// Watches the new release for `rules.window`, then runs the external
/// command. Returns a summary of what was seen.
pub(crate) async fn watch(
    job: &mut DeploymentJob,
    new: &Candidate,
    rules: &VerifyConfig,
) -> Result<String, VerifyFailure> {
    let base = new.upstream.stats();
    watch_window(job, new, rules, &base).await?;
    let (answers, errors) = measure(&new.upstream, &base);
    if let Some(command) = &rules.command {
        let env = job.hook_env("verify", None, new.first_addr(), None);
        let commands = std::slice::from_ref(command);
        if let Err(reason) = job.run_hooks("verify_command", commands, &env).await {
            return Err(VerifyFailure::failed(format!(
                "verification failed: verify_command: {reason}"
            )));
        }
    }
    let judged = match answers >= rules.min_requests {
        true => "",
        false => " (too few to judge the error ratio)",
    };
    Ok(format!(
        "{answers} answers, {errors} errors over {:?}{judged}",
        rules.window
    ))
}

/// Answers and 5xx answers of the release since `base`.
fn measure(upstream: &Upstream, base: &cutover_proxy::UpstreamStats) -> (u64, u64) {
    let now = upstream.stats();
    let answers = now.requests.saturating_sub(base.requests);
    let errors = now.responses_5xx.saturating_sub(base.responses_5xx);
    (answers, errors)
}

async fn watch_window(
    job: &mut DeploymentJob,
    new: &Candidate,
    rules: &VerifyConfig,
    base: &cutover_proxy::UpstreamStats,
) -> Result<(), VerifyFailure> {
    let health = job.context.app.health.clone();
    let version = new.version().to_string();
    let deadline = Instant::now() + rules.window;
    let mut next_check = Instant::now() + health.interval;
    let mut failed_checks = 0;
    let mut exited = new.started.exited.clone();
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        tokio::select! {
            _ = tokio::time::sleep(VERIFY_TICK.min(left)) => {}
            why = job.cancel.interrupted() => return Err(VerifyFailure {
                state: DeploymentState::Aborted,
                reason: format!("{} during verification", why.reason()),
            }),
            how = exited.wait() => return Err(VerifyFailure::failed(format!("{version} {how} during verification"))),
        }
        let (answers, errors) = measure(&new.upstream, base);
        if answers >= rules.min_requests && errors as f64 > rules.max_error_ratio * answers as f64 {
            return Err(VerifyFailure::failed(format!(
                "verification failed: error ratio {:.1}% ({errors} of {answers} answers were 5xx or upstream errors) is above verify_max_error_ratio {:.1}%",
                100.0 * errors as f64 / answers as f64,
                100.0 * rules.max_error_ratio
            )));
        }
        if Instant::now() < next_check {
            continue;
        }
        next_check = Instant::now() + health.interval;
        match crate::health::check_all(&new.endpoints().current(), &health).await {
            Ok(()) => failed_checks = 0,
            Err(why) => {
                failed_checks += 1;
                if failed_checks >= FAILED_CHECKS_TO_ROLL_BACK {
                    return Err(VerifyFailure::failed(format!(
                        "verification failed: {failed_checks} health checks in a row failed, last: {why}"
                    )));
                }
            }
        }
    }
    Ok(())
}
