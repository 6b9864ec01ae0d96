//! `[app.swarm]`: each release runs as a Docker Swarm service (the swarm
//! driver), `<app>-<slot>`, with `replicas` tasks publishing `port` in host
//! mode on their nodes.
//!
//! The image keys (`image` with `{version}`, `build`, `push`) mean what they
//! mean in `[app.docker]` and are checked by the same functions.

use crate::docker::{DockerBuild, RawDockerBuild};
use crate::error::{ConfigError, Located};
use crate::units::HumanDuration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Most replicas a release may ask for.
pub const MAX_REPLICAS: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwarm {
    pub image: Spanned<String>,
    pub build: Option<Spanned<RawDockerBuild>>,
    pub push: Option<Spanned<bool>>,
    pub port: Option<Spanned<i64>>,
    pub replicas: Option<Spanned<i64>>,
    pub constraints: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    pub networks: Option<Spanned<Vec<String>>>,
    pub stop_timeout: Option<HumanDuration>,
    pub socket: Option<String>,
}

/// How a release runs as a swarm service. See the README's "Docker Swarm".
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Image reference with `{version}`; other nodes pull it, so it names a
    /// registry they reach (or every node has it).
    pub image: String,
    pub build: Option<DockerBuild>,
    /// Push a built image to its registry (so other nodes can pull it).
    pub push: bool,
    /// The port the app listens on inside its containers; each task
    /// publishes it in host mode on a port its node picks.
    pub port: u16,
    /// Tasks per release (at least 1).
    pub replicas: u32,
    /// Placement constraints, as Docker writes them (`node.labels.tier == web`).
    pub constraints: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Extra labels of the service and its containers (never `cutover.*`).
    pub labels: BTreeMap<String, String>,
    /// Networks (existing, swarm-scoped) the tasks join.
    pub networks: Vec<String>,
    /// Grace period after SIGTERM before a task is killed.
    pub stop_timeout: Duration,
    /// A manager's engine socket; `None`: `DOCKER_HOST` or `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
}

/// Validates `[app.swarm]`; `file` and `source` locate errors.
pub(crate) fn validate(
    spanned: &Spanned<RawSwarm>,
    app: &str,
    base: &Path,
    file: &Path,
    source: &str,
) -> Result<SwarmConfig, ConfigError> {
    swarm_config(spanned, app, base).map_err(|located| ConfigError::located(file, source, located))
}

fn swarm_config(
    spanned: &Spanned<RawSwarm>,
    app: &str,
    base: &Path,
) -> Result<SwarmConfig, Located> {
    let raw = spanned.get_ref();
    crate::docker::check_container_names(app, spanned.span())?;
    let image = crate::docker::image(&raw.image, app)?;
    let build = raw
        .build
        .as_ref()
        .map(|b| crate::docker::build(b, base))
        .transpose()?;
    let push = crate::docker::push(raw.push.as_ref(), build.is_some())?;
    if let Some(problem) = raw
        .env
        .iter()
        .find_map(|(key, value)| crate::model::env_entry_problem(key, value))
    {
        return Err((spanned.span(), format!("[app.swarm] env: {problem}")));
    }
    Ok(SwarmConfig {
        image,
        build,
        push,
        port: port(raw.port.as_ref())?,
        replicas: replicas(raw.replicas.as_ref())?,
        constraints: constraints(raw.constraints.as_ref())?,
        env: raw.env.clone(),
        labels: crate::docker::labels(raw.labels.as_ref())?,
        networks: networks(raw.networks.as_ref())?,
        stop_timeout: raw.stop_timeout.map_or(Duration::from_secs(10), |d| d.0),
        socket: raw
            .socket
            .as_deref()
            .map(|s| crate::docker::engine_socket(s, base)),
    })
}

