//! Supervision of the live release (`[[app]] restart`): when it dies, it is
//! started again in its slot — the same release, health-gated before it
//! gets traffic again — after an exponential backoff, at most
//! `restart_limit` times within `restart_window`; then cutover gives up and
//! says so. With `on_live_failure = "standby"` a healthy `keep_old`
//! standby takes over instead (the actor queues the instant rollback).
//!
//! [`Supervisor`] is the bookkeeping (pure: attempts, backoff, the state
//! `status` shows); [`restart_in_place`] is the one restart, run as the
//! actor's job so no deployment touches the slots meanwhile. Swarm
//! services are restarted by the orchestrator (task replacement, which the
//! live monitor follows): cutover reports that and never competes with it.

use crate::blocking::blocking;
use crate::context::{AppContext, LiveRelease};
use crate::health::{self, Unhealthy};
use crate::model::Supervision;
use crate::slots::{self, SlotFacts, SlotState};
use cutover_config::{RestartPolicy, SuperviseConfig};
use cutover_drivers::ReleaseSpec;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Who brings a dead live release back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartedBy {
    /// cutover, through the driver (processes, containers).
    Cutover,
    /// The swarm orchestrator replaces tasks itself.
    Orchestrator,
}

impl RestartedBy {
    pub(crate) fn of(driver: &str) -> RestartedBy {
        match driver {
            "swarm" => RestartedBy::Orchestrator,
            _ => RestartedBy::Cutover,
        }
    }
}

/// What the supervisor is doing about the live release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The live release runs (or there is none).
    Watching,
    /// It died; the next restart is due after the backoff.
    BackingOff,
    Restarting,
    /// Switching to the `keep_old` standby.
    SwitchingToStandby,
    /// `restart_limit` restarts within the window did not keep it up.
    GaveUp,
    /// `restart = "never"`: it stays down until a deployment.
    Down,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Watching => "watching",
            Phase::BackingOff => "backing_off",
            Phase::Restarting => "restarting",
            Phase::SwitchingToStandby => "switching_to_standby",
            Phase::GaveUp => "gave_up",
            Phase::Down => "down",
        }
    }
}

/// The decision after the live release died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Restart after this wait (attempt `n` within the window).
    RestartAfter { delay: Duration, attempt: u32 },
    /// Over the limit: stop trying.
    GiveUp,
    /// `restart = "never"`.
    StayDown,
}

/// The bookkeeping of one app's restarts.
#[derive(Debug)]
pub(crate) struct Supervisor {
    config: SuperviseConfig,
    by: RestartedBy,
    /// When each restart within the window was started.
    attempts: VecDeque<Instant>,
    /// Restarts that brought the release back, since the daemon started.
    restarts: u64,
    /// Restart attempts that failed (did not start or never became healthy).
    failed: u64,
    phase: Phase,
    last_exit: Option<String>,
    next_at: Option<Instant>,
}

impl Supervisor {
    pub(crate) fn new(config: SuperviseConfig, by: RestartedBy) -> Supervisor {
        Supervisor {
            config,
            by,
            attempts: VecDeque::new(),
            restarts: 0,
            failed: 0,
            phase: Phase::Watching,
            last_exit: None,
            next_at: None,
        }
    }

