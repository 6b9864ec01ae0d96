//! Releases as Docker containers, through the engine's API (bollard).
//!
//! - **prepare**: the image of the version (`[app.docker] image` with
//!   `{version}`) is used if present, else pulled, else built from the
//!   configured Dockerfile (and pushed when `push = true`); see [`image`].
//! - **start**: one container per slot, named `<app>-<slot>` and labelled
//!   `cutover.instance` (the state dir, so two cutovers never touch each
//!   other's containers), `cutover.app`, `cutover.slot`, `cutover.release`
//!   (the version), `cutover.deployment` and `cutover.log`. A container of
//!   this cutover already holding the name (a release that is not live: the
//!   engine only starts into the slot that is not live) is removed first; one
//!   of anybody else is an error. The container port is published on
//!   127.0.0.1 (a fixed `host_ports` port or one Docker picks); with host
//!   networking the release listens on its slot's host port, given in `PORT`.
//! - The runtime id is the container id. Output is streamed into the
//!   release's log file ([`logs`]); the exit watch is Docker's wait endpoint
//!   ([`watch`]); [`Driver::check`] reports the image's own HEALTHCHECK.
//! - **stop**: `docker stop` with `stop_timeout`, then removal (with its
//!   anonymous volumes), then image retention ([`retention`]).
//! - **adopt** (after cutover restarted): the container is found by id and
//!   must carry this instance's and app's labels; its output stream is
//!   attached again where the log file left off.
//! - **stop_orphans**: containers labelled with this instance and app that
//!   the engine does not keep are stopped and removed.

pub(crate) mod client;
mod error;
pub(crate) mod image;
pub(crate) mod logs;
mod retention;
mod watch;

pub use client::DEFAULT_SOCKET;
pub use error::DockerError;

use crate::{Driver, DriverError, Endpoint, ReleaseSpec, RuntimeHealth, StartedRelease};
use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HealthStatusEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use client::Client;
use cutover_config::docker::DockerNetwork;
use cutover_config::{DockerConfig, Slot};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// Labels on every container (and built image, and swarm service) of cutover.
pub const LABEL_INSTANCE: &str = "cutover.instance";
pub const LABEL_APP: &str = "cutover.app";
pub const LABEL_SLOT: &str = "cutover.slot";
pub const LABEL_RELEASE: &str = "cutover.release";
pub const LABEL_DEPLOYMENT: &str = "cutover.deployment";
/// The release log the container's output is streamed into.
pub const LABEL_LOG: &str = "cutover.log";

/// Runs releases as Docker containers. See the [module docs](self).
pub struct DockerDriver {
    inner: Arc<Inner>,
}

struct Inner {
    app: String,
    config: DockerConfig,
    /// This cutover instance: its absolute state dir.
    instance: String,
    /// Where this driver keeps its own state: `<state_dir>/docker`.
    own_dir: PathBuf,
    client: Client,
    records: retention::Records,
    /// Serialises image clean-ups (two stops may finish together).
    cleaning: tokio::sync::Mutex<()>,
}

