//! A service's tasks as the driver sees them: the running ones become
//! endpoints (node address : host-mode published port, from the task's
//! `Status.PortStatus` and the node's `Status.Addr`), the failed ones and
//! the unplaceable ones become reasons.

use crate::docker::client::{self, Client};
use crate::docker::DockerError;
use crate::Endpoint;
use bollard::models::{Task, TaskState};
use bollard::query_parameters::ListTasksOptions;
use bollard::Docker;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Task failures within this window count against a release.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What a service's tasks look like at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Running tasks with a published port, sorted.
    pub endpoints: Vec<Endpoint>,
    /// Running tasks by id with their label (for the log followers).
    pub running: Vec<(String, String)>,
    /// Recent failures, newest last: "web-green.1.abc@node: task: non-zero exit (3)".
    pub failures: Vec<String>,
    /// Why a task that should run is not placed or not started (the
    /// engine's `Status.Err` of a pending or rejected task).
    pub blocked: Option<Blocked>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// "no suitable node (scheduling constraints not satisfied on 1 node)"
    NoSuitableNode(String),
    /// Rejected by a node ("No such image: …") or failed as unhealthy.
    Rejected(String),
}

impl Snapshot {
    /// "2 running; last failure: …", for messages.
    pub fn describe(&self) -> String {
        let mut text = format!("{} task(s) running", self.endpoints.len());
        if let Some(failure) = self.failures.last() {
            text.push_str(&format!(
                "; {} recent failure(s), last: {failure}",
                self.failures.len()
            ));
        }
        if let Some(Blocked::NoSuitableNode(why) | Blocked::Rejected(why)) = &self.blocked {
            text.push_str(&format!("; {why}"));
        }
        text
    }
}

/// Node id → (address, hostname), looked up once per node; and how
/// finished tasks ended, described once per task.
#[derive(Default)]
pub(crate) struct Nodes {
    nodes: Mutex<HashMap<String, (IpAddr, String)>>,
    ends: Mutex<HashMap<String, End>>,
}

/// How a task ended.
#[derive(Debug, Clone)]
struct End {
    description: String,
    /// Its container's HEALTHCHECK declared it unhealthy.
    unhealthy: bool,
}

impl Nodes {
    async fn get(&self, docker: &Docker, id: &str) -> (IpAddr, String) {
        if let Some(known) = self.nodes.lock().ok().and_then(|n| n.get(id).cloned()) {
            return known;
        }
        let node = docker.inspect_node(id).await.ok();
        let addr = node
            .as_ref()
            .and_then(|n| n.status.as_ref()?.addr.as_deref()?.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let hostname = node
            .and_then(|n| n.description?.hostname)
            .unwrap_or_else(|| id.chars().take(12).collect());
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.insert(id.to_string(), (addr, hostname.clone()));
        }
        (addr, hostname)
    }

    /// How a finished task ended: the engine's error, or its exit code; a
    /// container on this node that its HEALTHCHECK declared unhealthy
    /// (swarm stops such a task, which may then exit 0) says so.
    async fn end(&self, docker: &Docker, task: &Task) -> End {
        let id = task.id.clone().unwrap_or_default();
        if let Some(known) = self.ends.lock().ok().and_then(|e| e.get(&id).cloned()) {
            return known;
        }
        let status = task.status.as_ref();
        let container = status
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.container_id.clone());
        let exit = status
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.exit_code)
            .unwrap_or_default();
        let err = status.and_then(|s| s.err.clone()).filter(|e| !e.is_empty());
        let health = match &container {
            Some(container) => unhealthy_verdict(docker, container).await,
            None => None,
        };
        let end = match (health, err) {
            (Some(verdict), _) => End {
                description: verdict,
                unhealthy: true,
            },
            (None, Some(err)) => End {
                description: err,
                unhealthy: false,
            },
            (None, None) => End {
                description: format!("exited with code {exit}"),
                unhealthy: false,
            },
        };
        if let Ok(mut ends) = self.ends.lock() {
            if ends.len() > 1000 {
                ends.clear();
            }
            ends.insert(id, end.clone());
        }
        end
    }
}

