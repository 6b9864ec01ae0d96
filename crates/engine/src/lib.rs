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
//! - [`Engine`] (`engine.rs`): the handle the admin API uses; starts one
//!   actor per app after recovery.
//! - `actor.rs`: the per-app actor: queue, collapse of bursts, abort.
//! - `deployment.rs`: one deployment, step by step, with clean-up on failure.
//! - `rollout.rs`: preview, promotion, hooks, gradual shifting, the switch,
//!   verification after it and the switch back when it fails.
//! - `hooks.rs`: running lifecycle hooks and verification commands.
//! - `recovery.rs`: what a start after a stop or crash does: adopt the live
//!   release (or start it again), fail interrupted deployments, remove orphans.
//! - [`health`]: HTTP health checks and the fast polling used while deploying.
//! - `events.rs`: the broadcast of deployment events followed over SSE.
//! - `front.rs`: where traffic enters — the built-in proxy's route table or
//!   an nginx that cutover drives — and how a switch and a drain happen there.
//! - `log_tail.rs`: the tail of a release's log for failure reasons.
//! - [`pipeline`]: the git trigger's build — fetch, check out, build, keep
//!   the artifact — run in the `preparing` step of a deployment from git.

#![forbid(unsafe_code)]

mod actor;
mod deployment;
mod engine;
mod error;
mod events;
mod front;
pub mod health;
mod hooks;
mod log_tail;
pub mod pipeline;
mod recovery;
mod rollout;

pub use engine::{AppStatus, DeployRequest, DeploymentDetail, Engine, LiveHealth};
pub use error::EngineError;
pub use events::AppEvent;
pub use log_tail::tail_lines;
pub use pipeline::SourceRequest;
