//! Release groups as the [`Engine`] offers them: a group deployment is
//! recorded with one member deployment per app, each member is queued with
//! its app's actor (one owner per app), and `deployment::group::run`
//! coordinates them. Also the settling of a group deployment that a crash
//! cut short: its members are all switched or none (one transaction), and
//! it is recorded as succeeded or failed accordingly.

use crate::actor::Command;
use crate::blocking::blocking;
use crate::deployment::group::{self, GroupControl, GroupRun};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::events::EventBus;
use crate::model::Trigger;
use cutover_config::GroupConfig;
use cutover_store::{
    DeploymentRecord, DeploymentState, GroupDeploymentRecord, NewDeployment, NewGroupDeployment,
    Store,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// `cutover deploy GROUP`: a version for every app of the group.
#[derive(Debug, Clone, Default)]
pub struct GroupDeployRequest {
    /// The version of every app not named in `versions`.
    pub version: Option<String>,
    /// Per app.
    pub versions: BTreeMap<String, String>,
    /// Who asked: `cli`, ...
    pub trigger: String,
}

/// A group deployment with its members.
#[derive(Debug, Clone, Serialize)]
pub struct GroupDeploymentDetail {
    #[serde(flatten)]
    pub group_deployment: GroupDeploymentRecord,
    pub members: Vec<DeploymentRecord>,
}

/// A group, its apps, and its current and last deployments.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub name: String,
    pub apps: Vec<String>,
    /// The group deployment in progress, if any.
    pub current: Option<GroupDeploymentDetail>,
    pub last: Option<GroupDeploymentDetail>,
}

/// Group deployments in progress, and the order in which they are queued.
#[derive(Default)]
pub(crate) struct Groups {
    /// Held while a group deployment's members are queued, so two group
    /// deployments queue their members in the same order with every app.
    order: tokio::sync::Mutex<()>,
    running: Arc<Mutex<HashMap<i64, GroupControl>>>,
}

impl Engine {
    /// The release groups of the configuration.
    pub fn groups(&self) -> &[GroupConfig] {
        &self.inner.config.groups
    }

    fn group_config(&self, group: &str) -> Result<&GroupConfig, EngineError> {
        self.inner
            .config
            .group(group)
            .ok_or_else(|| EngineError::UnknownGroup(group.to_string()))
    }

    /// Queues a deployment of every app of `group`; answers at once.
    pub async fn deploy_group(
        &self,
        group: &str,
        request: GroupDeployRequest,
    ) -> Result<GroupDeploymentDetail, EngineError> {
        let config = self.group_config(group)?.clone();
        if let Some(unknown) = request
            .versions
            .keys()
            .find(|app| !config.apps.contains(app))
        {
            return Err(EngineError::BadRequest(format!(
                "`{unknown}` is not an app of group `{group}` (its apps: {})",
                config.apps.join(", ")
            )));
        }
        let mut members = Vec::with_capacity(config.apps.len());
        for app in &config.apps {
            let version = request.versions.get(app).or(request.version.as_ref());
            let Some(version) = version else {
                return Err(EngineError::BadRequest(format!(
                    "no version for `{app}` of group `{group}`: pass --version V for all, or --set {app}=V"
                )));
            };
            crate::engine::validate_version(version)?;
            members.push(NewDeployment {
                app: app.clone(),
                trigger: request.trigger.clone(),
                version: version.clone(),
                release_id: None,
                source: None,
            });
        }
        self.start_group(&config, &request.trigger, members).await
    }

    /// Queues a group deployment back to the releases every app had before
    /// the group's last successful deployment: one switch for all.
    pub async fn rollback_group(&self, group: &str) -> Result<GroupDeploymentDetail, EngineError> {
        let config = self.group_config(group)?.clone();
        let store = self.inner.store.clone();
        let name = group.to_string();
        let members = blocking(move || {
            let Some(last) = store.last_succeeded_group(&name)? else {
                return Ok(None);
            };
            Ok(Some(store.group_members(last.id)?))
        })
        .await?
        .ok_or_else(|| EngineError::NothingToRollBack(group.to_string()))?;
        let mut rollback = Vec::with_capacity(members.len());
        for member in members {
            let (Some(release_id), Some(version)) = (member.from_release_id, member.from_version)
            else {
                return Err(EngineError::NothingToRollBack(group.to_string()));
            };
            rollback.push(NewDeployment {
                app: member.app,
                trigger: Trigger::ROLLBACK.to_string(),
                version,
                release_id: Some(release_id),
                source: None,
            });
        }
        self.start_group(&config, Trigger::ROLLBACK, rollback).await
    }

