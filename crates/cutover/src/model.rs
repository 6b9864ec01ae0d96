//! The admin API's answers as the CLI reads them. Fields the CLI does not
//! use are ignored, so the daemon may add fields freely.

use cutover_store::DeploymentState;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Deployment {
    pub id: i64,
    pub app: String,
    pub trigger: String,
    pub version: String,
    pub target_slot: Option<String>,
    pub from_version: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Set for deployments built from git (webhook or `deploy --ref`).
    #[serde(default)]
    pub source: Option<Source>,
}

/// The trigger facts of a deployment built from git.
#[derive(Debug, Clone, Deserialize)]
pub struct Source {
    pub provider: String,
    pub delivery: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    pub build: Option<String>,
}

impl Deployment {
    /// The lifecycle state, when it is one this CLI knows (a newer daemon
    /// may report others).
    pub fn lifecycle(&self) -> Option<DeploymentState> {
        DeploymentState::parse(&self.state)
    }

    pub fn is_terminal(&self) -> bool {
        self.lifecycle().is_some_and(DeploymentState::is_terminal)
    }

    pub fn succeeded(&self) -> bool {
        self.lifecycle() == Some(DeploymentState::Succeeded)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: Deployment,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub state: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub live_slot: Option<String>,
    pub live_version: Option<String>,
    pub health: String,
    pub in_flight: u64,
    /// Where the live release answers (one per swarm task).
    #[serde(default)]
    pub endpoints: Vec<EndpointStatus>,
    /// The previous release while a deployment drains it.
    #[serde(default)]
    pub draining: Option<DrainingRelease>,
    /// The live release's supervision (absent from older daemons).
    #[serde(default)]
    pub supervision: Option<Supervision>,
    pub current_deployment: Option<Deployment>,
    #[serde(default)]
    pub queued: Vec<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EndpointStatus {
    pub label: String,
    pub addr: String,
    pub healthy: bool,
    pub in_flight: u64,
    #[serde(default)]
    pub requests: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DrainingRelease {
    pub slot: String,
    pub version: String,
    pub in_flight: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Supervision {
    pub by: String,
    pub state: String,
    pub restarts: u64,
}
