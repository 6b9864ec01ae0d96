//! Releases as Docker Swarm services, through a manager's engine API (the
//! docker driver's client, image preparation and log format).
//!
//! - **prepare**: the image as for `[app.docker]` — used if present, else
//!   pulled, else built (and pushed with `push = true`, so that other nodes
//!   can pull it).
//! - **start**: one service per slot, `<app>-<slot>`, labelled (service and
//!   containers) like the docker driver's containers; `replicas` tasks,
//!   restarted by the orchestrator; `port` published in host mode on a port
//!   each node picks. `start` returns once every task runs (a task with a
//!   HEALTHCHECK runs only once it passed), or fails — at once when the
//!   engine says it cannot work ("no suitable node", a rejected task, an
//!   unhealthy one, three failures), else at `deploy_timeout` — and then
//!   removes the service. The runtime id is the service id.
//! - **endpoints**: one per running task, node `Status.Addr` : the task's
//!   published port; re-read every 500 ms and published on
//!   [`StartedRelease::endpoint_changes`] ([`watch`]).
//! - **check**: the tasks' state: all `replicas` running is healthy (a
//!   task with a HEALTHCHECK runs only while it passes: swarm stops an
//!   unhealthy one); fewer is pending, or failing after recent failures, an
//!   unhealthy task or an unplaceable one.
//! - **logs**: every task's output, prefixed by task, into the release log.
//! - **stop**: the service is removed; returns once its containers on this
//!   node are gone (bounded by `stop_timeout`).
//! - **adopt** / **stop_orphans**: services found by id / by the labels of
//!   this instance and app; a service without them is never touched.

mod error;
mod logs;
mod spec;
mod tasks;
mod watch;

pub use error::SwarmError;

use crate::docker::client::{self, Client};
use crate::docker::image::{self, ImageSource};
use crate::docker::{DockerError, LABEL_APP, LABEL_INSTANCE, LABEL_LOG, LABEL_RELEASE};
use crate::{Driver, DriverError, Endpoint, ReleaseSpec, RuntimeHealth, StartedRelease};
use async_trait::async_trait;
use bollard::models::Service;
use bollard::query_parameters::{ListContainersOptions, ListServicesOptions};
use bollard::Docker;
use cutover_config::{Slot, SwarmConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasks::{Blocked, Nodes, Snapshot};
use tracing::{info, warn};

/// Task failures during a start that make it give up before the deadline.
const FAILURES_TO_GIVE_UP: usize = 3;
/// How long the running tasks must stay the same before a start is done.
const STABLE_FOR: Duration = Duration::from_secs(1);
/// How long `adopt` waits for the first listing of a service's tasks.
const ADOPT_WAIT: Duration = Duration::from_secs(5);

/// Runs releases as swarm services. See the [module docs](self).
pub struct SwarmDriver {
    inner: Arc<Inner>,
}

struct Inner {
    app: String,
    config: SwarmConfig,
    /// This cutover instance: its absolute state dir.
    instance: String,
    /// `<state_dir>/swarm`: the task log positions.
    own_dir: PathBuf,
    client: Arc<Client>,
    nodes: Arc<Nodes>,
    /// How long a start may wait for every task to run (`deploy_timeout`).
    start_timeout: Duration,
}

impl SwarmDriver {
    /// `state_dir` identifies this cutover instance (the `cutover.instance`
    /// label); `start_timeout` bounds a start (the app's `deploy_timeout`).
    pub fn new(
        app: &str,
        config: SwarmConfig,
        state_dir: &Path,
        start_timeout: Duration,
    ) -> SwarmDriver {
        let client = Client::new(config.socket.as_deref(), config.stop_timeout);
        SwarmDriver {
            inner: Arc::new(Inner {
                app: app.to_string(),
                instance: state_dir.display().to_string(),
                own_dir: state_dir.join("swarm"),
                client: Arc::new(client),
                nodes: Arc::new(Nodes::default()),
                config,
                start_timeout,
            }),
        }
    }

    /// The service name of a slot: `<app>-<slot>`.
    pub fn service_name(app: &str, slot: Slot) -> String {
        format!("{app}-{slot}")
    }
}

#[async_trait]
impl Driver for SwarmDriver {
    fn name(&self) -> &'static str {
        "swarm"
    }

    async fn prepare(&self, spec: &ReleaseSpec) -> Result<(), DriverError> {
        let source = self.inner.image_source();
        let reference = image::reference(&source, &spec.version)?;
        self.inner.manager().await?;
        image::ensure(
            &self.inner.client,
            &source,
            &self.inner.app,
            &self.inner.instance,
            &spec.version,
            &reference,
        )
        .await?;
        Ok(())
    }

    async fn start(&self, spec: &ReleaseSpec) -> Result<StartedRelease, DriverError> {
        Ok(self.inner.start(spec).await?)
    }

    async fn stop(&self, runtime_id: &str) -> Result<(), DriverError> {
        check_id(runtime_id)?;
        Ok(self.inner.stop(runtime_id).await?)
    }

    async fn adopt(
        &self,
        runtime_id: &str,
        _recorded: &[Endpoint],
    ) -> Result<Option<StartedRelease>, DriverError> {
        check_id(runtime_id)?;
        Ok(self.inner.adopt(runtime_id).await?)
    }

    async fn stop_orphans(&self, app: &str, keep: &[String]) -> Result<Vec<String>, DriverError> {
        Ok(self.inner.stop_orphans(app, keep).await?)
    }

    async fn check(&self, runtime_id: &str) -> RuntimeHealth {
        self.inner.check(runtime_id).await
    }
}

