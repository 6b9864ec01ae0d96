//! A deployment's journal: every transition and note is written to the
//! store first and published to followers second, so what a follower sees
//! is always what a restart would find ("persist, then act": a step that
//! needs its transition recorded before acting checks [`Journal::step`]'s
//! answer). Every step of a deployment, and the build pipeline as its
//! progress sink, writes through here.

use crate::blocking::blocking;
use crate::context::AppContext;
use crate::events::EventBus;
use crate::slots::SlotState;
use cutover_config::Slot;
use cutover_store::{DeploymentState, Store};

#[derive(Clone)]
pub(crate) struct Journal {
    store: Store,
    events: EventBus,
    app: String,
    id: i64,
}

/// Where a build from git is, as recorded with its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuildState {
    Fetching,
    Building,
    Built,
    /// Ended without building: the commit is live, older, or moved on, or
    /// the deployment was aborted.
    Skipped,
    Failed,
}

impl BuildState {
    fn as_str(self) -> &'static str {
        match self {
            BuildState::Fetching => "fetching",
            BuildState::Building => "building",
            BuildState::Built => "built",
            BuildState::Skipped => "skipped",
            BuildState::Failed => "failed",
        }
    }
}

impl Journal {
    pub(crate) fn new(context: &AppContext, deployment_id: i64) -> Journal {
        Journal {
            store: context.store.clone(),
            events: context.events.clone(),
            app: context.name().to_string(),
            id: deployment_id,
        }
    }

    /// Records a transition, then publishes it; false when it could not be
    /// recorded (then whatever it announces must not happen).
    pub(crate) async fn step(&self, state: DeploymentState, message: &str) -> bool {
        let (store, id, text) = (self.store.clone(), self.id, message.to_string());
        tracing::info!(app = %self.app, deployment = id, state = state.as_str(), "{message}");
        match blocking(move || store.transition(id, state, &text)).await {
            Ok(event) => {
                self.events.publish(event);
                true
            }
            Err(e) => {
                tracing::error!(app = %self.app, deployment = id, "cannot record {}: {e}", state.as_str());
                false
            }
        }
    }

    /// Records a note in the current state, then publishes it and logs it.
    pub(crate) async fn note(&self, message: &str) {
        self.output(message).await;
        tracing::info!(app = %self.app, deployment = self.id, "{message}");
    }

    /// Records a note without logging it (build output, which has its own log).
    pub(crate) async fn output(&self, message: &str) {
        let (store, id, text) = (self.store.clone(), self.id, message.to_string());
        match blocking(move || store.note(id, &text)).await {
            Ok(event) => self.events.publish(event),
            Err(e) => {
                tracing::error!(app = %self.app, deployment = id, "cannot record a note: {e}")
            }
        }
    }

    /// Records a switch in one transaction: `slot` becomes live (None:
    /// nothing), the slot that was live gets `previous`, the deployment
    /// moves to `state`. False when it could not be recorded.
    pub(crate) async fn switch(
        &self,
        slot: Option<Slot>,
        previous: SlotState,
        state: DeploymentState,
        message: &str,
    ) -> bool {
        let (store, id, app, text) = (
            self.store.clone(),
            self.id,
            self.app.clone(),
            message.to_string(),
        );
        tracing::info!(app = %self.app, deployment = id, state = state.as_str(), "{message}");
        let label = previous.as_str();
        match blocking(move || {
            store.record_switch(&app, slot.map(Slot::as_str), label, id, state, &text)
        })
        .await
        {
            Ok(event) => {
                self.events.publish(event);
                true
            }
            Err(e) => {
                tracing::error!(app = %self.app, deployment = id, "cannot record the live slot: {e}");
                false
            }
        }
    }

    pub(crate) async fn build_state(&self, state: BuildState) {
        let (store, id) = (self.store.clone(), self.id);
        if let Err(e) = blocking(move || store.set_source_build(id, state.as_str())).await {
            tracing::error!(app = %self.app, deployment = id, "cannot record the build state: {e}");
        }
    }

    /// The commit a build resolved its requested object to (a tag peeled).
    pub(crate) async fn source_commit(&self, commit: &str) {
        let (store, id, commit) = (self.store.clone(), self.id, commit.to_string());
        if let Err(e) = blocking(move || store.set_source_commit(id, &commit)).await {
            tracing::error!(app = %self.app, deployment = id, "cannot record the built commit: {e}");
        }
    }

    /// Publishes every stored event of the deployment (after it was inserted).
    pub(crate) async fn publish_stored(&self) {
        let (store, id) = (self.store.clone(), self.id);
        if let Ok(events) = blocking(move || store.events(id, 0)).await {
            for event in events {
                self.events.publish(event);
            }
        }
    }
}
