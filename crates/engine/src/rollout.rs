//! From "the new release is healthy" to "traffic is on it for good":
//! preview, promotion, `before_switch` hooks, gradual shifting, the switch,
//! verification, and the way back when any of them says no.

use crate::deployment::{note, step, DeploymentJob, NewRelease, Stop};
use crate::engine::blocking;
use crate::health;
use crate::hooks;
use cutover_config::{Promotion, Slot, VerifyConfig};
use cutover_drivers::StartedRelease;
use cutover_proxy::{Preview, Upstream};
use cutover_store::DeploymentState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Health checks that must fail in a row before verification gives up.
const FAILED_CHECKS_TO_ROLL_BACK: u32 = 2;
/// How often the error ratio is looked at during verification.
const VERIFY_TICK: Duration = Duration::from_millis(250);

pub(crate) enum Rollout {
    /// Traffic is on the new release for good; `previous` is the old one's upstream.
    Switched { previous: Option<Arc<Upstream>> },
    /// Stopped before any regular traffic reached the new release.
    Stopped(Stop),
    /// Traffic reached the new release and has been moved back.
    Reverted {
        state: DeploymentState,
        reason: String,
    },
}

pub(crate) async fn run(
    job: &mut DeploymentJob,
    new: &NewRelease,
    started: &StartedRelease,
    upstream: &Arc<Upstream>,
) -> Rollout {
    let context = job.context.clone();
    let app = context.name();
    let version = new.release.version.clone();
    let rollback = job.is_rollback();

    if !rollback {
        let preview = Preview::new(upstream.clone(), &context.app.preview_header)
            .filter(|_| context.front.offers_preview());
        if let Some(preview) = preview {
            context.front.set_preview(app, Some(preview));
            note(
                job,
                &format!(
                    "preview: requests with `{}: 1` or the cookie `{}=1` now reach {} ({version})",
                    context.app.preview_header,
                    cutover_proxy::PREVIEW_COOKIE,
                    new.slot
                ),
            )
            .await;
        }
        if context.app.promotion == Promotion::Manual {
            if let Err(stop) = await_promotion(job, started, &version).await {
                return Rollout::Stopped(stop);
            }
        }
    }

    let env = hook_env(
        job,
        "before_switch",
        Some((new.slot, &version)),
        Some(started.addr),
        None,
    );
    if let Err(reason) =
        run_hook_list(job, "before_switch", &context.app.hooks.before_switch, &env).await
    {
        return Rollout::Stopped(Stop::Aborted(format!(
            "the before_switch hook failed: {reason}"
        )));
    }
    if *job.cancelled.borrow() {
        return Rollout::Stopped(Stop::Aborted(
            "aborted by request (`cutover abort`)".to_string(),
        ));
    }

    let from = job.live.as_ref().map_or_else(
        || "nothing".to_string(),
        |l| format!("{} ({})", l.slot, l.release.version),
    );
    // The switch is recorded before traffic moves; without that record it must not.
    if !step(
        job,
        DeploymentState::Switching,
        &format!("switching {app} from {from} to {} ({version})", new.slot),
    )
    .await
    {
        return Rollout::Stopped(Stop::Failed(
            "the switch could not be recorded in the state store; nothing changed".to_string(),
        ));
    }

    let shift = if rollback {
        None
    } else {
        context.app.shift.clone()
    };
    if let Some(shift) = shift {
        let rules = context.app.verify.clone().unwrap_or_else(default_rules);
        let rules = VerifyConfig {
            window: shift.every,
            command: None,
            ..rules
        };
        for percent in shift.steps.iter().copied().filter(|p| *p < 100) {
            context.front.set_preview(app, None);
            context
                .front
                .set_canary(app, Some((upstream.clone(), percent)));
            note(
                job,
                &format!(
                    "{percent}% of new clients now reach {} ({version}), sticky by the cookie `{}`; verifying for {:?}",
                    new.slot,
                    cutover_proxy::STICKY_COOKIE,
                    shift.every
                ),
            )
            .await;
            match verify_window(job, upstream, started, &rules).await {
                Ok(summary) => note(job, &format!("step {percent}% passed: {summary}")).await,
                Err(failure) => {
                    context.front.set_canary(app, None);
                    let reason = format!(
                        "{} at the {percent}% step; all traffic is back on {from}",
                        failure.reason
                    );
                    return Rollout::Reverted {
                        state: failure.state,
                        reason,
                    };
                }
            }
        }
    }

    context.front.set_preview(app, None);
    let previous = match context.front.set_live(app, Some(upstream.clone())).await {
        Ok(previous) => previous,
        // Only nginx can refuse; then nothing changed.
        Err(why) => {
            return Rollout::Stopped(Stop::Failed(format!(
                "switching {app} to {} ({version}) failed; {from} keeps serving: {why}",
                new.slot
            )))
        }
    };
    let verify = if rollback {
        None
    } else {
        context.app.verify.clone()
    };
    let in_flight = previous.as_ref().map_or(0, |p| p.in_flight());
    let message = match (&job.live, &verify) {
        (Some(old), Some(v)) => format!(
            "{} ({version}) is live; {} ({}) stays ready while {version} is verified for {:?}",
            new.slot, old.slot, old.release.version, v.window
        ),
        (Some(old), None) if context.front.is_nginx() => format!(
            "{} ({version}) is live; draining {} ({}) until the nginx workers that served before the reload have exited",
            new.slot, old.slot, old.release.version
        ),
        (Some(old), None) => format!(
            "{} ({version}) is live; draining {} ({}) with {in_flight} request(s) in flight",
            new.slot, old.slot, old.release.version
        ),
        (None, _) => format!("{} ({version}) is live", new.slot),
    };
    let (state, old_label) = if verify.is_some() {
        (DeploymentState::Verifying, "standby")
    } else {
        (DeploymentState::Draining, "draining")
    };
    record_live(job, Some(new.slot), old_label, state, &message).await;

    if let Some(rules) = verify {
        match verify_window(job, upstream, started, &rules).await {
            Ok(summary) => note(job, &format!("verification passed: {summary}")).await,
            Err(failure) => {
                if let Err(why) = context.front.set_live(app, previous.clone()).await {
                    // Only nginx can refuse: the new release keeps serving.
                    note(
                        job,
                        &format!(
                            "{}; switching back to {from} FAILED, {} ({version}) stays live: {why}",
                            failure.reason, new.slot
                        ),
                    )
                    .await;
                    return Rollout::Switched { previous };
                }
                let back = job.live.as_ref().map(|l| l.slot);
                let message = format!("{}; switching back to {from}", failure.reason);
                record_live(job, back, "stopping", DeploymentState::Switching, &message).await;
                return Rollout::Reverted {
                    state: failure.state,
                    reason: format!("{}; traffic is back on {from}", failure.reason),
                };
            }
        }
    }
    Rollout::Switched { previous }
}

