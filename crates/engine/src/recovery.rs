//! Start-up after a stop or a crash (invariant 6): the recorded live
//! release is adopted (or started again if it is gone) and must pass a
//! health check before traffic goes to it — unless the process this one
//! took over from (an upgrade) handed it over, then it is routed at once;
//! a recorded `keep_old` standby that still runs is adopted and kept;
//! interrupted deployments are recorded as failed and their releases
//! stopped; orphans are removed.

use crate::blocking::blocking;
use crate::context::{AppContext, Endpoints, LiveRelease, Standby};
use crate::error::EngineError;
use crate::health::{self, Unhealthy};
use crate::slots::{self, SlotFacts, SlotState};
use cutover_config::Slot;
use cutover_drivers::{Endpoint, ReleaseSpec, StartedRelease};
use cutover_store::{
    now_ms, AppRecord, DeploymentRecord, DeploymentState, ReleaseRecord, SlotRecord,
};
use std::net::SocketAddr;
use std::path::PathBuf;

/// One release as it is handed to the process that takes over (an
/// upgrade): it was routed (or kept idle) a moment ago, so the new process
/// adopts it without a health gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverRelease {
    pub slot: cutover_config::Slot,
    pub version: String,
    pub runtime_id: String,
    /// Where it answers (one address per endpoint, for the log: the new
    /// process adopts from the store's records and the driver).
    pub endpoints: Vec<SocketAddr>,
}

/// What an app's actor hands over: its live release and its `keep_old`
/// standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHandover {
    pub app: String,
    pub live: Option<HandoverRelease>,
    pub standby: Option<HandoverRelease>,
}

pub(crate) struct Recovered {
    /// The live release: routed already when `routed`, else see [`gate`].
    pub live: Option<LiveRelease>,
    /// The live release was handed over by an upgrade and is routed.
    pub routed: bool,
    /// The `keep_old` standby, still running.
    pub standby: Option<Standby>,
    /// A deployment that was awaiting promotion, to go on awaiting it.
    pub awaiting: Option<Awaiting>,
}

/// A deployment recorded as awaiting promotion whose release still runs in
/// its target slot: after a restart or an upgrade (or an upgrade that did
/// not happen) it goes on awaiting promotion with that release.
pub(crate) struct Awaiting {
    pub record: DeploymentRecord,
    pub slot: Slot,
    pub release: ReleaseRecord,
    pub started: StartedRelease,
    pub log_path: PathBuf,
}

/// `handed`: the live release the process this one took over from was
/// routing to (an upgrade), if any.
pub(crate) async fn recover(
    context: &AppContext,
    handed: Option<&HandoverRelease>,
) -> Result<Recovered, EngineError> {
    let (record, mut unfinished) = recorded_state(context).await?;
    let Some(record) = record else {
        return Ok(Recovered {
            live: None,
            routed: false,
            standby: None,
            awaiting: None,
        });
    };

    let live_slot: Option<Slot> = record.live_slot.as_deref().and_then(|s| s.parse().ok());
    let mut live = None;
    if let Some(slot) = live_slot {
        if let Some(slot_record) = record.slot(slot.as_str()) {
            live = adopt_or_restart(context, slot, slot_record).await;
        }
    }
    if let Some(live) = &live {
        point_nginx_back(context, live).await;
    }
    let routed = match (&live, handed) {
        (Some(live), Some(handed)) if live.runtime_id == handed.runtime_id => {
            route_handed(context, live).await
        }
        _ => false,
    };

    let awaiting = adopt_awaiting(context, &mut unfinished, &record, live_slot).await;
    let keep_standby = live.is_some() && unfinished.is_empty();
    let standby = settle_other_slots(context, &record, live_slot, &awaiting, keep_standby).await;
    fail_interrupted(context, unfinished, live.as_ref()).await?;

    let keep: Vec<String> = live
        .iter()
        .map(|l| l.runtime_id.clone())
        .chain(standby.iter().map(|s| s.runtime_id.clone()))
        .chain(awaiting.iter().map(|a| a.started.runtime_id.clone()))
        .collect();
    stop_orphans(context, &keep).await;
    Ok(Recovered {
        live,
        routed,
        standby,
        awaiting,
    })
}

