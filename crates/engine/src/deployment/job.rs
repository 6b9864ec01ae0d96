//! What a running deployment owns, what each step hands to the next, and
//! how a deployment can end.

use crate::blocking::blocking;
use crate::cancel::{CancelSignal, Interrupt};
use crate::context::{AppContext, Endpoints, LiveRelease, Standby};
use crate::hooks::{self, HookFacts};
use crate::journal::Journal;
use crate::model::Trigger;
use cutover_config::{AppConfig, Slot, VerifyConfig};
use cutover_drivers::StartedRelease;
use cutover_proxy::Upstream;
use cutover_store::{DeploymentPlan, DeploymentRecord, DeploymentState, ReleaseRecord};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// One deployment, owned by its step runner.
pub(crate) struct DeploymentJob {
    pub context: AppContext,
    pub record: DeploymentRecord,
    pub trigger: Trigger,
    pub force: bool,
    /// The release serving when the deployment started.
    pub live: Option<LiveRelease>,
    pub journal: Journal,
    pub cancel: CancelSignal,
    pub promoted: watch::Receiver<bool>,
    /// Set once the old release starts draining: from then on the
    /// deployment can no longer be aborted (only rolled back) and a
    /// shutdown lets it finish.
    pub committed: Arc<AtomicBool>,
    pub started_at: Instant,
}

impl DeploymentJob {
    pub(crate) fn app(&self) -> &str {
        self.context.name()
    }

    pub(crate) fn version(&self) -> &str {
        &self.record.version
    }

    pub(crate) fn is_rollback(&self) -> bool {
        self.trigger == Trigger::Rollback
    }

    /// The live release as `"<slot> (<version>)"`, or `"nothing"`.
    pub(crate) fn live_label(&self) -> String {
        self.live.as_ref().map_or_else(
            || "nothing".to_string(),
            |l| format!("{} ({})", l.slot, l.release.version),
        )
    }

    /// The environment of the hook named `hook`.
    pub(crate) fn hook_env(
        &self,
        hook: &str,
        slot: Option<Slot>,
        addr: Option<SocketAddr>,
        reason: Option<&str>,
    ) -> Vec<(String, String)> {
        HookFacts {
            app: self.app(),
            deployment: self.record.id,
            trigger: &self.record.trigger,
            version: self.version(),
            slot,
            addr,
            previous: self
                .live
                .as_ref()
                .map(|l| (l.slot, l.release.version.as_str())),
            reason,
        }
        .env(hook)
    }

    /// Records which release goes to which slot, and what was live before.
    pub(crate) async fn record_plan(&self, release_id: i64, target: Slot) -> Result<(), Stop> {
        let plan = DeploymentPlan {
            release_id,
            target_slot: target.as_str().to_string(),
            from_release_id: self.live.as_ref().map(|l| l.release.id),
            from_slot: self.live.as_ref().map(|l| l.slot.as_str().to_string()),
        };
        let (store, id) = (self.context.store.clone(), self.record.id);
        blocking(move || store.set_deployment_plan(id, &plan))
            .await
            .map_err(|e| Stop::Failed(format!("cannot record the deployment plan: {e}")))
    }

    /// Runs a hook list; the first failure stops it and says why.
    pub(crate) async fn run_hooks(
        &self,
        name: &str,
        commands: &[Vec<String>],
        env: &[(String, String)],
    ) -> Result<(), String> {
        let context = &self.context;
        let timeout = context.app.hooks.timeout;
        hooks::run_list(
            &self.journal,
            &context.work_dir,
            timeout,
            name,
            commands,
            env,
        )
        .await
    }
}

/// The release placed in the target slot, not running yet.
pub(crate) struct Placed {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub log_path: PathBuf,
}

/// The new release, running in its slot.
pub(crate) struct Candidate {
    pub placed: Placed,
    pub started: StartedRelease,
    pub upstream: Arc<Upstream>,
}

impl Candidate {
    /// The new release with its upstream over the endpoints it has now
    /// (endpoints that join later are added by the live monitor once
    /// their checks pass).
    pub(crate) fn new(app: &AppConfig, placed: Placed, started: StartedRelease) -> Candidate {
        let upstream = crate::context::upstream(
            app,
            placed.slot,
            &placed.release.version,
            &started.current_endpoints(),
        );
        Candidate {
            placed,
            started,
            upstream,
        }
    }

    pub(crate) fn slot(&self) -> Slot {
        self.placed.slot
    }

    pub(crate) fn version(&self) -> &str {
        &self.placed.release.version
    }

    pub(crate) fn endpoints(&self) -> Endpoints {
        Endpoints::of(&self.started)
    }

    /// The first endpoint (hooks' `CUTOVER_ADDR`).
    pub(crate) fn first_addr(&self) -> Option<SocketAddr> {
        self.endpoints().first_addr()
    }
}

/// Traffic is on the new release.
pub(crate) struct Switched {
    pub new: Candidate,
    /// The upstream that served before the switch (to drain).
    pub previous: Option<Arc<Upstream>>,
    /// The verification to run before the old release is let go.
    pub verify: Option<VerifyConfig>,
}

pub(crate) enum Outcome {
    Succeeded {
        live: LiveRelease,
        standby: Option<Standby>,
    },
    /// Failed, aborted or rolled back: the release serving before serves again.
    Unchanged,
}

/// Why a deployment stopped before traffic moved.
pub(crate) enum Stop {
    Failed(String),
    Aborted(String),
}

impl From<Interrupt> for Stop {
    fn from(why: Interrupt) -> Stop {
        Stop::Aborted(why.reason().to_string())
    }
}

/// What the new release left behind when a deployment stops before traffic.
pub(crate) enum Leftover {
    Nothing,
    Placed(Placed),
    Running(Candidate),
}

/// How a deployment ends early.
pub(crate) enum Halt {
    /// Stopped before any regular traffic reached the new release.
    BeforeTraffic { stop: Stop, leftover: Leftover },
    /// Traffic reached the new release and has been moved back.
    Reverted {
        new: Candidate,
        state: DeploymentState,
        reason: String,
    },
}

impl Halt {
    pub(crate) fn before_traffic(stop: Stop, leftover: Leftover) -> Halt {
        Halt::BeforeTraffic { stop, leftover }
    }
}