fn default_rules() -> VerifyConfig {
    VerifyConfig {
        window: Duration::from_secs(30),
        max_error_ratio: 0.05,
        min_requests: 20,
        command: None,
    }
}

async fn await_promotion(
    job: &mut DeploymentJob,
    started: &StartedRelease,
    version: &str,
) -> Result<(), Stop> {
    let app = job.context.app.clone();
    let mut timers = Vec::new();
    if let Some(after) = app.auto_promote_after {
        timers.push(format!("promoted automatically after {after:?}"));
    }
    if let Some(after) = app.auto_abort_after {
        timers.push(format!("aborted automatically after {after:?}"));
    }
    let timers = if timers.is_empty() {
        String::new()
    } else {
        format!(" ({})", timers.join(", "))
    };
    step(
        job,
        DeploymentState::AwaitingPromotion,
        &format!(
            "{version} is healthy and waiting for `cutover promote {}`{timers}",
            app.name
        ),
    )
    .await;
    let sleep_or_never = |after: Option<Duration>| async move {
        match after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    let mut exited = started.exited.clone();
    let outcome = tokio::select! {
        _ = job.promoted.wait_for(|promoted| *promoted) => Ok("promoted by `cutover promote`".to_string()),
        _ = sleep_or_never(app.auto_promote_after) => Ok(format!("promoted automatically after {:?} (auto_promote_after)", app.auto_promote_after.unwrap_or_default())),
        _ = sleep_or_never(app.auto_abort_after) => Err(Stop::Aborted(format!("not promoted within auto_abort_after ({:?})", app.auto_abort_after.unwrap_or_default()))),
        _ = job.cancelled.wait_for(|cancelled| *cancelled) => Err(Stop::Aborted("aborted by request (`cutover abort`) while awaiting promotion".to_string())),
        how = exited.wait() => Err(Stop::Failed(format!("{version} {how} while awaiting promotion"))),
    };
    let message = outcome?;
    note(job, &message).await;
    Ok(())
}

struct VerifyFailure {
    state: DeploymentState,
    reason: String,
}

impl VerifyFailure {
    fn failed(reason: String) -> VerifyFailure {
        VerifyFailure {
            state: DeploymentState::RolledBack,
            reason,
        }
    }
}

/// Watches the new release for `rules.window`: its exit, its health check,
/// its ratio of 5xx answers as measured by the proxy, then the optional
/// external command. Returns a summary of what was seen.
async fn verify_window(
    job: &mut DeploymentJob,
    upstream: &Upstream,
    started: &StartedRelease,
    rules: &VerifyConfig,
) -> Result<String, VerifyFailure> {
    let health = job.context.app.health.clone();
    let version = upstream.release().to_string();
    let base = upstream.stats();
    let deadline = Instant::now() + rules.window;
    let mut next_check = Instant::now() + health.interval;
    let mut failed_checks = 0;
    let mut exited = started.exited.clone();
    let measure = |upstream: &Upstream| {
        let now = upstream.stats();
        let answers = now.requests.saturating_sub(base.requests);
        let errors = now.responses_5xx.saturating_sub(base.responses_5xx);
        (answers, errors)
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(VERIFY_TICK.min(deadline - now)) => {}
            _ = job.cancelled.wait_for(|cancelled| *cancelled) => {
                return Err(VerifyFailure { state: DeploymentState::Aborted, reason: "aborted by request (`cutover abort`) during verification".to_string() });
            }
            how = exited.wait() => return Err(VerifyFailure::failed(format!("{version} {how} during verification"))),
        }
        let (answers, errors) = measure(upstream);
        if answers >= rules.min_requests && errors as f64 > rules.max_error_ratio * answers as f64 {
            return Err(VerifyFailure::failed(format!(
                "verification failed: error ratio {:.1}% ({errors} of {answers} answers were 5xx or upstream errors) is above verify_max_error_ratio {:.1}%",
                100.0 * errors as f64 / answers as f64,
                100.0 * rules.max_error_ratio
            )));
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + health.interval;
            match health::check(started.addr, &health).await {
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
    }
    let (answers, errors) = measure(upstream);
    if let Some(command) = &rules.command {
        let env = hook_env(job, "verify", None, Some(started.addr), None);
        if let Err(reason) =
            run_hook_list(job, "verify_command", std::slice::from_ref(command), &env).await
        {
            return Err(VerifyFailure::failed(format!(
                "verification failed: verify_command: {reason}"
            )));
        }
    }
    let judged = if answers >= rules.min_requests {
        ""
    } else {
        " (too few to judge the error ratio)"
    };
    Ok(format!(
        "{answers} answers, {errors} errors over {:?}{judged}",
        rules.window
    ))
}

/// Persists which slot is live (None: nothing) with the deployment's new
/// state, then publishes the event.
async fn record_live(
    job: &DeploymentJob,
    slot: Option<Slot>,
    old_label: &str,
    state: DeploymentState,
    message: &str,
) {
    let store = job.context.store.clone();
    let (name, id, label, text) = (
        job.context.name().to_string(),
        job.record.id,
        old_label.to_string(),
        message.to_string(),
    );
    match blocking(move || {
        store.record_switch(&name, slot.map(Slot::as_str), &label, id, state, &text)
    })
    .await
    {
        Ok(event) => job.context.events.publish(event),
        Err(e) => tracing::error!(app = %job.context.name(), "cannot record the live slot: {e}"),
    }
}

/// The deployment's facts, for hooks: argv stays as configured, values
/// arrive only through the environment.
pub(crate) fn hook_env(
    job: &DeploymentJob,
    hook: &str,
    new: Option<(Slot, &str)>,
    addr: Option<SocketAddr>,
    reason: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("CUTOVER_HOOK".to_string(), hook.to_string()),
        ("CUTOVER_APP".to_string(), job.context.name().to_string()),
        ("CUTOVER_DEPLOYMENT".to_string(), job.record.id.to_string()),
        ("CUTOVER_TRIGGER".to_string(), job.record.trigger.clone()),
        ("CUTOVER_VERSION".to_string(), job.record.version.clone()),
    ];
    if let Some((slot, _)) = new {
        env.push(("CUTOVER_SLOT".to_string(), slot.as_str().to_string()));
    }
    if let Some(addr) = addr {
        env.push(("CUTOVER_ADDR".to_string(), addr.to_string()));
        env.push(("CUTOVER_URL".to_string(), format!("http://{addr}")));
    }
    if let Some(live) = &job.live {
        env.push((
            "CUTOVER_PREVIOUS_VERSION".to_string(),
            live.release.version.clone(),
        ));
        env.push((
            "CUTOVER_PREVIOUS_SLOT".to_string(),
            live.slot.as_str().to_string(),
        ));
    }
    if let Some(reason) = reason {
        env.push(("CUTOVER_REASON".to_string(), reason.to_string()));
    }
    env
}

/// Runs the hooks in order; the first failure stops the list.
pub(crate) async fn run_hook_list(
    job: &DeploymentJob,
    name: &str,
    commands: &[Vec<String>],
    env: &[(String, String)],
) -> Result<(), String> {
    for argv in commands {
        note(job, &format!("running the {name} hook {argv:?}")).await;
        let run = hooks::run(
            argv,
            &job.context.work_dir,
            env,
            job.context.app.hooks.timeout,
        )
        .await;
        if !run.output.is_empty() {
            note(job, &format!("{name} hook output:\n{}", run.output)).await;
        }
        run.result?;
    }
    Ok(())
}

/// Runs hooks whose failure is reported but changes nothing (`after_switch`).
pub(crate) async fn run_hooks(
    job: &DeploymentJob,
    name: &str,
    commands: &[Vec<String>],
    new: &NewRelease,
    started: &StartedRelease,
    reason: Option<&str>,
) {
    if commands.is_empty() {
        return;
    }
    let env = hook_env(
        job,
        name,
        Some((new.slot, &new.release.version)),
        Some(started.addr),
        reason,
    );
    if let Err(why) = run_hook_list(job, name, commands, &env).await {
        note(
            job,
            &format!("the {name} hook failed ({why}); the deployment goes on"),
        )
        .await;
    }
}