/// The app's record and its deployments that never ended.
async fn recorded_state(
    context: &AppContext,
) -> Result<(Option<AppRecord>, Vec<DeploymentRecord>), EngineError> {
    let store = context.store.clone();
    let name = context.name().to_string();
    blocking(move || {
        let record = store.app(&name)?;
        let unfinished: Vec<_> = store
            .unfinished_deployments()?
            .into_iter()
            .filter(|d| d.app == name)
            .collect();
        Ok((record, unfinished))
    })
    .await
}

/// nginx keeps its configuration across our crash: it may point at a
/// release that the switch never recorded as live. Point it back at the
/// recorded live release (which was serving: invariant 1 allows it)
/// before that other release is stopped.
async fn point_nginx_back(context: &AppContext, live: &LiveRelease) {
    if !context.front.is_nginx() {
        return;
    }
    if let Err(why) = context
        .front
        .set_live(context.name(), Some(live.upstream.clone()))
        .await
    {
        tracing::error!(app = %context.name(), "cannot point nginx back at the live release: {why}");
    }
}

/// The slots that are neither live nor awaiting promotion: a recorded
/// `keep_old` standby that still runs is kept (when `keep_standby`: a live
/// release and nothing interrupted), anything else left running there by
/// an interrupted deployment is stopped.
async fn settle_other_slots(
    context: &AppContext,
    record: &AppRecord,
    live_slot: Option<Slot>,
    awaiting: &Option<Awaiting>,
    keep_standby: bool,
) -> Option<Standby> {
    let mut standby = None;
    for slot in Slot::ALL.into_iter().filter(|s| Some(*s) != live_slot) {
        if awaiting.as_ref().is_some_and(|a| a.slot == slot) {
            continue;
        }
        let Some(slot_record) = record.slot(slot.as_str()) else {
            continue;
        };
        if keep_standby {
            standby = adopt_standby(context, slot, slot_record).await;
            if standby.is_some() {
                continue;
            }
        }
        if let Some(runtime_id) = &slot_record.runtime_id {
            tracing::info!(app = %context.name(), %slot, "stopping the release left running in {slot} by an interrupted deployment");
            slots::stop(context, slot, runtime_id).await;
        }
    }
    standby
}

/// Releases of this instance and app that nothing recorded (left behind
/// by a crash) are stopped; `keep` are the runtime ids still wanted.
async fn stop_orphans(context: &AppContext, keep: &[String]) {
    let app = context.name();
    match context.driver.stop_orphans(app, keep).await {
        Ok(stopped) if !stopped.is_empty() => {
            tracing::warn!(app = %app, "stopped {} orphaned release(s): {}", stopped.len(), stopped.join(", "))
        }
        Ok(_) => {}
        Err(e) => tracing::error!(app = %app, "looking for orphaned releases failed: {e}"),
    }
}

/// The deployment among `unfinished` that awaits promotion, if its release
/// still runs in its target slot (taken out of `unfinished`: it is not
/// interrupted).
async fn adopt_awaiting(
    context: &AppContext,
    unfinished: &mut Vec<DeploymentRecord>,
    record: &AppRecord,
    live_slot: Option<Slot>,
) -> Option<Awaiting> {
    let awaiting = DeploymentState::AwaitingPromotion.as_str();
    let at = unfinished.iter().position(|d| d.state == awaiting)?;
    let deployment = &unfinished[at];
    let slot: Slot = deployment.target_slot.as_deref()?.parse().ok()?;
    let slot_record = record
        .slot(slot.as_str())
        .filter(|_| Some(slot) != live_slot)?;
    let release = slot_record
        .release
        .clone()
        .filter(|r| Some(r.id) == deployment.release_id)?;
    let runtime_id = slot_record.runtime_id.as_deref()?;
    let started = match context
        .driver
        .adopt(runtime_id, &recorded_endpoints(slot_record))
        .await
    {
        Ok(Some(started)) => started,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(app = %context.name(), %slot, "cannot adopt the release awaiting promotion: {e}");
            return None;
        }
    };
    let log_path = slot_record.log_path.as_ref().map(PathBuf::from)?;
    tracing::info!(app = %context.name(), %slot, version = %release.version, deployment = deployment.id,
        "the deployment awaiting promotion goes on awaiting it");
    Some(Awaiting {
        record: unfinished.remove(at),
        slot,
        release,
        started,
        log_path,
    })
}