/// "was reported unhealthy by its Docker HEALTHCHECK (last check: …)" when
/// the container (on this node) is unhealthy.
async fn unhealthy_verdict(docker: &Docker, container: &str) -> Option<String> {
    let inspected = docker.inspect_container(container, None).await.ok()?;
    let health = inspected.state?.health?;
    if health.status != Some(bollard::models::HealthStatusEnum::UNHEALTHY) {
        return None;
    }
    let last = health
        .log
        .as_ref()
        .and_then(|log| log.last())
        .map(|result| {
            let output: String = result
                .output
                .as_deref()
                .unwrap_or("")
                .trim()
                .chars()
                .take(300)
                .collect();
            format!(
                " (last check: exit code {}: {output})",
                result.exit_code.unwrap_or_default()
            )
        })
        .unwrap_or_default();
    Some(format!(
        "was reported unhealthy by its Docker HEALTHCHECK{last}"
    ))
}

/// The tasks of service `service_id`.
pub(crate) async fn list(
    client: &Client,
    docker: &Docker,
    service_id: &str,
) -> Result<Vec<Task>, DockerError> {
    let filters = HashMap::from([("service".to_string(), vec![service_id.to_string()])]);
    docker
        .list_tasks(Some(ListTasksOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|e| client.error(format!("listing the tasks of service {service_id}"), e))
}

/// Reads the tasks of `service` (its name, for labels) publishing `port`.
pub(crate) async fn snapshot(
    docker: &Docker,
    nodes: &Nodes,
    service: &str,
    port: u16,
    tasks: &[Task],
) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut failures: Vec<(SystemTime, String)> = Vec::new();
    for task in tasks {
        let status = task.status.as_ref();
        let state = status.and_then(|s| s.state);
        let desired_running = task.desired_state == Some(TaskState::RUNNING);
        let (node_addr, hostname) = match task.node_id.as_deref().filter(|n| !n.is_empty()) {
            Some(node) => nodes.get(docker, node).await,
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), "unassigned".to_string()),
        };
        let label = task_label(service, task, &hostname);
        let err = status.and_then(|s| s.err.clone()).filter(|e| !e.is_empty());
        match state {
            Some(TaskState::RUNNING) if desired_running => {
                if let Some(published) = published_port(task, port) {
                    let id = task.id.clone().unwrap_or_default();
                    snapshot.running.push((id, label.clone()));
                    snapshot
                        .endpoints
                        .push(Endpoint::new(SocketAddr::new(node_addr, published), label));
                }
            }
            Some(TaskState::PENDING) if desired_running => {
                if let Some(err) = err.filter(|e| e.contains("no suitable node")) {
                    snapshot.blocked = Some(Blocked::NoSuitableNode(err));
                }
            }
            Some(TaskState::REJECTED | TaskState::FAILED | TaskState::COMPLETE) => {
                let at = status
                    .and_then(|s| s.timestamp.as_ref())
                    .and_then(|t| crate::docker::logs::parse_rfc3339(&t.to_string()))
                    .unwrap_or_else(SystemTime::now);
                if at.elapsed().is_ok_and(|age| age > FAILURE_WINDOW) {
                    continue;
                }
                let end = nodes.end(docker, task).await;
                let err = end.description;
                let rejected = state == Some(TaskState::REJECTED) || end.unhealthy;
                if rejected && snapshot.blocked.is_none() {
                    snapshot.blocked = Some(Blocked::Rejected(format!("{label}: {err}")));
                }
                failures.push((at, format!("{label}: {err}")));
            }
            _ => {}
        }
    }
    snapshot.endpoints.sort();
    failures.sort();
    snapshot.failures = failures.into_iter().map(|(_, text)| text).collect();
    snapshot
}

/// `web-green.2.k3j4h5l6m7n8@node-1`, as `docker service ps` names tasks.
fn task_label(service: &str, task: &Task, hostname: &str) -> String {
    let id: String = task.id.as_deref().unwrap_or("").chars().take(12).collect();
    match task.slot {
        Some(slot) => format!("{service}.{slot}.{id}@{hostname}"),
        None => format!("{service}.{id}@{hostname}"),
    }
}

/// The host-mode port the task's node published for `port`.
fn published_port(task: &Task, port: u16) -> Option<u16> {
    task.status
        .as_ref()?
        .port_status
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.target_port == Some(i64::from(port)))?
        .published_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// Whether an API error says the engine is not a swarm manager.
pub(crate) fn not_a_manager(e: &bollard::errors::Error) -> bool {
    let message = client::message(e).to_ascii_lowercase();
    client::status(e) == Some(503)
        || message.contains("not a swarm manager")
        || message.contains("swarm mode")
}