impl Inner {
    fn image_source(&self) -> ImageSource<'_> {
        ImageSource {
            image: &self.config.image,
            build: self.config.build.as_ref(),
            push: self.config.push,
            registry: None,
        }
    }

    /// The engine, which must be a swarm manager.
    async fn manager(&self) -> Result<&Docker, SwarmError> {
        let docker = self.client.get().await?;
        match docker.inspect_swarm().await {
            Ok(_) => Ok(docker),
            Err(e) if client::is_engine_refusal(&e) => Err(SwarmError::NotManager {
                socket: self.client.describe(),
                message: client::message(&e),
            }),
            Err(e) => Err(self.client.error("inspecting the swarm", e).into()),
        }
    }

    /// Create the service, watch it, wait until every task runs.
    async fn start(&self, spec: &ReleaseSpec) -> Result<StartedRelease, SwarmError> {
        let docker = self.manager().await?;
        let reference = image::reference(&self.image_source(), &spec.version)?;
        let name = SwarmDriver::service_name(&self.app, spec.slot);
        self.remove_previous(docker, &name).await?;
        crate::docker::logs::open(&spec.log_path).map_err(|e| DockerError::Api {
            context: format!("opening the release log {}", spec.log_path.display()),
            message: e.to_string(),
        })?;
        let body = spec::service_spec(&self.config, &self.instance, spec, &name, &reference);
        let id = match docker.create_service(body, None).await {
            Ok(created) => created.id.unwrap_or_default(),
            Err(e) if tasks::not_a_manager(&e) => {
                return Err(SwarmError::NotManager {
                    socket: self.client.describe(),
                    message: client::message(&e),
                })
            }
            Err(e) => {
                return Err(self
                    .client
                    .error(format!("creating service {name}"), e)
                    .into())
            }
        };
        let watched = self.watch(docker, &id, &name, Some(spec.log_path.clone()));
        match self.wait_running(&name, watched.snapshot.clone()).await {
            Ok(endpoints) => {
                info!(app = %self.app, slot = %spec.slot, version = %spec.version, service = %name,
                    "started service {name} from {reference}: {}", describe(&endpoints));
                Ok(StartedRelease {
                    endpoints,
                    endpoint_changes: Some(watched.endpoints),
                    runtime_id: id,
                    exited: watched.exited,
                })
            }
            Err(e) => {
                warn!(app = %self.app, service = %name, "removing service {name}: {e}");
                if let Err(removal) = self.stop(&id).await {
                    warn!(app = %self.app, service = %name, "could not remove service {name}: {removal}");
                }
                Err(e)
            }
        }
    }

    fn watch(&self, docker: &Docker, id: &str, name: &str, log: Option<PathBuf>) -> watch::Watched {
        let service = watch::Service {
            id: id.to_string(),
            name: name.to_string(),
            port: self.config.port,
        };
        let log = log.map(|path| watch::LogTarget {
            path,
            cursors: self.own_dir.join("cursors").join(&self.app),
        });
        watch::spawn(
            self.client.clone(),
            docker.clone(),
            self.nodes.clone(),
            service,
            log,
        )
    }

    /// Waits until `replicas` tasks run, the same ones for [`STABLE_FOR`]
    /// (a task whose process exits at once is "running" for a moment);
    /// fails at once on what the engine says will not get better.
    async fn wait_running(
        &self,
        name: &str,
        mut snapshots: tokio::sync::watch::Receiver<Option<Snapshot>>,
    ) -> Result<Vec<Endpoint>, SwarmError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.start_timeout;
        let replicas = self.config.replicas as usize;
        let mut previous: Option<(Vec<Endpoint>, Instant)> = None;
        loop {
            let seen = snapshots.borrow_and_update().clone();
            if let Some(snapshot) = &seen {
                if let Some(e) = fatal(name, snapshot) {
                    return Err(e);
                }
                let since = match previous.take() {
                    Some((endpoints, since)) if endpoints == snapshot.endpoints => since,
                    _ => Instant::now(),
                };
                if snapshot.endpoints.len() >= replicas && since.elapsed() >= STABLE_FOR {
                    return Ok(snapshot.endpoints.clone());
                }
                previous = Some((snapshot.endpoints.clone(), since));
            }
            let changed = tokio::time::timeout_at(deadline, snapshots.changed()).await;
            if changed.is_err() || matches!(changed, Ok(Err(_))) {
                let snapshot = seen.unwrap_or_default();
                return Err(SwarmError::NotRunning {
                    service: name.to_string(),
                    running: snapshot.endpoints.len(),
                    replicas: self.config.replicas,
                    seconds: started.elapsed().as_secs_f64(),
                    detail: format!("; {}", snapshot.describe()),
                });
            }
        }
    }

    /// Removes the service that holds `name` if it is one of ours.
    async fn remove_previous(&self, docker: &Docker, name: &str) -> Result<(), SwarmError> {
        let Some(service) = self.inspect(docker, name).await? else {
            return Ok(());
        };
        if let Err(owner) = self.owns(&service) {
            return Err(SwarmError::NameTaken {
                name: name.to_string(),
                owner,
            });
        }
        let id = service.id.clone().unwrap_or_else(|| name.to_string());
        let version = label(&service, LABEL_RELEASE).unwrap_or("?");
        info!(app = %self.app, service = %name, "removing the previous service {name} ({version}) to reuse its slot");
        self.stop(&id).await
    }

    async fn inspect(&self, docker: &Docker, id: &str) -> Result<Option<Service>, SwarmError> {
        match docker.inspect_service(id, None).await {
            Ok(service) => Ok(Some(service)),
            Err(e) if client::is_not_found(&e) => Ok(None),
            Err(e) if tasks::not_a_manager(&e) => Err(SwarmError::NotManager {
                socket: self.client.describe(),
                message: client::message(&e),
            }),
            Err(e) => Err(self
                .client
                .error(format!("inspecting service {id}"), e)
                .into()),
        }
    }

    /// Ok if the service carries this instance's and app's labels;
    /// otherwise who it belongs to, for the message.
    fn owns(&self, service: &Service) -> Result<(), String> {
        match (label(service, LABEL_INSTANCE), label(service, LABEL_APP)) {
            (Some(i), Some(a)) if i == self.instance && a == self.app => Ok(()),
            (Some(i), Some(a)) => Err(format!("app {a} of the cutover with state dir {i}")),
            _ => Err("it has no cutover labels".to_string()),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), SwarmError> {
        let docker = self.client.get().await?;
        let Some(service) = self.inspect(docker, id).await? else {
            return Ok(());
        };
        if let Err(owner) = self.owns(&service) {
            return Err(SwarmError::NotOurs {
                id: id.to_string(),
                owner,
            });
        }
        let name = service_name(&service, id);
        let began = Instant::now();
        match docker.delete_service(id).await {
            Ok(()) => {}
            Err(e) if client::is_not_found(&e) => return Ok(()),
            Err(e) => {
                return Err(self
                    .client
                    .error(format!("removing service {name}"), e)
                    .into())
            }
        }
        self.wait_containers_gone(docker, id).await;
        info!(app = %self.app, service = %name, "removed service {name} in {:.1}s", began.elapsed().as_secs_f64());
        Ok(())
    }

    /// The orchestrator stops a removed service's tasks by itself: wait
    /// (bounded) until none of its containers is left on this node.
    async fn wait_containers_gone(&self, docker: &Docker, id: &str) {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("com.docker.swarm.service.id={id}")],
        )]);
        let deadline = Instant::now() + self.config.stop_timeout + Duration::from_secs(15);
        while Instant::now() < deadline {
            let listed = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..ListContainersOptions::default()
                }))
                .await;
            if listed.is_ok_and(|containers| containers.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        warn!(app = %self.app, "the containers of removed service {id} are still there");
    }

    async fn adopt(&self, id: &str) -> Result<Option<StartedRelease>, SwarmError> {
        let docker = self.manager().await?;
        let Some(service) = self.inspect(docker, id).await? else {
            info!(app = %self.app, service = %id, "service {id} is gone; nothing to adopt");
            return Ok(None);
        };
        if let Err(owner) = self.owns(&service) {
            warn!(app = %self.app, service = %id, "not adopting service {id}: it belongs to {owner}");
            return Ok(None);
        }
        let name = service_name(&service, id);
        let log = label(&service, LABEL_LOG).map(PathBuf::from);
        let mut watched = self.watch(docker, id, &name, log);
        let _ = tokio::time::timeout(ADOPT_WAIT, watched.snapshot.wait_for(Option::is_some)).await;
        let endpoints = watched.endpoints.borrow().clone();
        let version = label(&service, LABEL_RELEASE).unwrap_or("?");
        info!(app = %self.app, service = %name, "adopted service {name} ({version}): {}", describe(&endpoints));
        Ok(Some(StartedRelease {
            endpoints,
            endpoint_changes: Some(watched.endpoints),
            runtime_id: id.to_string(),
            exited: watched.exited,
        }))
    }

    async fn stop_orphans(&self, app: &str, keep: &[String]) -> Result<Vec<String>, SwarmError> {
        let docker = self.manager().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_INSTANCE}={}", self.instance),
                format!("{LABEL_APP}={app}"),
            ],
        )]);
        let services = docker
            .list_services(Some(ListServicesOptions {
                filters: Some(filters),
                ..ListServicesOptions::default()
            }))
            .await
            .map_err(|e| {
                self.client
                    .error(format!("listing the services of {app}"), e)
            })?;
        let mut stopped = Vec::new();
        for service in services {
            let Some(id) = service.id.clone() else {
                continue;
            };
            if keep.contains(&id) || self.owns(&service).is_err() {
                continue;
            }
            warn!(app, service = %id, "removing service {}: a release of {app} that no deployment recorded, left behind by an earlier run", service_name(&service, &id));
            self.stop(&id).await?;
            stopped.push(id);
        }
        stopped.sort();
        Ok(stopped)
    }

    async fn check(&self, id: &str) -> RuntimeHealth {
        let docker = match self.client.get().await {
            Ok(docker) => docker,
            Err(e) => return RuntimeHealth::Pending(e.to_string()),
        };
        let listed = match tasks::list(&self.client, docker, id).await {
            Ok(listed) => listed,
            Err(e) => return RuntimeHealth::Pending(e.to_string()),
        };
        let name = match docker.inspect_service(id, None).await {
            Ok(service) => service_name(&service, id),
            Err(_) => id.to_string(),
        };
        let snapshot = tasks::snapshot(docker, &self.nodes, &name, self.config.port, &listed).await;
        let (running, replicas) = (snapshot.endpoints.len(), self.config.replicas as usize);
        if running >= replicas {
            // Earlier failures were replaced: the release is whole.
            return RuntimeHealth::Healthy;
        }
        if let Some(e) = fatal(&name, &snapshot) {
            return RuntimeHealth::Failing(format!("was failed by the swarm: {e}"));
        }
        if running < replicas {
            return RuntimeHealth::Pending(format!(
                "{running} of {replicas} task(s) running ({})",
                snapshot.describe()
            ));
        }
        RuntimeHealth::Healthy
    }
}