/// A deployment this process suspended while it awaited promotion (for an
/// upgrade that then did not happen), adopted again from the store.
pub(crate) async fn resume_suspended(context: &AppContext, id: i64) -> Option<Awaiting> {
    let store = context.store.clone();
    let name = context.name().to_string();
    let found = blocking(move || Ok((store.deployment(id)?, store.app(&name)?))).await;
    let (deployment, record) = match found {
        Ok((Some(deployment), Some(record))) => (deployment, record),
        _ => return None,
    };
    let live_slot = record.live_slot.as_deref().and_then(|s| s.parse().ok());
    adopt_awaiting(context, &mut vec![deployment], &record, live_slot).await
}

/// Routes the live release an upgrade handed over: it served traffic in
/// the old process a moment ago, so no health gate (and no 503 window);
/// the live-health monitor watches it from now on. False if the front
/// refused (nginx only): then it goes through the gate.
async fn route_handed(context: &AppContext, live: &LiveRelease) -> bool {
    match context
        .front
        .set_live(context.name(), Some(live.upstream.clone()))
        .await
    {
        Ok(_) => {
            tracing::info!(app = %context.name(), slot = %live.slot, version = %live.release.version,
                "serving the live release handed over by the previous process");
            true
        }
        Err(why) => {
            tracing::error!(app = %context.name(), "cannot route the handed-over live release: {why}");
            false
        }
    }
}

/// A release kept idle under `keep_old` survives a restart: if its slot is
/// recorded as standby and it still runs, it is adopted (its `keep_old`
/// window starts again). Only when nothing was interrupted: a standby of an
/// interrupted verification is that deployment's to clean up.
async fn adopt_standby(context: &AppContext, slot: Slot, record: &SlotRecord) -> Option<Standby> {
    if context.app.keep_old.is_zero() || record.state != SlotState::Standby.as_str() {
        return None;
    }
    let release = record.release.clone()?;
    let runtime_id = record.runtime_id.clone()?;
    match context
        .driver
        .adopt(&runtime_id, &recorded_endpoints(record))
        .await
    {
        Ok(Some(started)) => {
            tracing::info!(app = %context.name(), %slot, version = %release.version,
                "adopted the release kept idle for an instant rollback");
            Some(Standby {
                slot,
                release,
                endpoints: Endpoints::of(&started),
                runtime_id: started.runtime_id,
                exited: started.exited,
                log_path: record.log_path.as_ref().map(PathBuf::from),
            })
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(app = %context.name(), %slot, "cannot adopt the standby release: {e}");
            None
        }
    }
}

/// Deployments that were running when cutover stopped are recorded as
/// failed (their releases were stopped above).
async fn fail_interrupted(
    context: &AppContext,
    unfinished: Vec<cutover_store::DeploymentRecord>,
    live: Option<&LiveRelease>,
) -> Result<(), EngineError> {
    let serving = live.map_or_else(
        || "nothing".to_string(),
        |l| format!("{} ({})", l.slot, l.release.version),
    );
    for deployment in unfinished {
        let message = format!(
            "interrupted: cutover stopped during `{}`; on restart the release it started was stopped and {serving} kept serving",
            deployment.state,
        );
        let store = context.store.clone();
        let id = deployment.id;
        let event =
            blocking(move || store.transition(id, DeploymentState::Failed, &message)).await?;
        context.events.publish(event);
        tracing::warn!(app = %context.name(), deployment = id, "recorded interrupted deployment as failed");
    }
    Ok(())
}

/// The endpoints a slot's release had when it was recorded (what a driver
/// adopts it by; a swarm service's are listed again).
fn recorded_endpoints(record: &SlotRecord) -> Vec<Endpoint> {
    record
        .endpoints
        .iter()
        .filter_map(|e| {
            Some(Endpoint::new(
                e.addr.parse::<SocketAddr>().ok()?,
                e.label.clone(),
            ))
        })
        .collect()
}

