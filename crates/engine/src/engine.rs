//! The engine handle: what the admin API (and tests) call.

use crate::actor::{self, ActorHandle, Command};
use crate::error::EngineError;
use crate::events::EventBus;
use crate::recovery;
use cutover_config::{Config, DriverConfig, Slot};
use cutover_drivers::docker::DockerDriver;
use cutover_drivers::process::ProcessDriver;
use cutover_drivers::Driver;
use cutover_proxy::Router;
use cutover_store::{AppRecord, DeploymentRecord, EventRecord, SlotRecord, Store};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A request to deploy a version of an app.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub version: String,
    /// Who asked: `cli`, `rollback`, `webhook`, ...
    pub trigger: String,
    /// Deploy even when this version is already live.
    pub force: bool,
    /// For a deployment built from git: the trigger facts (the build runs
    /// in the deployment's `preparing` step).
    pub source: Option<cutover_store::DeploymentSource>,
}

/// Health of the live release as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveHealth {
    Healthy,
    Unhealthy,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub hosts: Vec<String>,
    pub driver: &'static str,
    pub live_slot: Option<String>,
    pub live_version: Option<String>,
    pub health: LiveHealth,
    /// Requests in flight on the live release right now.
    pub in_flight: usize,
    pub current_deployment: Option<DeploymentRecord>,
    /// Ids of deployments waiting behind the current one.
    pub queued: Vec<i64>,
    pub slots: Vec<SlotRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: DeploymentRecord,
    pub events: Vec<EventRecord>,
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Store,
    events: EventBus,
    apps: BTreeMap<String, ActorHandle>,
}

