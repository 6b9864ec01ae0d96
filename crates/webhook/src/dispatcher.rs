//! Drains the persisted inbox: every `queued` delivery becomes one
//! deployment per matching app (`Engine::deploy_source`), oldest first.
//! Runs at start (deliveries accepted before a crash are not lost) and
//! whenever the receiver queues one. Bursts then collapse in each app's
//! deployment queue, and the build itself runs in the deployment.

use cutover_config::RefKind;
use cutover_engine::{Engine, EngineError, SourceRequest};
use cutover_store::{DeliveryRecord, DeliveryStatus, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How often the inbox is looked at even without a wake-up.
const POLL: Duration = Duration::from_secs(5);

/// Starts the dispatcher; it runs until the runtime stops (or the task is aborted).
pub fn spawn_dispatcher(engine: Engine, store: Store, wake: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let inbox = store.clone();
            match tokio::task::spawn_blocking(move || inbox.queued_deliveries()).await {
                Ok(Ok(queued)) => {
                    for delivery in queued {
                        dispatch(&engine, &store, delivery).await;
                    }
                }
                Ok(Err(e)) => tracing::error!("reading queued webhook deliveries failed: {e}"),
                Err(e) => tracing::error!("reading queued webhook deliveries failed: {e}"),
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    })
}

async fn dispatch(engine: &Engine, store: &Store, delivery: DeliveryRecord) {
    let kind = match delivery.ref_kind.as_deref() {
        Some("branch") => Some(RefKind::Branch),
        Some("tag") => Some(RefKind::Tag),
        _ => None,
    };
    let (Some(kind), Some(name), Some(commit)) = (kind, &delivery.ref_name, &delivery.commit)
    else {
        finish(
            store,
            &delivery,
            DeliveryStatus::Failed,
            Some("the delivery has no ref or commit".to_string()),
            &[],
        )
        .await;
        return;
    };
    let mut started = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    for app in &delivery.apps {
        let request = SourceRequest {
            provider: delivery.provider.clone(),
            delivery: Some(delivery.delivery_id.clone()),
            git_ref: kind.full_ref(name),
            commit: commit.clone(),
            force: false,
            trigger: "webhook".to_string(),
        };
        match engine.deploy_source(app, request).await {
            Ok(record) => {
                tracing::info!(app = %app, deployment = record.id, delivery = %delivery.delivery_id, "webhook delivery queued deployment {} of {app} {}", record.id, record.version);
                started.push(record.id);
            }
            // E.g. this commit's version is live already.
            Err(EngineError::Conflict(why)) => {
                tracing::info!(app = %app, delivery = %delivery.delivery_id, "webhook delivery deploys nothing: {why}");
                skipped.push(format!("{app}: {why}"));
            }
            // Shutting down or being upgraded: the delivery stays queued for
            // the next start (or the process that takes over).
            Err(EngineError::Stopped | EngineError::Upgrading(_)) => return,
            Err(e) => {
                tracing::warn!(app = %app, delivery = %delivery.delivery_id, "webhook delivery could not be deployed: {e}");
                failed.push(format!("{app}: {e}"));
            }
        }
    }
    let mut reasons = skipped;
    reasons.extend(failed.iter().cloned());
    let status = if !failed.is_empty() {
        DeliveryStatus::Failed
    } else if started.is_empty() {
        DeliveryStatus::Ignored
    } else {
        DeliveryStatus::Dispatched
    };
    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    finish(store, &delivery, status, reason, &started).await;
}

async fn finish(
    store: &Store,
    delivery: &DeliveryRecord,
    status: DeliveryStatus,
    reason: Option<String>,
    started: &[i64],
) {
    let store = store.clone();
    let (id, started) = (delivery.id, started.to_vec());
    let result = tokio::task::spawn_blocking(move || {
        store.finish_delivery(id, status.as_str(), reason.as_deref(), &started)
    })
    .await;
    if !matches!(result, Ok(Ok(()))) {
        tracing::error!(
            delivery = id,
            "cannot record how a webhook delivery was dispatched"
        );
    }
}
