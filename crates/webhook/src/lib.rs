//! # cutover-webhook
//!
//! The git trigger's front half: a receiver for GitHub, GitLab,
//! Gitea/Forgejo and Bitbucket (Cloud and Data Center) webhooks, and the
//! dispatcher that turns accepted deliveries into deployments. The build
//! itself (fetch, checkout, build steps, artifact) is the engine's
//! (its build pipeline), run in the deployment's `preparing` step.
//!
//! # Layout
//!
//! - [`signature`]: verification of the raw body (HMAC-SHA256, GitLab's
//!   token), constant-time, before anything parses it.
//! - [`secrets`]: webhook secrets read from files or environment
//!   variables; never printed.
//! - [`provider`]: headers of each provider and the normalisation of its
//!   push events into one [`provider::PushEvent`].
//! - [`receiver`]: the HTTP endpoints, size and time limits, rules per app,
//!   the persisted inbox (store table `webhook_deliveries`), answers. On
//!   `[webhook] listen`, or (the default) on a loopback port of its own
//!   that the proxy forwards `path_prefix` to like an upstream, so the data
//!   plane never waits on the receiver's SQLite insert.
//! - [`dispatcher`]: drains the inbox into `Engine::deploy_source`.

#![forbid(unsafe_code)]

pub mod dispatcher;
pub mod provider;
pub mod receiver;
pub mod secrets;
pub mod signature;

pub use dispatcher::spawn_dispatcher;
pub use provider::{normalize, Normalized, Provider, PushEvent};
pub use receiver::Receiver;

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the configuration has no [webhook] section")]
    NotConfigured,
    #[error("[webhook] {0}")]
    Secret(String),
    #[error("cannot listen on {addr} ([webhook] listen): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
