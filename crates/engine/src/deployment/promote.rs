//! Between healthy and the switch: the preview (requests that ask for it
//! reach the new release) and, with `promotion = "manual"`,
//! `awaiting_promotion` until `cutover promote`, a timer, an abort or the
//! release's exit decides.

use super::job::{Candidate, DeploymentJob, Halt, Leftover, Stop};
use cutover_config::Promotion;
use cutover_proxy::Preview;
use cutover_store::DeploymentState;
use std::time::Duration;

pub(crate) async fn promote(job: &mut DeploymentJob, new: Candidate) -> Result<Candidate, Halt> {
    offer_preview(job, &new).await;
    if job.context.app.promotion == Promotion::Manual {
        if let Err(stop) = await_promotion(job, &new).await {
            return Err(Halt::before_traffic(stop, Leftover::Running(new)));
        }
    }
    Ok(new)
}

async fn offer_preview(job: &DeploymentJob, new: &Candidate) {
    let context = &job.context;
    let Some(preview) = Preview::new(new.upstream.clone(), &context.app.preview_header)
        .filter(|_| context.front.offers_preview())
    else {
        return;
    };
    context.front.set_preview(job.app(), Some(preview));
    let message = format!(
        "preview: requests with `{}: 1` or the cookie `{}=1` now reach {} ({})",
        context.app.preview_header,
        cutover_proxy::PREVIEW_COOKIE,
        new.slot(),
        new.version()
    );
    job.journal.note(&message).await;
}

async fn await_promotion(job: &mut DeploymentJob, new: &Candidate) -> Result<(), Stop> {
    let app = job.context.app.clone();
    let mut timers = Vec::new();
    if let Some(after) = app.auto_promote_after {
        timers.push(format!("promoted automatically after {after:?}"));
    }
    if let Some(after) = app.auto_abort_after {
        timers.push(format!("aborted automatically after {after:?}"));
    }
    let timers = match timers.is_empty() {
        true => String::new(),
        false => format!(" ({})", timers.join(", ")),
    };
    let version = new.version();
    let waiting = format!(
        "{version} is healthy and waiting for `cutover promote {}`{timers}",
        app.name
    );
    job.journal
        .step(DeploymentState::AwaitingPromotion, &waiting)
        .await;
    let mut exited = new.started.exited.clone();
    let promoted = tokio::select! {
        _ = job.promoted.wait_for(|promoted| *promoted) => Ok("promoted by `cutover promote`".to_string()),
        _ = sleep_or_never(app.auto_promote_after) => Ok(format!("promoted automatically after {:?} (auto_promote_after)", app.auto_promote_after.unwrap_or_default())),
        _ = sleep_or_never(app.auto_abort_after) => Err(Stop::Aborted(format!("not promoted within auto_abort_after ({:?})", app.auto_abort_after.unwrap_or_default()))),
        why = job.cancel.interrupted() => Err(Stop::Aborted(format!("{} while awaiting promotion", why.reason()))),
        how = exited.wait() => Err(Stop::Failed(format!("{version} {how} while awaiting promotion"))),
    };
    job.journal.note(&promoted?).await;
    Ok(())
}

async fn sleep_or_never(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}
