//! One deployment as an explicit state machine. The runner below owns the
//! job and moves it through [`Stage`]s; each stage is one function in a
//! module of its own that does that step's work, records its transition in
//! the journal first ("persist, then act") and hands the next stage what
//! it needs — so a stage can only hold what exists at that point (no
//! "release was lost" state). Steps call down into the journal, hooks,
//! pipeline, front, driver and store, never back up.
//!
//! ```text
//! stage:  Prepare ─▶ Start ─▶ Check ─▶ Promote ─────────▶ Switch ─▶ [Verify] ─▶ Commit
//! state:  preparing  starting checking [awaiting_promotion] switching verifying   retiring
//!                                                          then draining          succeeded
//!                                                          or verifying
//! rollback: Check ─▶ Switch (no preview, promotion, shift or verification)
//! instant rollback: CheckStandby (checking once) ─▶ Switch
//! ```
//!
//! Any stage before the commit may halt: before traffic reached the new
//! release it is stopped and the reason recorded (`failed`/`aborted`);
//! after (a failed shift step or verification) traffic goes back first
//! (`rolled_back`). An abort or a shutdown interrupts the stage's wait and
//! halts there; a committed deployment runs to its end.

mod check;
mod finish;
pub(crate) mod group;
mod job;
mod prepare;
mod promote;
mod switch;
mod verify;

pub(crate) use job::{Candidate, DeploymentJob, Outcome, Placed};

use crate::context::Standby;
use job::Switched;

/// Where a deployment is, holding exactly what that step works on.
enum Stage {
    /// `preparing`: find or build the release, prepare the target slot.
    Prepare,
    /// `starting`: start the placed release.
    Start(Placed),
    /// `checking`: the started release must become healthy.
    Check(Candidate),
    /// `checking` once: an instant rollback to the release kept idle.
    CheckStandby(Standby),
    /// Preview and, with manual promotion, `awaiting_promotion`.
    Promote(Candidate),
    /// `before_switch` hooks, shift, `switching`.
    Switch(Candidate),
    /// `verifying`: the new release is watched with the old one ready.
    Verify(Switched),
    /// `draining`, `retiring`, `succeeded`: past the point of no abort.
    Commit(Switched),
}

/// Runs the deployment to its end. `standby`: the release kept idle under
/// `keep_old` that this rollback switches back to without starting anything.
pub(crate) async fn run(job: DeploymentJob, standby: Option<Standby>) -> Outcome {
    let stage = match standby {
        Some(standby) => Stage::CheckStandby(standby),
        None => Stage::Prepare,
    };
    run_from(job, stage).await
}

/// Goes on with a deployment that was awaiting promotion when cutover
/// stopped or was upgraded; `new` is its release, still running.
pub(crate) async fn resume_promotion(job: DeploymentJob, new: Candidate) -> Outcome {
    run_from(job, Stage::Promote(new)).await
}

async fn run_from(mut job: DeploymentJob, mut stage: Stage) -> Outcome {
    loop {
        let next = match stage {
            Stage::Prepare => prepare::prepare(&mut job).await.map(Stage::Start),
            Stage::Start(placed) => prepare::start(&mut job, placed).await.map(Stage::Check),
            Stage::Check(new) => check::check(&mut job, new)
                .await
                .map(|new| healthy(&job, new)),
            Stage::CheckStandby(standby) => check::check_standby(&mut job, standby)
                .await
                .map(|new| healthy(&job, new)),
            Stage::Promote(new) => promote::promote(&mut job, new).await.map(Stage::Switch),
            Stage::Switch(new) => switch::switch(&mut job, new).await.map(switched),
            Stage::Verify(switched) => verify::verify(&mut job, switched).await.map(Stage::Commit),
            Stage::Commit(switched) => return finish::commit(&job, switched).await,
        };
        stage = match next {
            Ok(next) => next,
            Err(halt) => return finish::halt(&job, halt).await,
        };
    }
}

/// After `checking`: a rollback switches at once; anything else may be
/// previewed and wait for promotion first.
fn healthy(job: &DeploymentJob, new: Candidate) -> Stage {
    match job.is_rollback() {
        true => Stage::Switch(new),
        false => Stage::Promote(new),
    }
}

fn switched(switched: Switched) -> Stage {
    match switched.verify {
        Some(_) => Stage::Verify(switched),
        None => Stage::Commit(switched),
    }
}