impl Engine {
    /// Recovers every app's state (adopting the live release, failing
    /// interrupted deployments, stopping orphans) and starts the actors.
    /// Live routes are published as soon as each live release passes a
    /// health check: on `router`, or, with `[proxy] mode = "nginx"`, in
    /// nginx (then `router` only keeps track of the live releases).
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        router: Router,
    ) -> Result<Engine, EngineError> {
        let events = EventBus::new();
        let instance = config.state_dir.display().to_string();
        let mut apps = BTreeMap::new();
        let front = match &config.proxy.nginx {
            Some(nginx) => {
                crate::front::Front::nginx(cutover_nginx::Nginx::new(nginx.clone()), router.clone())
            }
            None => crate::front::Front::Builtin(router.clone()),
        };
        for app in &config.apps {
            let store_for_app = store.clone();
            let name = app.name.clone();
            tokio::task::spawn_blocking(move || store_for_app.ensure_app(&name))
                .await
                .map_err(|_| EngineError::Stopped)??;
            let driver: Arc<dyn Driver> = match &app.driver {
                DriverConfig::Process(process) => {
                    Arc::new(ProcessDriver::new(&app.name, process.clone(), &instance))
                }
                DriverConfig::Docker(docker) => Arc::new(DockerDriver::new(
                    &app.name,
                    docker.clone(),
                    &config.state_dir,
                )),
            };
            let context = actor::AppContext {
                app: Arc::new(app.clone()),
                work_dir: config
                    .file
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".")),
                logs_dir: config.logs_dir().join(&app.name),
                driver,
                store: store.clone(),
                front: front.clone(),
                events: events.clone(),
            };
            let recovered = recovery::recover(&context).await?;
            apps.insert(app.name.clone(), actor::spawn(context, recovered));
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                store,
                events,
                apps,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn actor(&self, app: &str) -> Result<&ActorHandle, EngineError> {
        self.inner
            .apps
            .get(app)
            .ok_or_else(|| EngineError::UnknownApp(app.to_string()))
    }

    async fn ask<T>(
        &self,
        app: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.actor(app)?
            .commands
            .send(make(reply))
            .await
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Queues a deployment; returns it at once (state `queued` or later).
    pub async fn deploy(
        &self,
        app: &str,
        request: DeployRequest,
    ) -> Result<DeploymentRecord, EngineError> {
        validate_version(&request.version)?;
        self.ask(app, |reply| Command::Deploy { request, reply })
            .await
    }

    /// Queues a deployment of the release that was live before the current one.
    pub async fn rollback(&self, app: &str) -> Result<DeploymentRecord, EngineError> {
        self.ask(app, |reply| Command::Rollback { reply }).await
    }

    /// Aborts the running deployment if it has not switched yet.
    pub async fn abort(&self, app: &str) -> Result<DeploymentRecord, EngineError> {
        self.ask(app, |reply| Command::Abort { reply }).await
    }

    /// Promotes a deployment waiting for promotion.
    pub async fn promote(&self, app: &str) -> Result<DeploymentRecord, EngineError> {
        self.ask(app, |reply| Command::Promote { reply }).await
    }

    pub async fn status(&self) -> Result<Vec<AppStatus>, EngineError> {
        let mut all = Vec::with_capacity(self.inner.apps.len());
        for name in self.inner.apps.keys() {
            all.push(self.app_status(name).await?);
        }
        Ok(all)
    }

    pub async fn app_status(&self, app: &str) -> Result<AppStatus, EngineError> {
        self.ask(app, |reply| Command::Status { reply }).await
    }

    /// Deployments of the app, newest first.
    pub async fn history(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, EngineError> {
        self.actor(app)?;
        let store = self.inner.store.clone();
        let app = app.to_string();
        blocking(move || store.deployments(&app, limit)).await
    }

    pub async fn deployment(&self, id: i64) -> Result<DeploymentDetail, EngineError> {
        let store = self.inner.store.clone();
        blocking(move || {
            let deployment = store.deployment(id)?;
            let events = store.events(id, 0)?;
            Ok(deployment.map(|deployment| DeploymentDetail { deployment, events }))
        })
        .await?
        .ok_or(EngineError::UnknownDeployment(id))
    }

    /// Follows a deployment's events: those already stored, then new ones as
    /// they happen; the channel closes after the terminal event.
    pub async fn follow(&self, id: i64) -> Result<mpsc::Receiver<EventRecord>, EngineError> {
        self.inner.events.follow(&self.inner.store, id).await
    }

    /// App-level events (the live release turning unhealthy or healthy
    /// again) of every app; filter by `AppEvent::app`.
    pub fn app_events(
        &self,
        app: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<crate::AppEvent>, EngineError> {
        self.actor(app)?;
        Ok(self.inner.events.subscribe_apps())
    }

    /// The log file of the app's release in `slot` (the live slot by default).
    pub async fn log_path(&self, app: &str, slot: Option<Slot>) -> Result<PathBuf, EngineError> {
        self.actor(app)?;
        let store = self.inner.store.clone();
        let name = app.to_string();
        let record: Option<AppRecord> = blocking(move || store.app(&name)).await?;
        let record = record.ok_or_else(|| EngineError::UnknownApp(app.to_string()))?;
        let slot_name = match slot {
            Some(slot) => slot.as_str().to_string(),
            None => record.live_slot.clone().ok_or_else(|| {
                EngineError::Conflict(format!(
                    "`{app}` has no live release; name a slot with --slot blue|green"
                ))
            })?,
        };
        record
            .slot(&slot_name)
            .and_then(|s| s.log_path.clone())
            .map(PathBuf::from)
            .ok_or_else(|| {
                EngineError::Conflict(format!(
                    "slot {slot_name} of `{app}` has no release log yet"
                ))
            })
    }

    /// Stops the actors (waiting for none of the running releases to stop:
    /// releases keep serving while cutover is down).
    pub async fn shutdown(&self) {
        for handle in self.inner.apps.values() {
            let _ = handle.commands.send(Command::Shutdown).await;
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, cutover_store::StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| EngineError::Stopped)?
        .map_err(EngineError::from)
}

/// A version ends up in argv, file names and logs: keep it to a safe alphabet.
fn validate_version(version: &str) -> Result<(), EngineError> {
    let ok = !version.is_empty()
        && version.len() <= 128
        && !version.starts_with(['-', '.'])
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::BadRequest(format!(
            "version `{}` is not valid: use 1-128 letters, digits, `.`, `_`, `-` or `+`, not starting with `-` or `.`",
            version.escape_debug()
        )))
    }
}
