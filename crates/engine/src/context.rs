//! What every part of an app's control plane shares, and the releases it
//! holds between deployments.

use crate::events::EventBus;
use crate::front::Front;
use cutover_config::{AppConfig, Slot};
use cutover_drivers::{Driver, ExitWatch};
use cutover_proxy::Upstream;
use cutover_store::{ReleaseRecord, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub(crate) struct AppContext {
    pub app: Arc<AppConfig>,
    /// Where hooks and verification commands run: the config file's directory.
    pub work_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub driver: Arc<dyn Driver>,
    pub store: Store,
    /// Where traffic enters: the built-in proxy or nginx.
    pub front: Front,
    pub events: EventBus,
}

impl AppContext {
    pub(crate) fn name(&self) -> &str {
        &self.app.name
    }
}

/// The release serving an app's traffic.
#[derive(Clone)]
pub(crate) struct LiveRelease {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub runtime_id: String,
    pub addr: SocketAddr,
    pub upstream: Arc<Upstream>,
    pub exited: ExitWatch,
}

/// A previous release kept running idle after a switch (`keep_old`).
#[derive(Clone)]
pub(crate) struct Standby {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub runtime_id: String,
    pub addr: SocketAddr,
    pub exited: ExitWatch,
    pub log_path: Option<PathBuf>,
}
