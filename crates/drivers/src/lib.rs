//! # cutover-drivers
//!
//! How a release gets running somewhere. The deployment engine talks to
//! every runtime through the one [`Driver`] trait and never mentions PIDs or
//! containers; drivers know nothing of deployments' state machine, the proxy
//! or the store.
//!
//! # Layout
//!
//! - [`Driver`], [`ReleaseSpec`], [`StartedRelease`], [`Endpoint`], [`ExitWatch`]: the
//!   contract (this file).
//! - [`process`]: releases as local processes, each in its own process
//!   group, output appended to a per-release log file.
//! - [`docker`]: releases as Docker containers (one per slot), output
//!   streamed into the per-release log file.
//! - [`swarm`]: releases as Docker Swarm services (one per slot, `replicas`
//!   tasks, each an [`Endpoint`] on its node), task output prefixed by task
//!   into the per-release log file; endpoint changes are published.

#![forbid(unsafe_code)]

pub mod docker;
pub mod process;
pub mod swarm;

use async_trait::async_trait;
use cutover_config::Slot;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::watch;

/// Everything a driver needs to know to run one release in one slot.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    pub app: String,
    pub slot: Slot,
    pub version: String,
    pub deployment_id: i64,
    /// The release's stdout and stderr are appended here.
    pub log_path: PathBuf,
    /// A file built by the pipeline, for `{artifact}`; `None` for plain version deploys.
    pub artifact: Option<PathBuf>,
}

/// One place a release answers at: a process or container on this host,
/// or one task of a swarm service on its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Where the proxy and the health checks connect.
    pub addr: SocketAddr,
    /// What it is, for status and logs: `web-blue`, `pid 1234`,
    /// `web-green.2.k3j4h5@node-1`.
    pub label: String,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, label: impl Into<String>) -> Endpoint {
        Endpoint {
            addr,
            label: label.into(),
        }
    }
}

/// A release that a driver started (or re-adopted after a restart).
#[derive(Debug, Clone)]
pub struct StartedRelease {
    /// Where the release answers when it was started: one endpoint for a
    /// process or a container, one per running task for a swarm service.
    pub endpoints: Vec<Endpoint>,
    /// Later changes of the endpoints (a task replaced by the orchestrator),
    /// the whole current set each time; `None` when they never change.
    pub endpoint_changes: Option<watch::Receiver<Vec<Endpoint>>>,
    /// Opaque, persisted by the engine: lets `stop` and `adopt` find the
    /// release again, also after cutover itself restarted.
    pub runtime_id: String,
    /// Resolves when the release exits.
    pub exited: ExitWatch,
}

impl StartedRelease {
    /// A release with one endpoint that never moves (process, container).
    pub fn single(endpoint: Endpoint, runtime_id: String, exited: ExitWatch) -> StartedRelease {
        StartedRelease {
            endpoints: vec![endpoint],
            endpoint_changes: None,
            runtime_id,
            exited,
        }
    }

    /// The endpoints as they are now.
    pub fn current_endpoints(&self) -> Vec<Endpoint> {
        match &self.endpoint_changes {
            Some(changes) => changes.borrow().clone(),
            None => self.endpoints.clone(),
        }
    }

    /// The first endpoint's address (hooks' `CUTOVER_ADDR`, messages);
    /// port 0 when there is none.
    pub fn first_addr(&self) -> SocketAddr {
        self.endpoints
            .first()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |e| e.addr)
    }
}

/// Observes the end of a release: `None` while it runs, then a description
/// of how it ended ("exited with code 3", "killed by signal SIGKILL").
#[derive(Debug, Clone)]
pub struct ExitWatch(watch::Receiver<Option<String>>);

impl ExitWatch {
    pub fn new(receiver: watch::Receiver<Option<String>>) -> ExitWatch {
        ExitWatch(receiver)
    }

    /// The exit description if the release has already ended.
    pub fn exited(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Waits until the release ends and describes how. If the watcher
    /// itself went away, the release is reported as lost.
    pub async fn wait(&mut self) -> String {
        match self.0.wait_for(|state| state.is_some()).await {
            Ok(state) => state.clone().unwrap_or_default(),
            Err(_) => "stopped being watched (driver gone)".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("port {port} for slot {slot} is already in use by another process; free it or choose other ports in [app.process] ports")]
    PortInUse { port: u16, slot: Slot },
    #[error("could not start `{program}`: {source}; check [app.process] command and working_dir")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("could not open the release log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run `{program}`: {problem}; check the command in [app.process]")]
    Program { program: String, problem: String },
    #[error("the working directory {path} {problem}; check working_dir in [app.process]")]
    WorkingDir { path: PathBuf, problem: String },
    #[error("runtime id `{0}` was not written by this driver")]
    BadRuntimeId(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    #[error(transparent)]
    Swarm(#[from] swarm::SwarmError),
}

/// What a runtime's own health check (a Docker HEALTHCHECK) says about a
/// release, on top of the engine's HTTP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeHealth {
    /// The runtime has no health check of its own for the release, or it passes.
    Healthy,
    /// Not passing yet (still starting): worth waiting for. Says why.
    Pending(String),
    /// Failing: the release will not become healthy. Completes "web v2 in
    /// slot green …", e.g. "was reported unhealthy by its Docker HEALTHCHECK …".
    Failing(String),
}

/// A runtime that can run releases: local processes, containers, ...
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Short name shown in status and history (`process`, `docker`).
    fn name(&self) -> &'static str;

    /// Gets a release ready to start (build, pull). May take long; nothing
    /// that serves traffic is touched.
    async fn prepare(&self, spec: &ReleaseSpec) -> Result<(), DriverError>;

    /// Starts the release in its slot and returns once it has been started
    /// (not once it is healthy: that is the engine's health check).
    async fn start(&self, spec: &ReleaseSpec) -> Result<StartedRelease, DriverError>;

    /// Stops a release: the configured signal, a grace period, then a kill.
    /// Stopping a release that is already gone succeeds.
    async fn stop(&self, runtime_id: &str) -> Result<(), DriverError>;

    /// After cutover restarted: finds the recorded release if it still runs
    /// (`recorded`: its endpoints as last recorded; a driver whose
    /// endpoints move finds them again).
    async fn adopt(
        &self,
        runtime_id: &str,
        recorded: &[Endpoint],
    ) -> Result<Option<StartedRelease>, DriverError>;

    /// Stops every release of `app` started by this cutover instance whose
    /// runtime id is not in `keep` (left behind by a crash); returns the ids stopped.
    async fn stop_orphans(&self, app: &str, keep: &[String]) -> Result<Vec<String>, DriverError>;

    /// The runtime's own verdict on a running release (e.g. a Docker
    /// HEALTHCHECK), consulted with every health check before a switch.
    /// Runtimes without one answer [`RuntimeHealth::Healthy`].
    async fn check(&self, _runtime_id: &str) -> RuntimeHealth {
        RuntimeHealth::Healthy
    }
}
