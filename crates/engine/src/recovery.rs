//! Start-up after a stop or a crash (invariant 6): the recorded live
//! release is adopted (or started again if it is gone) and must pass a
//! health check before traffic goes to it; interrupted deployments are
//! recorded as failed and their releases stopped; orphans are removed.

use crate::blocking::blocking;
use crate::context::{AppContext, Endpoints, LiveRelease};
use crate::error::EngineError;
use crate::health::{self, Unhealthy};
use crate::slots::{self, SlotFacts, SlotState};
use cutover_config::Slot;
use cutover_drivers::{Endpoint, ReleaseSpec, StartedRelease};
use cutover_store::{now_ms, DeploymentState, SlotRecord};
use std::net::SocketAddr;
use std::path::PathBuf;

pub(crate) struct Recovered {
    /// The live release, not yet routed: see [`gate`].
    pub live: Option<LiveRelease>,
}

pub(crate) async fn recover(context: &AppContext) -> Result<Recovered, EngineError> {
    let app = context.name().to_string();
    let store = context.store.clone();
    let name = app.clone();
    let (record, unfinished) = blocking(move || {
        let record = store.app(&name)?;
        let unfinished: Vec<_> = store
            .unfinished_deployments()?
            .into_iter()
            .filter(|d| d.app == name)
            .collect();
        Ok((record, unfinished))
    })
    .await?;
    let Some(record) = record else {
        return Ok(Recovered { live: None });
    };

    let live_slot: Option<Slot> = record.live_slot.as_deref().and_then(|s| s.parse().ok());
    let mut live = None;
    if let Some(slot) = live_slot {
        if let Some(slot_record) = record.slot(slot.as_str()) {
            live = adopt_or_restart(context, slot, slot_record).await;
        }
    }

    // nginx keeps its configuration across our crash: it may point at a
    // release that the switch never recorded as live. Point it back at the
    // recorded live release (which was serving: invariant 1 allows it)
    // before that other release is stopped below.
    if let (true, Some(live)) = (context.front.is_nginx(), &live) {
        if let Err(why) = context
            .front
            .set_live(&app, Some(live.upstream.clone()))
            .await
        {
            tracing::error!(app = %app, "cannot point nginx back at the live release: {why}");
        }
    }

    for slot in Slot::ALL.into_iter().filter(|s| Some(*s) != live_slot) {
        if let Some(slot_record) = record.slot(slot.as_str()) {
            if let Some(runtime_id) = &slot_record.runtime_id {
                tracing::info!(app = %app, %slot, "stopping the release left running in {slot} by an interrupted deployment");
                slots::stop(context, slot, runtime_id).await;
            }
        }
    }

    fail_interrupted(context, unfinished, live.as_ref()).await?;

    let keep: Vec<String> = live.iter().map(|l| l.runtime_id.clone()).collect();
    match context.driver.stop_orphans(&app, &keep).await {
        Ok(stopped) if !stopped.is_empty() => {
            tracing::warn!(app = %app, "stopped {} orphaned release(s): {}", stopped.len(), stopped.join(", "))
        }
        Ok(_) => {}
        Err(e) => tracing::error!(app = %app, "looking for orphaned releases failed: {e}"),
    }
    Ok(Recovered { live })
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

async fn adopt_or_restart(
    context: &AppContext,
    slot: Slot,
    record: &SlotRecord,
) -> Option<LiveRelease> {
    let app = context.name();
    let release = record.release.clone()?;
    let recorded: Vec<Endpoint> = record
        .endpoints
        .iter()
        .filter_map(|e| {
            Some(Endpoint::new(
                e.addr.parse::<SocketAddr>().ok()?,
                e.label.clone(),
            ))
        })
        .collect();
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

fn live_release(
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
