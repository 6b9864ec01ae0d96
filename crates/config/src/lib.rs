//! # cutover-config
//!
//! The configuration model of cutover (`cutover.toml`) and its validation.
//! Everything else in the workspace consumes the typed [`Config`]; nothing
//! else parses TOML.
//!
//! # Layout
//!
//! - [`units`]: duration (`"500ms"`, `"2m"`) and size (`"100MB"`) values.
//! - [`raw`]: the file as written, deserialised strictly (unknown keys are
//!   errors, every error carries a span).
//! - [`model`]: the validated, typed configuration (paths resolved,
//!   defaults applied, cross-field rules checked).
//! - [`error`]: [`ConfigError`], which names file, line, column and problem.
//! - [`cidr`]: [`cidr::Cidr`], the address blocks of `[proxy]
//!   trusted_proxies`.
//! - [`tls`]: the built-in proxy's TLS keys (`tls_listen`, `[[proxy.tls]]`,
//!   `redirect_http`).
//! - [`admin`]: `[admin]`, the unix socket and the TCP listener for remote
//!   operation (tokens, TLS, allowed `Host` names, CORS origins); the one
//!   token file reader.
//! - [`acme`]: `[proxy.acme]`, automatic HTTPS (directory, contact,
//!   domains defaulting to the apps' hosts, challenge, ca_file).
//! - [`group`]: `[[group]]` (release groups: apps switched as one) and
//!   `[[app]] paths` (path prefixes routed with the Host).
//! - [`docker`], [`swarm`]: `[app.docker]` and `[app.swarm]` (the image
//!   keys of both are checked by the same functions in `docker.rs`).
//! - [`supervise`]: what happens when the live release dies (`restart`,
//!   `restart_limit`, backoff, `on_live_failure`).
//! - [`display`]: the one escaping rule for text from outside (control and
//!   bidi characters) that every output of cutover applies.

#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod cidr;
pub mod display;
pub mod docker;
pub mod error;
pub mod git_ref;
pub mod group;
pub mod model;
pub mod nginx;
mod raw;
pub mod source;
pub mod supervise;
pub mod swarm;
pub mod tls;
pub mod units;
pub mod webhook;

pub use acme::{AcmeConfig, Challenge};
pub use admin::RemoteAdmin;
pub use docker::DockerConfig;
pub use error::ConfigError;
pub use group::GroupConfig;
pub use model::*;
pub use nginx::{NginxConfig, SshConfig};
pub use source::{DeployOn, RefKind, SourceConfig};
pub use supervise::{OnLiveFailure, RestartPolicy, SuperviseConfig};
pub use swarm::SwarmConfig;
pub use tls::{TlsCert, TlsConfig};
pub use webhook::WebhookConfig;
