//! The watch over one service: its tasks are listed every [`POLL`], the
//! running endpoints published when they change (so the engine checks a
//! replacement task before it joins and takes a dead one out), each task's
//! output followed into the release log, and the end of the release — the
//! service gone — announced on the exit watch. The watch ends when nobody
//! holds the release any more, or with the service.

use super::logs;
use super::tasks::{self, Nodes, Snapshot};
use crate::docker::client::{self, Client};
use crate::{Endpoint, ExitWatch};
use bollard::Docker;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// How often the tasks are listed.
pub(crate) const POLL: Duration = Duration::from_millis(500);

/// What the watch publishes.
pub(crate) struct Watched {
    pub endpoints: watch::Receiver<Vec<Endpoint>>,
    pub snapshot: watch::Receiver<Option<Snapshot>>,
    pub exited: ExitWatch,
}

/// Where a service's output goes.
pub(crate) struct LogTarget {
    /// The release log.
    pub path: PathBuf,
    /// Directory of the per-task stream positions.
    pub cursors: PathBuf,
}

/// Everything the poller needs about its service.
pub(crate) struct Service {
    pub id: String,
    pub name: String,
    pub port: u16,
}

pub(crate) fn spawn(
    client: Arc<Client>,
    docker: Docker,
    nodes: Arc<Nodes>,
    service: Service,
    log: Option<LogTarget>,
) -> Watched {
    let (endpoints_tx, endpoints) = watch::channel(Vec::new());
    let (snapshot_tx, snapshot) = watch::channel(None);
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut followers = Followers::default();
        let ended = tokio::select! {
            () = exit_tx.closed() => None,
            end = poll(&client, &docker, &nodes, &service, log.as_ref(), &mut followers, &endpoints_tx, &snapshot_tx) => Some(end),
        };
        followers.stop_all();
        if let Some(end) = ended {
            info!(service = %service.name, "service {} {end}", service.name);
            exit_tx.send_replace(Some(end));
        }
    });
    Watched {
        endpoints,
        snapshot,
        exited: ExitWatch::new(exit_rx),
    }
}

/// Polls until the service is gone; says how it ended.
#[allow(clippy::too_many_arguments)]
async fn poll(
    client: &Client,
    docker: &Docker,
    nodes: &Nodes,
    service: &Service,
    log: Option<&LogTarget>,
    followers: &mut Followers,
    endpoints: &watch::Sender<Vec<Endpoint>>,
    snapshots: &watch::Sender<Option<Snapshot>>,
) -> String {
    loop {
        match docker.inspect_service(&service.id, None).await {
            Err(e) if client::is_not_found(&e) => return "was removed".to_string(),
            Err(e) => debug!(service = %service.name, "inspecting the service failed: {e}"),
            Ok(_) => match tasks::list(client, docker, &service.id).await {
                Ok(listed) => {
                    let now =
                        tasks::snapshot(docker, nodes, &service.name, service.port, &listed).await;
                    if let Some(log) = log {
                        followers.follow(docker, &now, log);
                    }
                    endpoints.send_if_modified(|current| {
                        let changed = *current != now.endpoints;
                        if changed {
                            debug!(service = %service.name, "endpoints now: {:?}", now.endpoints);
                            current.clone_from(&now.endpoints);
                        }
                        changed
                    });
                    snapshots.send_replace(Some(now));
                }
                Err(e) => debug!(service = %service.name, "listing the tasks failed: {e}"),
            },
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One output follower per running task, stopped when the task is gone.
#[derive(Default)]
struct Followers(HashMap<String, JoinHandle<()>>);

impl Followers {
    fn follow(&mut self, docker: &Docker, snapshot: &Snapshot, log: &LogTarget) {
        for (id, label) in &snapshot.running {
            if !self.0.contains_key(id) && !id.is_empty() {
                let cursor = log.cursors.join(id);
                let handle = logs::spawn(
                    docker.clone(),
                    id.clone(),
                    label.clone(),
                    log.path.clone(),
                    cursor,
                );
                self.0.insert(id.clone(), handle);
            }
        }
        // A task that stopped running has said its last: its stream ends
        // by itself; a finished follower is forgotten.
        self.0.retain(|_, handle| !handle.is_finished());
    }

    fn stop_all(&mut self) {
        for (_, handle) in self.0.drain() {
            handle.abort();
        }
    }
}
