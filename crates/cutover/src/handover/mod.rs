//! Upgrades of cutover itself (`cutover upgrade`, SIGUSR2): the running
//! process starts the new binary and hands it, over a unix socket in
//! state_dir, its listening sockets, the admin socket and a snapshot of
//! the live and standby releases (`wire`); the new process adopts the
//! releases without a health gate, serves, and says so; the old one stops
//! accepting, passes each idle HTTP/1.1 connection at a request boundary
//! (`cutover_proxy::Handoff`), finishes what is in flight and exits.
//!
//! - `wire`: the versioned message format and descriptor passing.
//! - `old`: the running process's side ([`Upgrader`]).
//! - `new`: the starting process's side ([`Inheritance`]).

mod new;
mod old;
pub mod wire;

pub use new::{refuse, Inheritance};
pub use old::{forward_connections, HandedOver, Upgrader, UPGRADE_SOCKET_ENV};
pub use wire::{AppSnapshot, ListenerKind, ListenerTag, ReleaseSnapshot};

use cutover_engine::{AppHandover, HandoverRelease};

/// An app's releases as the snapshot carries them.
pub(crate) fn snapshot_of(app: &AppHandover) -> AppSnapshot {
    let release = |r: &HandoverRelease| ReleaseSnapshot {
        slot: r.slot.as_str().to_string(),
        version: r.version.clone(),
        runtime_id: r.runtime_id.clone(),
        endpoints: r.endpoints.clone(),
    };
    AppSnapshot {
        app: app.app.clone(),
        live: app.live.as_ref().map(release),
        standby: app.standby.as_ref().map(release),
    }
}

/// The engine's view of the snapshot (releases of an unknown slot are left
/// out: they go through the health gate).
pub(crate) fn handed_releases(apps: &[AppSnapshot]) -> Vec<AppHandover> {
    let release = |r: &ReleaseSnapshot| {
        Some(HandoverRelease {
            slot: r.slot.parse().ok()?,
            version: r.version.clone(),
            runtime_id: r.runtime_id.clone(),
            endpoints: r.endpoints.clone(),
        })
    };
    apps.iter()
        .map(|app| AppHandover {
            app: app.app.clone(),
            live: app.live.as_ref().and_then(release),
            standby: app.standby.as_ref().and_then(release),
        })
        .collect()
}