async fn adopt_or_restart(
    context: &AppContext,
    slot: Slot,
    record: &SlotRecord,
) -> Option<LiveRelease> {
    let app = context.name();
    let release = record.release.clone()?;
    let recorded = recorded_endpoints(record);
    if let (Some(runtime_id), false) = (&record.runtime_id, recorded.is_empty()) {
        match context.driver.adopt(runtime_id, &recorded).await {
            Ok(Some(started)) => {
                tracing::info!(app = %app, %slot, version = %release.version, "adopted the live release");
                return Some(live_release(context, slot, release, started));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(app = %app, %slot, "cannot adopt the live release: {e}"),
        }
    }
    tracing::warn!(app = %app, %slot, version = %release.version, "the live release is not running; starting it again");
    let log_path = record
        .log_path
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            context.logs_dir.join(format!(
                "restart-{}-{slot}-{}.log",
                now_ms(),
                release.version
            ))
        });
    let spec = ReleaseSpec {
        app: app.to_string(),
        slot,
        version: release.version.clone(),
        deployment_id: 0,
        log_path: log_path.clone(),
        artifact: release.artifact.as_ref().map(PathBuf::from),
    };
    match context.driver.start(&spec).await {
        Ok(started) => {
            let endpoints = Endpoints::of(&started);
            let facts = SlotFacts {
                release_id: Some(release.id),
                runtime_id: Some(started.runtime_id.clone()),
                addr: endpoints.first_addr().map(|a| a.to_string()),
                endpoints: endpoints.records(),
                log_path: Some(log_path.display().to_string()),
            };
            slots::record(context, slot, SlotState::Live, facts).await;
            Some(live_release(context, slot, release, started))
        }
        Err(e) => {
            tracing::error!(app = %app, %slot, "cannot start the live release again: {e}; deploy a release to serve {app}");
            None
        }
    }
}

pub(crate) fn live_release(
    context: &AppContext,
    slot: Slot,
    release: cutover_store::ReleaseRecord,
    started: StartedRelease,
) -> LiveRelease {
    let endpoints = Endpoints::of(&started);
    LiveRelease {
        slot,
        upstream: crate::context::upstream(
            &context.app,
            slot,
            &release.version,
            &endpoints.current(),
        ),
        release,
        runtime_id: started.runtime_id,
        endpoints,
        exited: started.exited,
    }
}

/// Routes traffic to the recovered live release once it passes a health
/// check (invariant 1 holds after a restart too). Until then the app
/// answers 503.
pub(crate) async fn gate(context: AppContext, mut live: LiveRelease) -> Option<LiveRelease> {
    let app = context.name();
    let health = &context.app.health;
    let runtime = (context.driver.as_ref(), live.runtime_id.as_str());
    let endpoints = live.endpoints.clone();
    let current = move || endpoints.current();
    match health::wait_until_healthy(
        &current,
        health,
        &mut live.exited,
        health.deploy_timeout,
        runtime,
    )
    .await
    {
        Ok(took) => {
            crate::context::sync_endpoints(&live.upstream, &live.endpoints);
            if let Err(why) = context
                .front
                .set_live(app, Some(live.upstream.clone()))
                .await
            {
                // Only nginx can refuse. The release is live all the same
                // (recorded, running, healthy): nginx keeps the configuration
                // it has, and the next deployment targets the other slot.
                tracing::error!(app = %app, "cannot point nginx at the live release after restart: {why}");
            }
            tracing::info!(app = %app, slot = %live.slot, version = %live.release.version,
                "serving the live release again (healthy after {:.2}s)", took.as_secs_f64());
            Some(live)
        }
        Err(Unhealthy::Exited(how)) => {
            tracing::error!(app = %app, "the live release {how} while being checked after restart; deploy to serve {app} again");
            None
        }
        Err(Unhealthy::TimedOut { last, .. }) => {
            tracing::error!(app = %app, "the live release did not pass its health check after restart ({last}); {app} answers 503 until a deployment succeeds");
            None
        }
    }
}