fn port(raw: Option<&Spanned<i64>>) -> Result<u16, Located> {
    let Some(port) = raw else { return Ok(8080) };
    match u16::try_from(*port.get_ref()) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err((
            port.span(),
            format!(
                "port {} is not a port; use the port the app listens on inside its containers, 1-65535",
                port.get_ref()
            ),
        )),
    }
}

fn replicas(raw: Option<&Spanned<i64>>) -> Result<u32, Located> {
    let Some(replicas) = raw else { return Ok(1) };
    match u32::try_from(*replicas.get_ref()) {
        Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
        _ => Err((
            replicas.span(),
            format!(
                "replicas = {} is not a task count; a release runs 1 to {MAX_REPLICAS} tasks",
                replicas.get_ref()
            ),
        )),
    }
}

/// `node.labels.tier == web`: an attribute, `==` or `!=`, a value.
fn constraints(raw: Option<&Spanned<Vec<String>>>) -> Result<Vec<String>, Located> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    for constraint in list.get_ref() {
        let well_formed = ["==", "!="].iter().any(|op| {
            constraint.split_once(op).is_some_and(|(key, value)| {
                !key.trim().is_empty() && !value.trim().is_empty() && !value.contains(['=', '!'])
            })
        });
        if !well_formed || constraint.contains(['\0', '\n']) {
            return Err((
                list.span(),
                format!("constraint `{constraint}` is not ATTRIBUTE == VALUE or ATTRIBUTE != VALUE, e.g. \"node.labels.tier == web\" or \"node.role != manager\""),
            ));
        }
    }
    Ok(list.get_ref().clone())
}

fn networks(raw: Option<&Spanned<Vec<String>>>) -> Result<Vec<String>, Located> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut seen = Vec::new();
    for network in list.get_ref() {
        if !crate::docker::valid_name(network) || seen.contains(network) {
            return Err((
                list.span(),
                format!("network `{network}` is not a Docker network name or is listed twice; name each network (created with `docker network create --driver overlay`) once"),
            ));
        }
        seen.push(network.clone());
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, DriverConfig};

    fn parse(swarm: &str) -> Result<SwarmConfig, String> {
        let text = format!("[[app]]\nname = \"web\"\n[app.swarm]\n{swarm}\n");
        let config =
            Config::parse(Path::new("/srv/cutover.toml"), &text).map_err(|e| e.to_string())?;
        match config.apps.into_iter().next().map(|app| app.driver) {
            Some(DriverConfig::Swarm(swarm)) => Ok(swarm),
            other => Err(format!("not a swarm app: {other:?}")),
        }
    }

    #[test]
    fn a_full_section_and_the_defaults() {
        let full = parse(
            r#"image = "127.0.0.1:5000/web:{version}"
build = { context = "app" }
push = true
port = 9000
replicas = 3
constraints = ["node.labels.tier == web", "node.role != manager"]
env = { MODE = "prod" }
labels = { team = "payments" }
networks = ["backend"]
stop_timeout = "5s"
socket = "/run/docker.sock"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((full.port, full.replicas, full.push), (9000, 3, true));
        assert_eq!(full.constraints.len(), 2);
        assert_eq!(full.networks, ["backend"]);
        assert_eq!(full.stop_timeout, Duration::from_secs(5));
        let defaults = parse(r#"image = "web:{version}""#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((defaults.port, defaults.replicas), (8080, 1));
        assert!(defaults.constraints.is_empty() && defaults.networks.is_empty());
    }

    #[test]
    fn a_socket_written_as_a_unix_url_or_a_relative_path_is_a_path() {
        let socket = |written: &str| {
            parse(&format!(
                "image = \"web:{{version}}\"\nsocket = \"{written}\""
            ))
            .unwrap_or_else(|e| panic!("{e}"))
            .socket
        };
        assert_eq!(
            socket("unix:///var/run/docker.sock"),
            Some(PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(
            socket("run/docker.sock"),
            Some(PathBuf::from("/srv/run/docker.sock"))
        );
    }
}
