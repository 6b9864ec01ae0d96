//! The recorded state of an app's two slots. The engine names slot states
//! with [`SlotState`]; the store keeps their strings.

use crate::blocking::blocking;
use crate::context::AppContext;
use cutover_config::Slot;
use cutover_store::SlotUpdate;

/// What a slot is doing, as recorded (and shown by `cutover status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Starting,
    Checking,
    Live,
    /// Kept ready: the old release during verification, or idle under `keep_old`.
    Standby,
    Draining,
    /// Traffic went back to the other slot; this one is being stopped.
    Stopping,
    Stopped,
}

impl SlotState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Checking => "checking",
            SlotState::Live => "live",
            SlotState::Standby => "standby",
            SlotState::Draining => "draining",
            SlotState::Stopping => "stopping",
            SlotState::Stopped => "stopped",
        }
    }
}

/// What is known about the release in a slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotFacts {
    pub release_id: Option<i64>,
    pub runtime_id: Option<String>,
    pub addr: Option<String>,
    pub endpoints: Vec<cutover_store::EndpointRecord>,
    pub log_path: Option<String>,
}

/// Records a slot's state and release (a failure is logged: the slot
/// record is what `status` and the next start read, not a gate).
pub(crate) async fn record(context: &AppContext, slot: Slot, state: SlotState, facts: SlotFacts) {
    let update = SlotUpdate {
        state: state.as_str().to_string(),
        release_id: facts.release_id,
        runtime_id: facts.runtime_id,
        addr: facts.addr,
        endpoints: facts.endpoints,
        log_path: facts.log_path,
    };
    let store = context.store.clone();
    let name = context.name().to_string();
    if let Err(e) = blocking(move || store.set_slot(&name, slot.as_str(), &update)).await {
        tracing::error!(app = %context.name(), %slot, "cannot record the slot: {e}");
    }
}

/// Records only a slot's state, keeping its release and runtime.
pub(crate) async fn set_state(context: &AppContext, slot: Slot, state: SlotState) {
    let store = context.store.clone();
    let name = context.name().to_string();
    if let Err(e) =
        blocking(move || store.set_slot_state(&name, slot.as_str(), state.as_str())).await
    {
        tracing::error!(app = %context.name(), %slot, "cannot record the slot: {e}");
    }
}

/// Stops a release and records the slot as stopped (keeping its release and log).
pub(crate) async fn stop(context: &AppContext, slot: Slot, runtime_id: &str) {
    if let Err(e) = context.driver.stop(runtime_id).await {
        tracing::error!(app = %context.name(), %slot, "stopping the release failed: {e}");
    }
    let store = context.store.clone();
    let name = context.name().to_string();
    let stopped = SlotState::Stopped.as_str();
    if let Err(e) = blocking(move || store.clear_runtime(&name, slot.as_str(), stopped)).await {
        tracing::error!(app = %context.name(), %slot, "cannot record the stopped slot: {e}");
    }
}