impl DockerDriver {
    /// `state_dir` identifies this cutover instance (the `cutover.instance`
    /// label) and holds the records of the images it created. Nothing is
    /// connected before the first call.
    pub fn new(app: &str, config: DockerConfig, state_dir: &Path) -> DockerDriver {
        let client = Client::new(config.socket.as_deref(), config.stop_timeout);
        DockerDriver {
            inner: Arc::new(Inner {
                app: app.to_string(),
                instance: state_dir.display().to_string(),
                own_dir: state_dir.join("docker"),
                records: retention::Records::new(&state_dir.join("docker"), app),
                client,
                config,
                cleaning: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The container name of a slot: `<app>-<slot>`.
    pub fn container_name(app: &str, slot: Slot) -> String {
        format!("{app}-{slot}")
    }
}

#[async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn prepare(&self, spec: &ReleaseSpec) -> Result<(), DriverError> {
        Ok(self.inner.prepare(spec).await?)
    }

    async fn start(&self, spec: &ReleaseSpec) -> Result<StartedRelease, DriverError> {
        self.inner.start(spec).await
    }

    async fn stop(&self, runtime_id: &str) -> Result<(), DriverError> {
        check_id(runtime_id)?;
        self.inner.stop(runtime_id).await?;
        let inner = Arc::clone(&self.inner);
        inner.clean_images().await;
        Ok(())
    }

    async fn adopt(
        &self,
        runtime_id: &str,
        recorded: &[Endpoint],
    ) -> Result<Option<StartedRelease>, DriverError> {
        check_id(runtime_id)?;
        let recorded = recorded
            .first()
            .map_or(SocketAddr::from((self.inner.host_ip(), 0)), |e| e.addr);
        Ok(self.inner.adopt(runtime_id, recorded).await?)
    }

    async fn stop_orphans(&self, app: &str, keep: &[String]) -> Result<Vec<String>, DriverError> {
        let docker = self.inner.client.get().await?;
        let filters = app_filter(&self.inner.instance, app);
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..ListContainersOptions::default()
            }))
            .await
            .map_err(|e| {
                self.inner
                    .client
                    .error(format!("listing the containers of {app}"), e)
            })?;
        let mut stopped = Vec::new();
        let mut first_error = None;
        for container in containers {
            let Some(id) = container.id else { continue };
            if keep.iter().any(|k| k == &id) {
                continue;
            }
            let name = container
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default();
            warn!(app, container = %logs::short(&id), "removing container {} ({}): a release of {app} that no deployment recorded, left behind by an earlier run", name.trim_start_matches('/'), logs::short(&id));
            match self.inner.stop(&id).await {
                Ok(()) => stopped.push(id),
                Err(e) => {
                    warn!(app, "could not remove an orphaned container: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        if !stopped.is_empty() {
            self.inner.clean_images().await;
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => {
                stopped.sort();
                Ok(stopped)
            }
        }
    }

    async fn check(&self, runtime_id: &str) -> RuntimeHealth {
        self.inner.check(runtime_id).await
    }
}

impl Inner {
    async fn prepare(&self, spec: &ReleaseSpec) -> Result<(), DockerError> {
        let reference = image::reference(&(&self.config).into(), &spec.version)?;
        if let DockerNetwork::Named(network) = &self.config.network {
            let docker = self.client.get().await?;
            match docker.inspect_network(network, None).await {
                Ok(_) => {}
                Err(e) if client::is_not_found(&e) => {
                    return Err(DockerError::NetworkNotFound {
                        network: network.clone(),
                    })
                }
                Err(e) => {
                    return Err(self
                        .client
                        .error(format!("inspecting network {network}"), e))
                }
            }
        }
        let origin = image::ensure(
            &self.client,
            &(&self.config).into(),
            &self.app,
            &self.instance,
            &spec.version,
            &reference,
        )
        .await?;
        match origin {
            image::Origin::Present => self.records.touch(&reference),
            image::Origin::Pulled | image::Origin::Built => {
                let docker = self.client.get().await?;
                let inspected = docker.inspect_image(&reference).await.map_err(|e| {
                    self.client
                        .error(format!("inspecting image {reference}"), e)
                })?;
                if let Some(id) = inspected.id {
                    self.records.record(&reference, &id);
                }
            }
        }
        Ok(())
    }

    /// Create, start, attach output and exit watch, find the address.
    async fn start(&self, spec: &ReleaseSpec) -> Result<StartedRelease, DriverError> {
        let docker = self.client.get().await?;
        let reference = image::reference(&(&self.config).into(), &spec.version)?;
        let name = DockerDriver::container_name(&self.app, spec.slot);
        self.remove_previous(&name).await?;
        let ports = self.ports(spec.slot)?;
        let body = self.create_body(spec, &reference, &ports);
        // The log file exists (and can be quoted) even if nothing is written.
        logs::open(&spec.log_path).map_err(|source| DriverError::Log {
            path: spec.log_path.clone(),
            source,
        })?;
        let id = self.create(docker, &name, &reference, body).await?;
        self.start_created(docker, &id, &name, &ports, spec.slot)
            .await?;
        let output = logs::spawn(
            docker.clone(),
            id.clone(),
            spec.log_path.clone(),
            self.cursor(&id),
        );
        let label = format!("{name} ({})", spec.version);
        let exited = watch::spawn(docker.clone(), id.clone(), label, output);
        let addr = self.address(docker, &id, &name, &ports).await?;
        info!(
            app = %self.app, slot = %spec.slot, version = %spec.version, container = %logs::short(&id), %addr,
            "started container {name} ({}) from {reference} on {addr}",
            logs::short(&id)
        );
        Ok(StartedRelease::single(
            Endpoint::new(addr, name),
            id,
            exited,
        ))
    }

    /// Where published ports are bound and reached: `advertise`, else 127.0.0.1.
    fn host_ip(&self) -> std::net::IpAddr {
        self.config
            .advertise
            .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Where a slot's release listens and how it is reached.
    fn ports(&self, slot: Slot) -> Result<ContainerPorts, DockerError> {
        let host_port = self.config.host_ports.map(|ports| ports.of(slot));
        if let Some(port) = host_port {
            ensure_port_free(port, slot)?;
        }
        let host = self.config.network == DockerNetwork::Host;
        // In the host's network the release listens on its slot's port.
        let (listen_port, publish) = match (host, host_port) {
            (true, Some(port)) => (port, false),
            _ => (self.config.port, true),
        };
        Ok(ContainerPorts {
            host_port,
            listen_port,
            publish,
            port_key: format!("{listen_port}/tcp"),
        })
    }

    /// The container's environment, labels, ports and limits.
    fn create_body(
        &self,
        spec: &ReleaseSpec,
        reference: &str,
        ports: &ContainerPorts,
    ) -> ContainerCreateBody {
        let mut env: Vec<String> = self
            .config
            .env
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        env.extend([
            format!("PORT={}", ports.listen_port),
            format!("CUTOVER_APP={}", spec.app),
            format!("CUTOVER_SLOT={}", spec.slot),
            format!("CUTOVER_VERSION={}", spec.version),
            format!("CUTOVER_DEPLOYMENT={}", spec.deployment_id),
        ]);
        let mut labels: HashMap<String, String> = self
            .config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend([
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_APP.to_string(), spec.app.clone()),
            (LABEL_SLOT.to_string(), spec.slot.to_string()),
            (LABEL_RELEASE.to_string(), spec.version.clone()),
            (LABEL_DEPLOYMENT.to_string(), spec.deployment_id.to_string()),
            (LABEL_LOG.to_string(), spec.log_path.display().to_string()),
        ]);
        let port_bindings = ports.publish.then(|| {
            HashMap::from([(
                ports.port_key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(self.host_ip().to_string()),
                    host_port: Some(ports.host_port.map_or_else(String::new, |p| p.to_string())),
                }]),
            )])
        });
        ContainerCreateBody {
            image: Some(reference.to_string()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: ports.publish.then(|| vec![ports.port_key.clone()]),
            stop_timeout: Some(i64::from(stop_seconds(self.config.stop_timeout))),
            host_config: Some(HostConfig {
                port_bindings,
                network_mode: Some(self.config.network.mode().to_string()),
                binds: (!self.config.volumes.is_empty()).then(|| self.config.volumes.clone()),
                memory: self.config.memory.and_then(|m| i64::try_from(m).ok()),
                nano_cpus: self.config.cpus.map(|c| (c * 1e9) as i64),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }

    /// Creates the container named `name`; its id.
    async fn create(
        &self,
        docker: &Docker,
        name: &str,
        reference: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..CreateContainerOptions::default()
        };
        match docker.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(e) if client::status(&e) == Some(404) => Err(DockerError::ImageNotFound {
                image: reference.to_string(),
                detail: client::message(&e),
            }),
            Err(e) => Err(self.client.error(format!("creating container {name}"), e)),
        }
    }

    /// Starts a created container; one that does not start is removed.
    async fn start_created(
        &self,
        docker: &Docker,
        id: &str,
        name: &str,
        ports: &ContainerPorts,
        slot: Slot,
    ) -> Result<(), DockerError> {
        let Err(e) = docker.start_container(id, None).await else {
            return Ok(());
        };
        let message = client::message(&e);
        let _ = docker.remove_container(id, Some(remove_options())).await;
        let lower = message.to_ascii_lowercase();
        let container = name.to_string();
        Err(
            if lower.contains("port is already allocated")
                || lower.contains("address already in use")
            {
                match ports.host_port {
                    Some(port) => DockerError::PortInUse { port, slot },
                    None => DockerError::PublishFailed { container, message },
                }
            } else if client::status(&e).is_some() {
                DockerError::StartFailed { container, message }
            } else {
                self.client.error(format!("starting container {name}"), e)
            },
        )
    }

    /// The address the proxy reaches a started container at.
    async fn address(
        &self,
        docker: &Docker,
        id: &str,
        name: &str,
        ports: &ContainerPorts,
    ) -> Result<SocketAddr, DockerError> {
        if let Some(port) = ports.host_port {
            let ip = match ports.publish {
                true => self.host_ip(),
                false => std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
            };
            return Ok(SocketAddr::from((ip, port)));
        }
        let inspected = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| self.client.error(format!("inspecting container {name}"), e))?;
        let ip = self.host_ip();
        match published_port(&inspected, &ports.port_key, ip) {
            Some(port) => Ok(SocketAddr::from((ip, port))),
            // Already gone (an entrypoint that fails at once): the
            // exit watch reports how, with the output in the log.
            None if !is_running(&inspected) => Ok(SocketAddr::from((ip, 0))),
            None => {
                let _ = docker.remove_container(id, Some(remove_options())).await;
                Err(DockerError::NoPublishedPort {
                    container: name.to_string(),
                    port: ports.listen_port,
                })
            }
        }
    }

