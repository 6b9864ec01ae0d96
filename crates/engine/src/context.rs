//! What every part of an app's control plane shares, and the releases it
//! holds between deployments.

use crate::events::EventBus;
use crate::front::Front;
use cutover_config::{AppConfig, Balance, Slot};
use cutover_drivers::{Driver, Endpoint, ExitWatch, StartedRelease};
use cutover_proxy::{EndpointSpec, Upstream};
use cutover_store::{EndpointRecord, ReleaseRecord, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

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

/// Where a release answers: the endpoints it started with and, for a
/// runtime whose endpoints move (swarm tasks), their later changes.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    pub initial: Vec<Endpoint>,
    pub changes: Option<watch::Receiver<Vec<Endpoint>>>,
}

impl Endpoints {
    pub(crate) fn of(started: &StartedRelease) -> Endpoints {
        Endpoints {
            initial: started.endpoints.clone(),
            changes: started.endpoint_changes.clone(),
        }
    }

    /// The endpoints as the driver sees them now.
    pub(crate) fn current(&self) -> Vec<Endpoint> {
        match &self.changes {
            Some(changes) => changes.borrow().clone(),
            None => self.initial.clone(),
        }
    }

    /// The first endpoint's address (hooks' `CUTOVER_ADDR`).
    pub(crate) fn first_addr(&self) -> Option<SocketAddr> {
        self.current().first().map(|e| e.addr)
    }

    /// As the store keeps them.
    pub(crate) fn records(&self) -> Vec<EndpointRecord> {
        self.current()
            .into_iter()
            .map(|e| EndpointRecord {
                addr: e.addr.to_string(),
                label: e.label,
            })
            .collect()
    }

    /// "http://a, http://b" for messages.
    pub(crate) fn describe(&self) -> String {
        let urls: Vec<String> = self
            .current()
            .iter()
            .map(|e| format!("http://{}", e.addr))
            .collect();
        urls.join(", ")
    }
}

/// The proxy's view of a release at `endpoints`, balanced as configured.
pub(crate) fn upstream(
    app: &AppConfig,
    slot: Slot,
    version: &str,
    endpoints: &[Endpoint],
) -> Arc<Upstream> {
    let balance = match app.balance {
        Balance::LeastRequests => cutover_proxy::Balance::LeastRequests,
        Balance::RoundRobin => cutover_proxy::Balance::RoundRobin,
    };
    Upstream::with_endpoints(
        &app.name,
        slot.as_str(),
        version,
        endpoint_specs(endpoints),
        balance,
    )
}

/// Gives `upstream` the endpoints the driver has now when they differ (tasks
/// replaced while a release was being checked): called right before
/// traffic goes to it, after a health check of exactly these endpoints.
pub(crate) fn sync_endpoints(upstream: &Upstream, endpoints: &Endpoints) {
    let current = endpoints.current();
    let known: Vec<SocketAddr> = upstream.endpoints().iter().map(|e| e.addr).collect();
    let same = current.len() == known.len() && current.iter().all(|e| known.contains(&e.addr));
    if !same && !current.is_empty() {
        upstream.set_endpoints(endpoint_specs(&current));
    }
}

pub(crate) fn endpoint_specs(endpoints: &[Endpoint]) -> Vec<EndpointSpec> {
    endpoints
        .iter()
        .map(|e| EndpointSpec {
            addr: e.addr,
            label: e.label.clone(),
        })
        .collect()
}

/// The release serving an app's traffic.
#[derive(Clone)]
pub(crate) struct LiveRelease {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub runtime_id: String,
    pub endpoints: Endpoints,
    pub upstream: Arc<Upstream>,
    pub exited: ExitWatch,
}

/// A previous release kept running idle after a switch (`keep_old`).
#[derive(Clone)]
pub(crate) struct Standby {
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub runtime_id: String,
    pub endpoints: Endpoints,
    pub exited: ExitWatch,
    pub log_path: Option<PathBuf>,
}
