//! Records as stored and read back. Slots and states are kept as their
//! lower-case names so the database stays readable with the sqlite3 CLI.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppRecord {
    pub name: String,
    pub live_slot: Option<String>,
    pub slots: Vec<SlotRecord>,
}

impl AppRecord {
    pub fn slot(&self, slot: &str) -> Option<&SlotRecord> {
        self.slots.iter().find(|s| s.slot == slot)
    }

    pub fn live(&self) -> Option<&SlotRecord> {
        self.live_slot.as_deref().and_then(|slot| self.slot(slot))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotRecord {
    pub slot: String,
    /// `empty`, `starting`, `checking`, `live`, `draining`, `stopping`, `stopped`.
    pub state: String,
    pub release: Option<ReleaseRecord>,
    pub runtime_id: Option<String>,
    /// The first endpoint's address (kept for older readers).
    pub addr: Option<String>,
    /// Where the release answers (one per swarm task); rows written before
    /// endpoints existed give their `addr` as the one endpoint.
    pub endpoints: Vec<EndpointRecord>,
    pub log_path: Option<String>,
    pub updated_at: i64,
}

/// One endpoint of a release as recorded.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    /// `host:port`.
    pub addr: String,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReleaseRecord {
    pub id: i64,
    pub app: String,
    pub version: String,
    pub driver: String,
    pub artifact: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: i64,
    pub app: String,
    /// `cli`, `rollback`, `webhook`, ...
    pub trigger: String,
    pub version: String,
    pub release_id: Option<i64>,
    pub target_slot: Option<String>,
    pub from_release_id: Option<i64>,
    pub from_version: Option<String>,
    pub from_slot: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// What started a deployment built from git (webhook or `deploy --ref`).
    pub source: Option<DeploymentSource>,
    /// The group deployment this one is a member of (release groups).
    pub group_deployment_id: Option<i64>,
}

/// A deployment of a release group: its members are deployments of the
/// group's apps (`DeploymentRecord::group_deployment_id`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupDeploymentRecord {
    pub id: i64,
    /// The group's name.
    pub group: String,
    pub trigger: String,
    /// A [`DeploymentState`] name.
    pub state: String,
    pub reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// A group deployment to record, with one member per app.
#[derive(Debug, Clone)]
pub struct NewGroupDeployment {
    pub group: String,
    pub trigger: String,
    pub members: Vec<NewDeployment>,
}

/// One app's part of a group switch, recorded with the others in one
/// transaction (see `Store::record_group_switch`).
#[derive(Debug, Clone)]
pub struct SwitchRecord {
    pub app: String,
    /// The slot that becomes live (`None`: nothing).
    pub slot: Option<String>,
    /// The state label the previously live slot gets.
    pub previous_label: String,
    pub deployment_id: i64,
    pub state: DeploymentState,
    pub message: String,
}

/// The trigger facts of a deployment built from git.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeploymentSource {
    /// `github`, `gitlab`, `gitea`, `bitbucket`, or `cli` for `deploy --ref`.
    pub provider: String,
    /// The provider's delivery id (webhooks only).
    pub delivery: Option<String>,
    /// The full ref, e.g. `refs/tags/v1.2-cicd`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit built (full sha).
    pub commit: String,
    /// Progress of the build: `fetching`, `building`, `built`, `failed`, `skipped`.
    pub build: Option<String>,
}

/// A webhook delivery as accepted by the receiver.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: i64,
    pub provider: String,
    pub delivery_id: String,
    pub event: String,
    pub repository: Option<String>,
    /// `branch` or `tag`.
    pub ref_kind: Option<String>,
    pub ref_name: Option<String>,
    pub commit: Option<String>,
    /// The apps whose rules matched.
    pub apps: Vec<String>,
    /// `queued`, `dispatched`, `ignored`, `failed`.
    pub status: String,
    pub reason: Option<String>,
    /// Deployment ids started for it.
    pub deployments: Vec<i64>,
    pub received_at: i64,
    pub updated_at: i64,
}

/// A delivery to record: `status` is `queued` for work, `ignored` (with
/// a reason) for a verified delivery that deploys nothing.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub provider: String,
    pub delivery_id: String,
    pub event: String,
    pub repository: Option<String>,
    pub ref_kind: Option<String>,
    pub ref_name: Option<String>,
    pub commit: Option<String>,
    pub apps: Vec<String>,
    pub status: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventRecord {
    pub id: i64,
    pub deployment_id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub state: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub app: String,
    pub trigger: String,
    pub version: String,
    /// Set when the release already exists (a rollback to a recorded release).
    pub release_id: Option<i64>,
    /// Set for a deployment built from git.
    pub source: Option<DeploymentSource>,
}

#[derive(Debug, Clone)]
pub struct DeploymentPlan {
    pub release_id: i64,
    pub target_slot: String,
    pub from_release_id: Option<i64>,
    pub from_slot: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SlotUpdate {
    pub state: String,
    pub release_id: Option<i64>,
    pub runtime_id: Option<String>,
    pub addr: Option<String>,
    /// Every endpoint (`addr` is the first one's).
    pub endpoints: Vec<EndpointRecord>,
    pub log_path: Option<String>,
}

/// The deployment lifecycle of PRODUCT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    Queued,
    Preparing,
    Starting,
    Checking,
    AwaitingPromotion,
    Switching,
    Verifying,
    Draining,
    Retiring,
    Succeeded,
    Failed,
    Aborted,
    RolledBack,
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 13] = [
        DeploymentState::Queued,
        DeploymentState::Preparing,
        DeploymentState::Starting,
        DeploymentState::Checking,
        DeploymentState::AwaitingPromotion,
        DeploymentState::Switching,
        DeploymentState::Verifying,
        DeploymentState::Draining,
        DeploymentState::Retiring,
        DeploymentState::Succeeded,
        DeploymentState::Failed,
        DeploymentState::Aborted,
        DeploymentState::RolledBack,
    ];

    /// The state a stored name stands for; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<DeploymentState> {
        DeploymentState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Queued => "queued",
            DeploymentState::Preparing => "preparing",
            DeploymentState::Starting => "starting",
            DeploymentState::Checking => "checking",
            DeploymentState::AwaitingPromotion => "awaiting_promotion",
            DeploymentState::Switching => "switching",
            DeploymentState::Verifying => "verifying",
            DeploymentState::Draining => "draining",
            DeploymentState::Retiring => "retiring",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::Aborted => "aborted",
            DeploymentState::RolledBack => "rolled_back",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded
                | DeploymentState::Failed
                | DeploymentState::Aborted
                | DeploymentState::RolledBack
        )
    }
}

/// Whether a stored state name is terminal.
pub fn is_terminal_state(state: &str) -> bool {
    DeploymentState::parse(state).is_some_and(DeploymentState::is_terminal)
}

/// Where a webhook delivery stands (`webhook_deliveries.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Recorded, waiting for the dispatcher.
    Queued,
    /// Deployments were started for it.
    Dispatched,
    /// It deploys nothing (the reason says why).
    Ignored,
    /// Dispatching it failed.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Dispatched => "dispatched",
            DeliveryStatus::Ignored => "ignored",
            DeliveryStatus::Failed => "failed",
        }
    }
}