    /// Removes the container that holds `name` if it is one of ours.
    async fn remove_previous(&self, name: &str) -> Result<(), DockerError> {
        let docker = self.client.get().await?;
        let Some(inspected) = self.inspect(docker, name, name).await? else {
            return Ok(());
        };
        let id = inspected.id.clone().unwrap_or_else(|| name.to_string());
        if let Err(owner) = self.owns(&inspected) {
            return Err(DockerError::NameTaken {
                name: name.to_string(),
                owner,
            });
        }
        let version = label(&inspected, LABEL_RELEASE).unwrap_or("?");
        info!(app = %self.app, container = %logs::short(&id), "removing the previous container {name} ({version}) to reuse its slot");
        self.stop(&id).await
    }

    /// The container `id` (a name or an id) as Docker sees it; `None` when
    /// there is none. `what` names it in errors.
    async fn inspect(
        &self,
        docker: &Docker,
        id: &str,
        what: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match docker.inspect_container(id, None).await {
            Ok(inspected) => Ok(Some(inspected)),
            Err(e) if client::is_not_found(&e) => Ok(None),
            Err(e) => Err(self.client.error(format!("inspecting container {what}"), e)),
        }
    }

    /// Ok if the container carries this instance's and app's labels;
    /// otherwise who it belongs to, for the message.
    fn owns(&self, inspected: &ContainerInspectResponse) -> Result<(), String> {
        let instance = label(inspected, LABEL_INSTANCE);
        let app = label(inspected, LABEL_APP);
        match (instance, app) {
            (Some(i), Some(a)) if i == self.instance && a == self.app => Ok(()),
            (Some(i), Some(a)) => Err(format!("app {a} of the cutover with state dir {i}")),
            _ => Err("it has no cutover labels".to_string()),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), DockerError> {
        let docker = self.client.get().await?;
        let Some(inspected) = self.inspect(docker, id, logs::short(id)).await? else {
            return Ok(());
        };
        if let Err(owner) = self.owns(&inspected) {
            return Err(DockerError::NotOurs {
                id: id.to_string(),
                owner,
            });
        }
        let name = container_name(&inspected, id);
        let began = std::time::Instant::now();
        if is_running(&inspected) {
            let options = StopContainerOptions {
                t: Some(stop_seconds(self.config.stop_timeout)),
                ..StopContainerOptions::default()
            };
            match docker.stop_container(id, Some(options)).await {
                Ok(()) => {}
                Err(e) if client::is_not_found(&e) => return Ok(()),
                Err(e) if client::status(&e) == Some(304) => {}
                Err(e) => return Err(self.client.error(format!("stopping container {name}"), e)),
            }
        }
        match docker.remove_container(id, Some(remove_options())).await {
            Ok(()) => {}
            Err(e) if client::is_not_found(&e) => {}
            // "removal already in progress"
            Err(e) if client::status(&e) == Some(409) => {}
            Err(e) => return Err(self.client.error(format!("removing container {name}"), e)),
        }
        info!(app = %self.app, container = %logs::short(id), "stopped and removed container {name} in {:.1}s", began.elapsed().as_secs_f64());
        Ok(())
    }

    async fn adopt(
        &self,
        id: &str,
        recorded: SocketAddr,
    ) -> Result<Option<StartedRelease>, DockerError> {
        let docker = self.client.get().await?;
        let Some(inspected) = self.inspect(docker, id, logs::short(id)).await? else {
            info!(app = %self.app, container = %logs::short(id), "container {} is gone; nothing to adopt", logs::short(id));
            return Ok(None);
        };
        if let Err(owner) = self.owns(&inspected) {
            warn!(app = %self.app, container = %logs::short(id), "not adopting container {}: it belongs to {owner}", logs::short(id));
            return Ok(None);
        }
        if !is_running(&inspected) {
            info!(app = %self.app, container = %logs::short(id), "container {} is not running; nothing to adopt", logs::short(id));
            return Ok(None);
        }
        let name = container_name(&inspected, id);
        let addr = self
            .config
            .host_ports
            .is_none()
            .then(|| {
                published_port(
                    &inspected,
                    &format!("{}/tcp", self.config.port),
                    self.host_ip(),
                )
            })
            .flatten()
            .map_or(recorded, |port| SocketAddr::from((self.host_ip(), port)));
        let output = match label(&inspected, LABEL_LOG) {
            Some(path) => logs::spawn(
                docker.clone(),
                id.to_string(),
                PathBuf::from(path),
                self.cursor(id),
            ),
            None => tokio::spawn(async {}),
        };
        let version = label(&inspected, LABEL_RELEASE).unwrap_or("?");
        let exited = watch::spawn(
            docker.clone(),
            id.to_string(),
            format!("{name} ({version})"),
            output,
        );
        info!(app = %self.app, container = %logs::short(id), %addr, "adopted container {name} ({version})");
        Ok(Some(StartedRelease::single(
            Endpoint::new(addr, name),
            id.to_string(),
            exited,
        )))
    }

    async fn check(&self, id: &str) -> RuntimeHealth {
        let docker = match self.client.get().await {
            Ok(docker) => docker,
            Err(e) => return RuntimeHealth::Pending(e.to_string()),
        };
        let inspected = match docker.inspect_container(id, None).await {
            Ok(inspected) => inspected,
            Err(e) => {
                return RuntimeHealth::Pending(format!(
                    "cannot read the container's Docker health status: {}",
                    client::message(&e)
                ))
            }
        };
        let Some(health) = inspected.state.and_then(|s| s.health) else {
            return RuntimeHealth::Healthy;
        };
        let last = health
            .log
            .as_ref()
            .and_then(|log| log.last())
            .map(|result| {
                let output = result.output.as_deref().unwrap_or("").trim();
                let output: String = output.chars().take(300).collect();
                let code = result.exit_code.unwrap_or_default();
                if output.is_empty() {
                    format!("exit code {code}, no output")
                } else {
                    format!("exit code {code}: {output}")
                }
            });
        match health.status {
            Some(HealthStatusEnum::UNHEALTHY) => RuntimeHealth::Failing(format!(
                "was reported unhealthy by its Docker HEALTHCHECK after {} failed check(s){}",
                health.failing_streak.unwrap_or(0),
                last.map(|l| format!(" (last check: {l})"))
                    .unwrap_or_default()
            )),
            Some(HealthStatusEnum::STARTING) => RuntimeHealth::Pending(format!(
                "its Docker HEALTHCHECK has not passed yet{}",
                last.map(|l| format!(" (last check: {l})"))
                    .unwrap_or_default()
            )),
            _ => RuntimeHealth::Healthy,
        }
    }

    /// The log stream position of container `id` (see [`logs`]).
    fn cursor(&self, id: &str) -> PathBuf {
        self.cursors_dir().join(id)
    }

    fn cursors_dir(&self) -> PathBuf {
        self.own_dir.join("cursors").join(&self.app)
    }

    async fn clean_images(&self) {
        let _one_at_a_time = self.cleaning.lock().await;
        retention::clean(
            &self.client,
            &self.records,
            &self.app,
            &self.instance,
            self.config.keep_images,
            &self.cursors_dir(),
        )
        .await;
    }
}

/// How a container's port is set up: where the release listens inside it
/// and whether (and on which host port) it is published on 127.0.0.1.
struct ContainerPorts {
    /// The slot's fixed host port, if any.
    host_port: Option<u16>,
    listen_port: u16,
    publish: bool,
    /// `<listen_port>/tcp`, Docker's name of the port.
    port_key: String,
}

/// A list filter for what this instance made for `app` (its labels).
fn app_filter(instance: &str, app: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_INSTANCE}={instance}"),
            format!("{LABEL_APP}={app}"),
        ],
    )])
}

