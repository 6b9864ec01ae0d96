//! `POST /v1/upgrade`: the daemon replaces itself with a new binary
//! (`cutover upgrade`). The API only carries the request to whoever runs
//! the upgrade (the `serve` command, through [`Upgrades`]) and its report
//! back; it knows nothing of how it is done.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

/// One request to upgrade, with where to send the report.
#[derive(Debug)]
pub struct UpgradeAsk {
    /// The binary to start; `None`: the daemon's own executable, read again
    /// from disk.
    pub binary: Option<PathBuf>,
    pub reply: oneshot::Sender<UpgradeReport>,
}

/// What the upgrade did, step by step; `error` is set when it failed (and
/// the old process keeps serving).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpgradeReport {
    pub steps: Vec<String>,
    /// The PID of the process serving now (the new one after a success).
    pub pid: Option<u32>,
    pub error: Option<String>,
    /// The upgrade was refused only because a deployment runs or is
    /// queued; nothing was tried, and asking again after it ended works.
    #[serde(default)]
    pub busy: bool,
}

/// Where the admin API sends upgrade requests.
pub type Upgrades = mpsc::Sender<UpgradeAsk>;

/// The body of `POST /v1/upgrade`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeBody {
    #[serde(default)]
    pub binary: Option<PathBuf>,
}

impl crate::extract::Expected for UpgradeBody {
    const EXPECTED: &'static str = r#"{} or {"binary": "/usr/local/bin/cutover"}"#;
}