/// What in a snapshot means the release will not come up by waiting.
fn fatal(name: &str, snapshot: &Snapshot) -> Option<SwarmError> {
    match &snapshot.blocked {
        Some(Blocked::NoSuitableNode(message)) => {
            return Some(SwarmError::NoSuitableNode {
                service: name.to_string(),
                message: message.clone(),
            })
        }
        Some(Blocked::Rejected(message)) => {
            return Some(SwarmError::TasksFailed {
                service: name.to_string(),
                message: message.clone(),
            })
        }
        None => {}
    }
    (snapshot.failures.len() >= FAILURES_TO_GIVE_UP).then(|| SwarmError::TasksFailed {
        service: name.to_string(),
        message: format!(
            "{} task failures within a minute; last: {}",
            snapshot.failures.len(),
            snapshot.failures.last().map_or("", String::as_str)
        ),
    })
}

fn describe(endpoints: &[Endpoint]) -> String {
    let listed: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{} at {}", e.label, e.addr))
        .collect();
    format!("{} task(s): {}", endpoints.len(), listed.join(", "))
}

fn label<'a>(service: &'a Service, name: &str) -> Option<&'a str> {
    service
        .spec
        .as_ref()?
        .labels
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

fn service_name(service: &Service, id: &str) -> String {
    service
        .spec
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| id.to_string())
}

/// Service ids are 25 lowercase letters and digits.
fn check_id(id: &str) -> Result<(), DriverError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(DriverError::BadRuntimeId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_are_service_ids() {
        assert!(check_id("m6rbt0tkr66zr5neg02xc7ulj").is_ok());
        for bad in ["", "pid=1;start=2", "ABC", &"a".repeat(65), "web-blue"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn three_recent_failures_or_an_unplaceable_task_are_fatal() {
        let mut snapshot = Snapshot::default();
        assert!(fatal("web-green", &snapshot).is_none());
        snapshot.failures = vec!["a: exit 3".into(), "b: exit 3".into()];
        assert!(fatal("web-green", &snapshot).is_none());
        snapshot.failures.push("c: exit 3".into());
        let message = fatal("web-green", &snapshot).map(|e| e.to_string());
        assert!(message.is_some_and(|m| m.contains("3 task failures") && m.contains("c: exit 3")));
        let blocked = Snapshot {
            blocked: Some(Blocked::NoSuitableNode("no suitable node".into())),
            ..Snapshot::default()
        };
        let message = fatal("web-green", &blocked)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("no suitable node") && message.contains("constraints"),
            "{message}"
        );
    }
}