    /// Records the group deployment, starts its coordinator and queues each
    /// member with its app's actor.
    async fn start_group(
        &self,
        config: &GroupConfig,
        trigger: &str,
        members: Vec<NewDeployment>,
    ) -> Result<GroupDeploymentDetail, EngineError> {
        if self.inner.frozen.load(Ordering::SeqCst) {
            return Err(EngineError::Upgrading(format!("deploy {}", config.name)));
        }
        let _order = self.inner.groups.order.lock().await;
        let store = self.inner.store.clone();
        let new = NewGroupDeployment {
            group: config.name.clone(),
            trigger: trigger.to_string(),
            members,
        };
        let (record, members) = blocking(move || store.insert_group_deployment(&new)).await?;
        let (seats, member_seats): (Vec<_>, Vec<_>) = members
            .iter()
            .map(|m| {
                let (member, seat) = group::seat(&m.app);
                (seat, member)
            })
            .unzip();
        self.spawn_coordinator(record.clone(), seats);
        for (member, seat) in members.iter().zip(member_seats) {
            let record = member.clone();
            let queued = self
                .ask(&member.app, |reply| Command::DeployMember {
                    record,
                    seat,
                    reply,
                })
                .await;
            // Refused: the coordinator sees the seat go and stops the others.
            queued?;
        }
        self.group_deployment(record.id).await
    }

    fn spawn_coordinator(&self, record: GroupDeploymentRecord, seats: Vec<group::Seat>) {
        let (abort, aborted) = watch::channel(false);
        let committed = Arc::new(AtomicBool::new(false));
        let running = self.inner.groups.running.clone();
        if let Ok(mut running) = running.lock() {
            let control = GroupControl {
                abort,
                committed: committed.clone(),
            };
            running.insert(record.id, control);
        }
        let id = record.id;
        let run = GroupRun {
            record,
            store: self.inner.store.clone(),
            events: self.inner.events.clone(),
            front: self.inner.front.clone(),
            seats,
            abort: aborted,
            committed,
        };
        tokio::spawn(async move {
            group::run(run).await;
            if let Ok(mut running) = running.lock() {
                running.remove(&id);
            }
        });
    }

    /// Aborts the group's deployment in progress (before its switch is
    /// committed): every member stops, nothing changes.
    pub async fn abort_group(&self, group: &str) -> Result<GroupDeploymentDetail, EngineError> {
        self.group_config(group)?;
        let current = self.current_group_deployment(group).await?;
        let Some(current) = current else {
            return Err(EngineError::NothingInProgress {
                app: group.to_string(),
                action: "abort",
            });
        };
        let id = current.group_deployment.id;
        let running = self.inner.groups.running.lock().ok();
        match running.as_ref().and_then(|r| r.get(&id)) {
            Some(control) if control.committed.load(Ordering::SeqCst) => {
                return Err(EngineError::Conflict(format!(
                    "group deployment {id} of {group} is already draining the old releases and cannot be aborted; use `cutover rollback {group}`"
                )))
            }
            Some(control) => {
                let _ = control.abort.send(true);
            }
            None => {
                return Err(EngineError::NothingInProgress {
                    app: group.to_string(),
                    action: "abort",
                })
            }
        }
        drop(running);
        Ok(current)
    }

    /// Promotes the group's deployment awaiting promotion: every member
    /// with manual promotion goes on, and the group switches.
    pub async fn promote_group(&self, group: &str) -> Result<GroupDeploymentDetail, EngineError> {
        let config = self.group_config(group)?.clone();
        let current = self.current_group_deployment(group).await?.ok_or_else(|| {
            EngineError::NothingInProgress {
                app: group.to_string(),
                action: "promote",
            }
        })?;
        let mut promoted = 0;
        let mut refusal = None;
        for app in &config.apps {
            let manual = self
                .inner
                .config
                .app(app)
                .is_some_and(|a| a.promotion == cutover_config::Promotion::Manual);
            if !manual {
                continue;
            }
            match self.ask(app, |reply| Command::Promote { reply }).await {
                Ok(_) => promoted += 1,
                Err(why) => refusal = Some(why),
            }
        }
        match (promoted, refusal) {
            (0, Some(why)) => Err(why),
            (0, None) => Err(EngineError::Conflict(format!(
                "no app of group {group} waits for promotion (they promote automatically)"
            ))),
            _ => Ok(current),
        }
    }