fn remove_options() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    }
}

/// The container's name without Docker's leading `/`; its id without one.
fn container_name(inspected: &ContainerInspectResponse, id: &str) -> String {
    inspected
        .name
        .as_deref()
        .unwrap_or(id)
        .trim_start_matches('/')
        .to_string()
}

fn label<'a>(inspected: &'a ContainerInspectResponse, name: &str) -> Option<&'a str> {
    inspected
        .config
        .as_ref()?
        .labels
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

fn is_running(inspected: &ContainerInspectResponse) -> bool {
    inspected
        .state
        .as_ref()
        .and_then(|s| s.running)
        .unwrap_or(false)
}

/// The host port Docker published `port_key` (`8080/tcp`) on, on `ip`.
fn published_port(
    inspected: &ContainerInspectResponse,
    port_key: &str,
    ip: std::net::IpAddr,
) -> Option<u16> {
    let ip = ip.to_string();
    inspected
        .network_settings
        .as_ref()?
        .ports
        .as_ref()?
        .get(port_key)?
        .as_ref()?
        .iter()
        .find(|b| {
            b.host_ip
                .as_deref()
                .is_none_or(|bound| bound == ip || bound.is_empty())
        })?
        .host_port
        .as_deref()?
        .parse()
        .ok()
}

/// Docker counts stop timeouts in whole seconds: round up.
fn stop_seconds(timeout: std::time::Duration) -> i32 {
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// Container ids are 64 lowercase hex digits.
fn check_id(id: &str) -> Result<(), DriverError> {
    if id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(DriverError::BadRuntimeId(id.to_string()))
    }
}

/// Fails if something already listens on the slot's fixed host port.
fn ensure_port_free(port: u16, slot: Slot) -> Result<(), DockerError> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_listener) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(DockerError::PortInUse { port, slot })
        }
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_are_container_ids() {
        assert!(check_id(&"a1".repeat(32)).is_ok());
        for bad in [
            "",
            "abc",
            &"A1".repeat(32),
            &"g1".repeat(32),
            "pid=1;start=2;port=3",
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stop_timeouts_round_up_to_seconds() {
        assert_eq!(stop_seconds(std::time::Duration::from_millis(1500)), 2);
        assert_eq!(stop_seconds(std::time::Duration::from_secs(10)), 10);
        assert_eq!(stop_seconds(std::time::Duration::ZERO), 0);
    }
}
