//! What callers of the engine send and get back, and the engine's names
//! for the strings the store keeps (a trigger is parsed here, once).

use cutover_store::{DeploymentRecord, DeploymentState, EventRecord, SlotRecord};
use serde::Serialize;

/// A request to deploy a version of an app.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub version: String,
    /// Who asked: `cli`, `rollback`, `webhook`, ...
    pub trigger: String,
    /// Deploy even when this version is already live.
    pub force: bool,
    /// For a deployment built from git: the trigger facts (the build runs
    /// in the deployment's `preparing` step).
    pub source: Option<cutover_store::DeploymentSource>,
}

/// A request to build a commit of an app's source and deploy it.
#[derive(Debug, Clone)]
pub struct SourceRequest {
    /// `github`, `gitlab`, `gitea`, `bitbucket`, or `cli`.
    pub provider: String,
    /// The provider's delivery id.
    pub delivery: Option<String>,
    /// The full ref: `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub git_ref: String,
    /// The commit (full sha) the ref pointed at when the push happened.
    pub commit: String,
    /// Deploy even a commit that is live already or older than the live one.
    pub force: bool,
    /// Recorded as the deployment's trigger (`webhook`, `cli`).
    pub trigger: String,
}

/// Health of the live release as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveHealth {
    Healthy,
    Unhealthy,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub hosts: Vec<String>,
    pub driver: &'static str,
    pub live_slot: Option<String>,
    pub live_version: Option<String>,
    pub health: LiveHealth,
    /// Requests in flight on the live release right now.
    pub in_flight: usize,
    /// Where the live release answers: one endpoint for a process or a
    /// container, one per task for a swarm service.
    pub endpoints: Vec<EndpointStatus>,
    /// The release traffic just left, while a deployment drains it (or
    /// keeps it ready during verification); `None` otherwise.
    pub draining: Option<DrainingRelease>,
    /// What happens when the live release dies, and what did.
    pub supervision: Supervision,
    pub current_deployment: Option<DeploymentRecord>,
    /// Ids of deployments waiting behind the current one.
    pub queued: Vec<i64>,
    pub slots: Vec<SlotRecord>,
}

/// One endpoint of the live release as the proxy sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The task and node (`web-green.1.k3j4h5@node-1`), or `pid 1234`, or
    /// the container.
    pub label: String,
    pub addr: String,
    /// In rotation: its checks pass and it is not ejected after refusing
    /// connections.
    pub healthy: bool,
    pub in_flight: usize,
    /// Requests sent to it, and those that failed on it.
    pub requests: u64,
    pub failures: u64,
}

/// The supervision of the live release (`[[app]] restart`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Supervision {
    /// `on-failure` or `never`.
    pub restart: &'static str,
    /// Who restarts it: `cutover`, or `swarm` (the orchestrator replaces
    /// tasks; cutover follows the endpoints).
    pub by: &'static str,
    /// `watching`, `backing_off`, `restarting`, `switching_to_standby`,
    /// `gave_up` or `down`.
    pub state: &'static str,
    /// Restarts that brought the live release back since the daemon started.
    pub restarts: u64,
    /// Restart attempts that did not (never started or never healthy).
    pub failed_restarts: u64,
    /// Restart attempts within the current window, of `limit`.
    pub recent: u32,
    pub limit: u32,
    pub window_ms: u64,
    /// While backing off: the wait left before the next restart.
    pub next_restart_in_ms: Option<u64>,
    /// How the live release ended the last time it died.
    pub last_exit: Option<String>,
}

/// The previous live release while the running deployment drains it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DrainingRelease {
    pub slot: String,
    pub version: String,
    /// Requests still in flight on it.
    pub in_flight: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: DeploymentRecord,
    pub events: Vec<EventRecord>,
}

/// Who started a deployment, as far as the engine's rules care: a rollback
/// skips preview, promotion, shifting and verification, and may reuse the
/// release kept idle under `keep_old`. Every other trigger (`cli`,
/// `webhook`, a caller's own label) deploys the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Rollback,
    Other,
}

impl Trigger {
    pub(crate) const ROLLBACK: &'static str = "rollback";

    /// The trigger of a stored deployment.
    pub(crate) fn of(record: &DeploymentRecord) -> Trigger {
        if record.trigger == Self::ROLLBACK {
            Trigger::Rollback
        } else {
            Trigger::Other
        }
    }
}

/// The state of a stored deployment (`None` for a name this version of
/// cutover does not know).
pub(crate) fn state_of(record: &DeploymentRecord) -> Option<DeploymentState> {
    DeploymentState::parse(&record.state)
}