    /// The group deployment of `group` that has not ended, oldest first.
    async fn current_group_deployment(
        &self,
        group: &str,
    ) -> Result<Option<GroupDeploymentDetail>, EngineError> {
        let store = self.inner.store.clone();
        let name = group.to_string();
        let unfinished = blocking(move || store.unfinished_group_deployments()).await?;
        match unfinished.into_iter().find(|g| g.group == name) {
            Some(record) => Ok(Some(self.group_deployment(record.id).await?)),
            None => Ok(None),
        }
    }

    /// A group deployment with its members.
    pub async fn group_deployment(&self, id: i64) -> Result<GroupDeploymentDetail, EngineError> {
        let store = self.inner.store.clone();
        blocking(move || {
            let Some(group_deployment) = store.group_deployment(id)? else {
                return Ok(None);
            };
            let members = store.group_members(id)?;
            Ok(Some(GroupDeploymentDetail {
                group_deployment,
                members,
            }))
        })
        .await?
        .ok_or(EngineError::UnknownDeployment(id))
    }

    /// The group's deployments, newest first, with their members.
    pub async fn group_history(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<GroupDeploymentDetail>, EngineError> {
        self.group_config(group)?;
        let store = self.inner.store.clone();
        let name = group.to_string();
        let records = blocking(move || store.group_deployments(&name, limit)).await?;
        let mut details = Vec::with_capacity(records.len());
        for record in records {
            details.push(self.group_deployment(record.id).await?);
        }
        Ok(details)
    }

    pub async fn group_status(&self, group: &str) -> Result<GroupStatus, EngineError> {
        let config = self.group_config(group)?.clone();
        let current = self.current_group_deployment(group).await?;
        let last = self.group_history(group, 1).await?.into_iter().next();
        Ok(GroupStatus {
            name: config.name,
            apps: config.apps,
            current,
            last,
        })
    }
}

/// Settles every group deployment a crash cut short, before the apps
/// recover: if the one transaction that records every member's switch
/// happened, all members serve their new releases and the group succeeded;
/// otherwise none does, and it failed. Either way its members end here, so
/// each app's recovery then keeps the recorded live release and stops the
/// other.
pub(crate) async fn recover(store: &Store, events: &EventBus) -> Result<(), EngineError> {
    let store = store.clone();
    let settled = blocking(move || {
        let mut events = Vec::new();
        for group in store.unfinished_group_deployments()? {
            let members = store.group_members(group.id)?;
            let switched = all_switched(&store, &members)?;
            let (state, message) = match switched {
                true => (DeploymentState::Succeeded, format!("cutover stopped during `{}` after the switch of every app of group {}; on restart all of them serve their new releases", group.state, group.group)),
                false => (DeploymentState::Failed, format!("interrupted: cutover stopped during `{}` before the switch of group {}; on restart every app kept its old release and the new ones were stopped", group.state, group.group)),
            };
            let unfinished: Vec<(i64, String)> = members
                .iter()
                .filter(|m| !cutover_store::is_terminal_state(&m.state))
                .map(|m| (m.id, message.clone()))
                .collect();
            events.extend(store.transition_members(&unfinished, state)?);
            store.transition_group(group.id, state, &message)?;
            tracing::warn!(group = %group.group, group_deployment = group.id, "{message}");
        }
        Ok(events)
    })
    .await?;
    for event in settled {
        events.publish(event);
    }
    Ok(())
}

/// Whether every member's app has the member's release live in its target
/// slot (the group switch was recorded).
fn all_switched(
    store: &Store,
    members: &[DeploymentRecord],
) -> Result<bool, cutover_store::StoreError> {
    let mut any = false;
    for member in members {
        let Some(target) = member.target_slot.as_deref() else {
            return Ok(false);
        };
        let Some(app) = store.app(&member.app)? else {
            return Ok(false);
        };
        let live_release = app
            .live()
            .and_then(|slot| slot.release.as_ref())
            .map(|r| r.id);
        if app.live_slot.as_deref() != Some(target) || live_release != member.release_id {
            return Ok(false);
        }
        any = true;
    }
    Ok(any)
}
