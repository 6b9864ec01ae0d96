//! `cutover.toml` exactly as written. Strict: unknown keys are errors, and
//! spans are kept where a later, cross-field check must point at a place.

use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<String>,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub admin: crate::admin::RawAdmin,
    #[serde(default)]
    pub app: Vec<Spanned<RawApp>>,
    pub webhook: Option<Spanned<crate::webhook::RawWebhook>>,
    #[serde(default)]
    pub group: Vec<Spanned<crate::group::RawGroup>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub mode: Option<Spanned<String>>,
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_body: Option<ByteSize>,
    pub header_read_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub upstream_connect_timeout: Option<HumanDuration>,
    pub upstream_response_timeout: Option<HumanDuration>,
    /// A count, or "auto".
    pub workers: Option<Spanned<toml::Value>>,
    pub io: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub access_log_file: Option<String>,
    pub tls_listen: Option<Vec<Spanned<String>>>,
    pub tls: Option<Spanned<Vec<crate::tls::RawTls>>>,
    pub redirect_http: Option<Spanned<bool>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_client: Option<Spanned<i64>>,
    pub nginx: Option<Spanned<crate::nginx::RawNginx>>,
    pub acme: Option<Spanned<crate::acme::RawAcme>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub name: Spanned<String>,
    pub hosts: Option<Vec<Spanned<String>>>,
    pub paths: Option<Spanned<Vec<Spanned<String>>>>,
    pub drain_timeout: Option<HumanDuration>,
    pub keep_old: Option<HumanDuration>,
    pub promotion: Option<Spanned<String>>,
    pub preview_header: Option<String>,
    pub upstream_protocol: Option<Spanned<String>>,
    pub max_queued: Option<Spanned<i64>>,
    pub auto_promote_after: Option<HumanDuration>,
    pub auto_abort_after: Option<HumanDuration>,
    pub verify_for: Option<HumanDuration>,
    pub verify_max_error_ratio: Option<Spanned<f64>>,
    pub verify_command: Option<Spanned<Vec<String>>>,
    pub shift: Option<Spanned<RawShift>>,
    pub hooks: Option<Spanned<RawHooks>>,
    #[serde(default)]
    pub health: RawHealth,
    pub process: Option<Spanned<RawProcess>>,
    pub docker: Option<Spanned<crate::docker::RawDocker>>,
    pub swarm: Option<Spanned<crate::swarm::RawSwarm>>,
    pub balance: Option<Spanned<String>>,
    pub source: Option<Spanned<crate::source::RawSource>>,
    pub restart: Option<Spanned<String>>,
    pub restart_limit: Option<Spanned<i64>>,
    pub restart_window: Option<Spanned<HumanDuration>>,
    pub restart_backoff: Option<Spanned<HumanDuration>>,
    pub restart_backoff_max: Option<Spanned<HumanDuration>>,
    pub on_live_failure: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<String>>,
    pub expect_body: Option<String>,
    pub timeout: Option<HumanDuration>,
    pub interval: Option<HumanDuration>,
    pub deploy_timeout: Option<HumanDuration>,
    pub healthy_after: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcess {
    pub command: Spanned<Vec<String>>,
    pub ports: Option<Spanned<RawPorts>>,
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<Spanned<String>>,
    pub stop_timeout: Option<HumanDuration>,
    pub advertise: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPorts {
    pub blue: u16,
    pub green: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShift {
    pub steps: Vec<i64>,
    pub every: HumanDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    #[serde(default)]
    pub before_switch: Vec<Vec<String>>,
    #[serde(default)]
    pub after_switch: Vec<Vec<String>>,
    #[serde(default)]
    pub on_failure: Vec<Vec<String>>,
    pub timeout: Option<HumanDuration>,
}