    pub(crate) fn by(&self) -> RestartedBy {
        self.by
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The live release died (`how`): restart it, give up, or stay down.
    pub(crate) fn died(&mut self, how: &str, now: Instant) -> Next {
        self.last_exit = Some(how.to_string());
        if self.config.restart == RestartPolicy::Never {
            self.phase = Phase::Down;
            return Next::StayDown;
        }
        while self
            .attempts
            .front()
            .is_some_and(|at| now.duration_since(*at) > self.config.window)
        {
            self.attempts.pop_front();
        }
        let attempt = u32::try_from(self.attempts.len()).unwrap_or(u32::MAX) + 1;
        if attempt > self.config.limit {
            self.phase = Phase::GaveUp;
            self.next_at = None;
            return Next::GiveUp;
        }
        let delay = self.config.delay(attempt);
        self.attempts.push_back(now);
        self.phase = Phase::BackingOff;
        self.next_at = Some(now + delay);
        Next::RestartAfter { delay, attempt }
    }

    pub(crate) fn restarting(&mut self) {
        self.phase = Phase::Restarting;
        self.next_at = None;
    }

    pub(crate) fn switching_to_standby(&mut self, how: &str) {
        self.last_exit = Some(how.to_string());
        self.phase = Phase::SwitchingToStandby;
    }

    /// A restart attempt failed: back to watching, so that the failure is
    /// handled like the release dying again (next backoff, or give up).
    pub(crate) fn replaced_phase_only(&mut self) {
        self.phase = Phase::Watching;
    }

    pub(crate) fn restarted(&mut self) {
        self.restarts += 1;
        self.phase = Phase::Watching;
    }

    pub(crate) fn restart_failed(&mut self) {
        self.failed += 1;
    }

    /// A deployment (or a switch to the standby) put a new live release in
    /// place: the count of attempts starts again.
    pub(crate) fn replaced(&mut self) {
        self.attempts.clear();
        self.phase = Phase::Watching;
        self.next_at = None;
    }

    /// For `status`.
    pub(crate) fn report(&self, now: Instant) -> Supervision {
        Supervision {
            restart: self.config.restart.as_str(),
            by: match self.by {
                RestartedBy::Cutover => "cutover",
                RestartedBy::Orchestrator => "swarm",
            },
            state: self.phase.as_str(),
            restarts: self.restarts,
            failed_restarts: self.failed,
            recent: u32::try_from(self.attempts.len()).unwrap_or(u32::MAX),
            limit: self.config.limit,
            window_ms: millis(self.config.window),
            next_restart_in_ms: self
                .next_at
                .map(|at| millis(at.saturating_duration_since(now))),
            last_exit: self.last_exit.clone(),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Starts the dead live release again in its slot: whatever is left of it
/// is stopped, the same release is started with the same spec, recorded as
/// the slot's live runtime (persist, then act), health-gated like a
/// deployment's new release, and only then routed. On failure the new
/// start is stopped and the reason returned.
pub(crate) async fn restart_in_place(
    context: AppContext,
    dead: LiveRelease,
) -> Result<LiveRelease, String> {
    let app = context.name().to_string();
    let slot = dead.slot;
    // A process group may have left children behind; a no-op when gone.
    if let Err(e) = context.driver.stop(&dead.runtime_id).await {
        tracing::warn!(app = %app, %slot, "stopping what was left of the dead live release failed: {e}");
    }
    let spec = ReleaseSpec {
        app: app.clone(),
        slot,
        version: dead.release.version.clone(),
        deployment_id: 0,
        log_path: log_path(&context, &dead).await,
        artifact: dead.release.artifact.as_ref().map(PathBuf::from),
    };
    let started = context
        .driver
        .start(&spec)
        .await
        .map_err(|e| format!("cannot start {} again in {slot}: {e}", dead.release.version))?;
    let mut live = crate::recovery::live_release(&context, slot, dead.release.clone(), started);
    let facts = SlotFacts {
        release_id: Some(live.release.id),
        runtime_id: Some(live.runtime_id.clone()),
        addr: live.endpoints.first_addr().map(|a| a.to_string()),
        endpoints: live.endpoints.records(),
        log_path: Some(spec.log_path.display().to_string()),
    };
    slots::record(&context, slot, SlotState::Live, facts).await;
    if let Err(why) = gate(&context, &mut live).await {
        slots::stop(&context, slot, &live.runtime_id).await;
        return Err(why);
    }
    crate::context::sync_endpoints(&live.upstream, &live.endpoints);
    if let Err(why) = context
        .front
        .set_live(&app, Some(live.upstream.clone()))
        .await
    {
        // Only nginx refuses; its configuration is unchanged, so its
        // include still names the dead endpoint: try again later.
        slots::stop(&context, slot, &live.runtime_id).await;
        return Err(format!("cannot route to the restarted release: {why}"));
    }
    Ok(live)
}

/// The health gate of the restarted release (as a deployment's).
async fn gate(context: &AppContext, live: &mut LiveRelease) -> Result<(), String> {
    let config = &context.app.health;
    let endpoints = live.endpoints.clone();
    let current = move || endpoints.current();
    let runtime = (context.driver.as_ref(), live.runtime_id.as_str());
    match health::wait_until_healthy(
        &current,
        config,
        &mut live.exited,
        config.deploy_timeout,
        runtime,
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(Unhealthy::Exited(how)) => Err(format!("the restarted release {how}")),
        Err(Unhealthy::TimedOut { after, last }) => Err(format!(
            "the restarted release was not healthy after {:.1}s ({last})",
            after.as_secs_f64()
        )),
    }
}

/// The slot's release log (the restarted release appends to it).
async fn log_path(context: &AppContext, dead: &LiveRelease) -> PathBuf {
    let store = context.store.clone();
    let name = context.name().to_string();
    let slot = dead.slot;
    let recorded = blocking(move || store.app(&name))
        .await
        .ok()
        .flatten()
        .and_then(|record| record.slot(slot.as_str())?.log_path.clone());
    recorded.map(PathBuf::from).unwrap_or_else(|| {
        context.logs_dir.join(format!(
            "restart-{}-{slot}-{}.log",
            cutover_store::now_ms(),
            dead.release.version
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(limit: u32) -> SuperviseConfig {
        SuperviseConfig {
            limit,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
            ..SuperviseConfig::default()
        }
    }

    #[test]
    fn restarts_back_off_and_give_up_over_the_limit_within_the_window() {
        let mut supervisor = Supervisor::new(config(3), RestartedBy::Cutover);
        let start = Instant::now();
        let delays: Vec<Next> = (0..4).map(|_| supervisor.died("exited", start)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [
                Next::RestartAfter {
                    delay: ms(100),
                    attempt: 1
                },
                Next::RestartAfter {
                    delay: ms(200),
                    attempt: 2
                },
                Next::RestartAfter {
                    delay: ms(250),
                    attempt: 3
                },
                Next::GiveUp,
            ]
        );
        assert_eq!(supervisor.report(start).state, "gave_up");
        // Outside the window the count starts again.
        let later = start + Duration::from_secs(61);
        assert_eq!(
            supervisor.died("exited", later),
            Next::RestartAfter {
                delay: ms(100),
                attempt: 1
            }
        );
    }

    #[test]
    fn never_leaves_the_release_down() {
        let mut supervisor = Supervisor::new(
            SuperviseConfig {
                restart: RestartPolicy::Never,
                ..config(3)
            },
            RestartedBy::Cutover,
        );
        assert_eq!(
            supervisor.died("killed by signal SIGKILL", Instant::now()),
            Next::StayDown
        );
        let report = supervisor.report(Instant::now());
        assert_eq!(report.state, "down");
        assert_eq!(
            report.last_exit.as_deref(),
            Some("killed by signal SIGKILL")
        );
    }

    #[test]
    fn a_restart_that_worked_is_counted() {
        let mut supervisor = Supervisor::new(config(3), RestartedBy::Cutover);
        let now = Instant::now();
        supervisor.died("exited", now);
        supervisor.restarting();
        supervisor.restarted();
        let report = supervisor.report(now);
        assert_eq!(
            (report.restarts, report.recent, report.state),
            (1, 1, "watching")
        );
    }
}
