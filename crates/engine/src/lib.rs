//! # cutover-engine
//!
//! The control plane: one actor per app owns that app's state and runs one
//! deployment at a time; health checks gate every switch; the route table
//! of the proxy is the only thing of the data plane it touches, and drivers
//! are the only way it touches the outside world. Every state transition is
//! written to the store before it takes effect.
//!
//! # Layout
//!
//! Modules below only call modules further down this list (no import
//! cycles; ARCHITECTURE.md has the graph):
//!
//! - [`Engine`] (`engine.rs`): the handle the admin API and the webhook
//!   dispatcher use; starts one actor per app after recovery, stops them
//!   at a safe point on shutdown.
//! - `actor.rs`: the per-app actor: queue, collapse of bursts, abort,
//!   promotion, status, the live release's monitor, shutdown, and the
//!   upgrade hand-over (freeze, snapshot, suspend/resume of a deployment
//!   awaiting promotion).
//! - `groups.rs`: release groups — the [`Engine`]'s group calls (deploy,
//!   rollback, abort, promote, status, history) and the settling of a group
//!   deployment cut short by a crash (all members old or all new).
//! - `recovery.rs`: what a start after a stop or crash does: adopt the live
//!   release (or start it again; routed at once when an upgrade handed it
//!   over, else after a health gate), adopt a `keep_old` standby and a
//!   deployment awaiting promotion that still run, fail other interrupted
//!   deployments, remove orphans. Also the upgrade snapshot's types.
//! - `supervise.rs`: the live release's supervision — restart in place
//!   (same slot and release, health-gated) with backoff and a limit per
//!   window, the state `status` reports.
//! - `deployment/`: one deployment as a state machine — a runner (`mod.rs`)
//!   and one module per step (prepare, check, promote, switch, verify,
//!   finish); `deployment/group.rs` drives the members of a group
//!   deployment through those same steps and switches them in one swap.
//! - `pipeline.rs` (+ `pipeline/`): the git trigger's build — fetch, check
//!   out, build, keep the artifact — from plain inputs, reporting to a journal.
//! - `hooks.rs`: lifecycle hooks and verification commands (argv, env, timeout).
//! - `journal.rs`: a deployment's transitions and notes, stored then published.
//! - `slots.rs`: `SlotState` and the slot records.
//! - `cancel.rs`: abort and shutdown requests to a running deployment.
//! - `context.rs`: what an app's control plane shares; live and standby
//!   releases and their endpoints (one per swarm task), the upstream over them.
//! - `front.rs`: where traffic enters — the built-in proxy's route table or
//!   an nginx that cutover drives — and how a switch and a drain happen there.
//! - [`health`]: HTTP health checks and the fast polling used while deploying.
//! - `events.rs`: the broadcast of deployment events followed over SSE.
//! - `log_tail.rs`: the tail of a release's log for failure reasons.
//! - `model.rs`: requests and answers of the API; `Trigger`.
//! - `blocking.rs`: store calls on the blocking pool.

#![forbid(unsafe_code)]

mod actor;
mod blocking;
mod cancel;
mod context;
mod deployment;
mod engine;
mod error;
mod events;
mod front;
mod groups;
pub mod health;
mod hooks;
mod journal;
mod log_tail;
mod model;
mod pipeline;
mod recovery;
mod slots;
mod supervise;

pub use engine::{Engine, ShutdownOutcome};
pub use error::EngineError;
pub use events::AppEvent;
pub use groups::{GroupDeployRequest, GroupDeploymentDetail, GroupStatus};
pub use log_tail::tail_lines;
pub use model::{
    AppStatus, DeployRequest, DeploymentDetail, DrainingRelease, EndpointStatus, LiveHealth,
    SourceRequest, Supervision,
};
pub use recovery::{AppHandover, HandoverRelease};
