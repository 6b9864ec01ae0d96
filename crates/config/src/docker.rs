//! `[app.docker]`: each release runs as a container (the docker driver).
//!
//! The raw section ([`RawDocker`]) is deserialised strictly like the rest of
//! the file; [`validate`] turns it into a [`DockerConfig`] with paths
//! resolved against the config file's directory and defaults applied.
//! Secrets are never read here: the registry password is named by a file or
//! an environment variable and read by the driver when it needs it, so it
//! never sits in the configuration model (which is `Debug` and gets logged).

use crate::error::{ConfigError, Located};
use crate::model::{slot_ports, SlotPorts};
use crate::raw::RawPorts;
use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Label prefix reserved for the labels cutover puts on its containers.
pub const RESERVED_LABEL_PREFIX: &str = "cutover.";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocker {
    pub image: Spanned<String>,
    pub build: Option<Spanned<RawDockerBuild>>,
    pub push: Option<Spanned<bool>>,
    pub port: Option<Spanned<i64>>,
    pub host_ports: Option<Spanned<RawPorts>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    pub network: Option<Spanned<String>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub cpus: Option<Spanned<f64>>,
    pub stop_timeout: Option<HumanDuration>,
    pub keep_images: Option<Spanned<i64>>,
    pub registry_user: Option<Spanned<String>>,
    pub registry_password_file: Option<Spanned<String>>,
    pub registry_password_env: Option<Spanned<String>>,
    pub socket: Option<String>,
    pub advertise: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDockerBuild {
    pub context: Option<String>,
    pub dockerfile: Option<String>,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

/// How a release runs as a container. See the README's "Docker driver".
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Image reference with `{version}`, e.g. `registry.local:5000/web:{version}`.
    pub image: String,
    /// Build the image from a Dockerfile when it is not present.
    pub build: Option<DockerBuild>,
    /// Push the image after a build (to the registry named in `image`).
    pub push: bool,
    /// The port the app listens on inside the container (bridge and named
    /// networks). Published on 127.0.0.1.
    pub port: u16,
    /// Fixed host ports per slot; `None` lets Docker pick a free one. With
    /// host networking they are required and passed to the release as `PORT`.
    pub host_ports: Option<SlotPorts>,
    pub env: BTreeMap<String, String>,
    /// Bind mounts and volumes as Docker writes them (`SRC:DST[:MODE]`), with
    /// relative host paths resolved against the config file's directory.
    pub volumes: Vec<String>,
    /// Extra labels (never `cutover.*`).
    pub labels: BTreeMap<String, String>,
    pub network: DockerNetwork,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in CPUs (`0.5` = half a CPU).
    pub cpus: Option<f64>,
    /// Grace period after SIGTERM before Docker kills the container.
    pub stop_timeout: Duration,
    /// Images of this app kept for rollback (the newest ones used).
    pub keep_images: usize,
    pub registry: Option<RegistryAuth>,
    /// The Docker engine's unix socket; `None`: `DOCKER_HOST` or `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// `advertise`: the address of this host at which a front on another
    /// host reaches the release; the port is published on it instead of
    /// 127.0.0.1. `None`: 127.0.0.1.
    pub advertise: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone)]
pub struct DockerBuild {
    /// The build context directory (may contain `{version}`).
    pub context: String,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    /// Build arguments; values may contain `{version}` and `{app}`.
    pub args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerNetwork {
    /// Docker's default bridge; the port is published on 127.0.0.1.
    Bridge,
    /// The host's network: the release listens on its slot's host port.
    Host,
    /// A user-defined network (it must exist); the port is published on 127.0.0.1.
    Named(String),
}

impl DockerNetwork {
    pub fn mode(&self) -> &str {
        match self {
            DockerNetwork::Bridge => "bridge",
            DockerNetwork::Host => "host",
            DockerNetwork::Named(name) => name,
        }
    }
}

/// Registry credentials: the user name, and where the password is read
/// from at the moment it is needed.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: SecretSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret (trailing newline ignored).
    File(PathBuf),
    /// An environment variable of `cutover serve` holding the secret.
    Env(String),
}

/// Validates `[app.docker]`; `file` and `source` locate errors.
pub(crate) fn validate(
    spanned: &Spanned<RawDocker>,
    app: &str,
    base: &Path,
    file: &Path,
    source: &str,
) -> Result<DockerConfig, ConfigError> {
    docker_config(spanned, app, base).map_err(|located| ConfigError::located(file, source, located))
}

/// The section's checks, one field group each, in the order problems are
/// reported.
fn docker_config(
    spanned: &Spanned<RawDocker>,
    app: &str,
    base: &Path,
) -> Result<DockerConfig, Located> {
    let raw = spanned.get_ref();
    check_container_names(app, spanned.span())?;
    let image = image(&raw.image, app)?;
    let network = network(raw.network.as_ref())?;
    let host_ports = raw
        .host_ports
        .as_ref()
        .map(|ports| slot_ports(ports, "host_ports"))
        .transpose()?;
    let port = container_port(spanned, &network, host_ports.is_some())?;
    let build = raw.build.as_ref().map(|b| build(b, base)).transpose()?;
    let push = push(raw.push.as_ref(), build.is_some())?;
    if let Some(problem) = raw
        .env
        .iter()
        .find_map(|(key, value)| crate::model::env_entry_problem(key, value))
    {
        return Err((spanned.span(), format!("[app.docker] env: {problem}")));
    }
    let volumes = raw
        .volumes
        .iter()
        .map(|volume| {
            resolve_volume(volume.get_ref(), base).map_err(|problem| (volume.span(), problem))
        })
        .collect::<Result<_, _>>()?;
    Ok(DockerConfig {
        image,
        build,
        push,
        port,
        host_ports,
        env: raw.env.clone(),
        volumes,
        labels: labels(raw.labels.as_ref())?,
        network,
        memory: raw.memory.as_ref().map(memory).transpose()?,
        cpus: raw.cpus.as_ref().map(cpus).transpose()?,
        stop_timeout: raw.stop_timeout.map_or(Duration::from_secs(10), |d| d.0),
        keep_images: raw.keep_images.as_ref().map_or(Ok(3), keep_images)?,
        registry: registry_auth(raw, base)?,
        socket: raw.socket.as_deref().map(|s| engine_socket(s, base)),
        advertise: raw
            .advertise
            .as_ref()
            .map(crate::model::advertise)
            .transpose()?,
    })
}

/// An engine socket as written (`/path`, a path relative to the config, or
/// `unix:///path` as in `DOCKER_HOST` and the README) as a path.
pub(crate) fn engine_socket(written: &str, base: &Path) -> PathBuf {
    base.join(written.strip_prefix("unix://").unwrap_or(written))
}

pub(crate) fn check_container_names(app: &str, span: Range<usize>) -> Result<(), Located> {
    if app.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Ok(());
    }
    Err((
        span,
        format!("app `{app}` runs in containers named `{app}-blue` and `{app}-green`, and Docker names must start with a letter or digit; rename the app"),
    ))
}

pub(crate) fn image(raw: &Spanned<String>, app: &str) -> Result<String, Located> {
    let image = raw.get_ref().trim().to_string();
    if !image.contains("{version}") {
        return Err((
            raw.span(),
            format!("image `{image}` must contain {{version}} so that every release runs its own image, e.g. \"{app}:{{version}}\" or \"registry.local:5000/{app}:{{version}}\""),
        ));
    }
    let sample = image.replace("{version}", "v1");
    if let Err(problem) = check_reference(&sample) {
        return Err((
            raw.span(),
            format!("image `{image}` is not a valid image reference: {problem}"),
        ));
    }
    Ok(image)
}

fn network(raw: Option<&Spanned<String>>) -> Result<DockerNetwork, Located> {
    let span = || raw.map_or(0..0, Spanned::span);
    match raw.map(|n| n.get_ref().trim()) {
        None | Some("bridge") | Some("default") => Ok(DockerNetwork::Bridge),
        Some("host") => Ok(DockerNetwork::Host),
        Some("none") => Err((
            span(),
            "network = \"none\" leaves the release unreachable; use \"bridge\", \"host\" or a network's name".to_string(),
        )),
        Some(name) if valid_name(name) => Ok(DockerNetwork::Named(name.to_string())),
        Some(name) => Err((
            span(),
            format!("network `{name}` is not a valid Docker network name; use \"bridge\", \"host\" or the name of a network created with `docker network create`"),
        )),
    }
}

/// The port inside the container: none with host networking (the release
/// listens on its slot's host port), else `port` or 8080.
fn container_port(
    spanned: &Spanned<RawDocker>,
    network: &DockerNetwork,
    has_host_ports: bool,
) -> Result<u16, Located> {
    let raw = spanned.get_ref();
    match (&raw.port, network) {
        (Some(port), DockerNetwork::Host) => Err((
            port.span(),
            "with network = \"host\" the container listens on the host itself: remove `port` and set host_ports = { blue = …, green = … } (the release gets its slot's port in $PORT)".to_string(),
        )),
        (None, DockerNetwork::Host) if !has_host_ports => Err((
            raw.network.as_ref().map_or(spanned.span(), Spanned::span),
            "network = \"host\" needs host_ports = { blue = …, green = … }: both slots share the host's network, so each listens on its own port (given to the release in $PORT)".to_string(),
        )),
        (None, DockerNetwork::Host) => Ok(0),
        (None, _) => Ok(8080),
        (Some(port), _) => match u16::try_from(*port.get_ref()) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err((
                port.span(),
                format!("port {} is not a port; use the port the app listens on inside the container, 1-65535", port.get_ref()),
            )),
        },
    }
}

pub(crate) fn build(
    spanned: &Spanned<RawDockerBuild>,
    base: &Path,
) -> Result<DockerBuild, Located> {
    let build = spanned.get_ref();
    let context = build.context.as_deref().unwrap_or(".");
    let context = if Path::new(context).is_absolute() {
        context.to_string()
    } else {
        base.join(context).display().to_string()
    };
    let dockerfile = build
        .dockerfile
        .clone()
        .unwrap_or_else(|| "Dockerfile".to_string());
    if dockerfile.trim().is_empty() || Path::new(&dockerfile).is_absolute() {
        return Err((
            spanned.span(),
            format!("build.dockerfile `{dockerfile}` must be a path inside the build context, e.g. \"Dockerfile\" or \"docker/Dockerfile.web\""),
        ));
    }
    if let Some(bad) = build.args.keys().find(|k| !valid_arg_name(k)) {
        return Err((
            spanned.span(),
            format!("build argument `{bad}` is not a valid name; use letters, digits and `_`"),
        ));
    }
    Ok(DockerBuild {
        context,
        dockerfile,
        args: build.args.clone(),
    })
}

pub(crate) fn push(raw: Option<&Spanned<bool>>, has_build: bool) -> Result<bool, Located> {
    let push = raw.is_some_and(|p| *p.get_ref());
    if push && !has_build {
        return Err((
            raw.map_or(0..0, Spanned::span),
            "push = true needs a `build` to push: cutover pushes the images it builds".to_string(),
        ));
    }
    Ok(push)
}

pub(crate) fn labels(
    raw: Option<&Spanned<BTreeMap<String, String>>>,
) -> Result<BTreeMap<String, String>, Located> {
    let Some(labels) = raw else {
        return Ok(BTreeMap::new());
    };
    if let Some(bad) = labels
        .get_ref()
        .keys()
        .find(|k| k.starts_with(RESERVED_LABEL_PREFIX) || k.trim().is_empty())
    {
        return Err((
            labels.span(),
            format!("label `{bad}` is not allowed: labels starting with `{RESERVED_LABEL_PREFIX}` are set by cutover itself"),
        ));
    }
    Ok(labels.get_ref().clone())
}

fn memory(raw: &Spanned<ByteSize>) -> Result<u64, Located> {
    let bytes = raw.get_ref().0;
    if bytes >= 6 << 20 && i64::try_from(bytes).is_ok() {
        return Ok(bytes);
    }
    Err((
        raw.span(),
        "memory must be at least \"6MB\" (Docker's minimum), e.g. \"512MB\"".to_string(),
    ))
}

fn cpus(raw: &Spanned<f64>) -> Result<f64, Located> {
    let cpus = *raw.get_ref();
    if cpus.is_finite() && (0.01..=1024.0).contains(&cpus) {
        return Ok(cpus);
    }
    Err((
        raw.span(),
        format!("cpus = {cpus} is not a CPU limit; use a number like 0.5 or 2"),
    ))
}

fn keep_images(raw: &Spanned<i64>) -> Result<usize, Located> {
    match usize::try_from(*raw.get_ref()) {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err((
            raw.span(),
            "keep_images must be between 1 and 100 (the live release's image is always kept)"
                .to_string(),
        )),
    }
}

fn registry_auth(raw: &RawDocker, base: &Path) -> Result<Option<RegistryAuth>, Located> {
    let password = match (&raw.registry_password_file, &raw.registry_password_env) {
        (Some(file), Some(_)) => {
            return Err((
                file.span(),
                "set either registry_password_file or registry_password_env, not both".to_string(),
            ))
        }
        (Some(file), None) => Some((file.span(), SecretSource::File(base.join(file.get_ref())))),
        (None, Some(env)) => {
            let name = env.get_ref().trim();
            if name.is_empty() || name.contains('=') {
                return Err((
                    env.span(),
                    format!("registry_password_env `{name}` is not an environment variable name"),
                ));
            }
            Some((env.span(), SecretSource::Env(name.to_string())))
        }
        (None, None) => None,
    };
    match (&raw.registry_user, password) {
        (Some(user), Some((_, password))) if !user.get_ref().trim().is_empty() => {
            Ok(Some(RegistryAuth {
                username: user.get_ref().trim().to_string(),
                password,
            }))
        }
        (Some(user), _) => Err((
            user.span(),
            "registry_user needs a password: set registry_password_file (a file holding it) or registry_password_env (a variable holding it); passwords are never written in cutover.toml".to_string(),
        )),
        (None, Some((span, _))) => Err((
            span,
            "a registry password needs registry_user (the user name to log in with)".to_string(),
        )),
        (None, None) => Ok(None),
    }
}

/// `SRC:DST[:MODE]`; a relative SRC (`./data`, `../x`) becomes absolute.
fn resolve_volume(text: &str, base: &Path) -> Result<String, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = |why: &str| {
        format!("volume `{text}` {why}; write it like \"/srv/web:/app\", \"./data:/data:ro\" or \"web-data:/data\"")
    };
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => return Err(bad("is not SOURCE:TARGET[:MODE]")),
    };
    if source.is_empty() || !target.starts_with('/') {
        return Err(bad("needs a source and an absolute target path"));
    }
    let source = if source.starts_with("./") || source.starts_with("../") || source == "." {
        base.join(source).display().to_string()
    } else if source.starts_with('/') || valid_name(source) {
        source.to_string()
    } else {
        return Err(bad("has a source that is neither a path nor a volume name"));
    };
    Ok(match mode {
        Some(mode) => format!("{source}:{target}:{mode}"),
        None => format!("{source}:{target}"),
    })
}

/// Docker object names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_arg_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A loose check of an image reference (`[host[:port]/]path[:tag][@digest]`):
/// what Docker would refuse with a less helpful message.
pub fn check_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() || reference.len() > 255 {
        return Err("it must be 1-255 characters long".to_string());
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("it contains whitespace".to_string());
    }
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match without_digest[last_slash..].rfind(':') {
        Some(i) => (
            &without_digest[..last_slash + i],
            Some(&without_digest[last_slash + i + 1..]),
        ),
        None => (without_digest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let mut components = name.split('/').peekable();
    let mut first = true;
    while let Some(component) = components.next() {
        let is_host = first
            && components.peek().is_some()
            && (component.contains(['.', ':']) || component == "localhost");
        first = false;
        if is_host {
            continue;
        }
        let ok = !component.is_empty()
            && component.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && component.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(format!(
                "`{component}` is not a valid repository name component (lowercase letters, digits, `.`, `_`, `-`)"
            ));
        }
    }
    Ok(())
}

/// Docker tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("tag `{tag}` is not valid: Docker tags are 1-128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, DriverConfig};

    const APP: &str = r#"
[[app]]
name = "web"
[app.docker]
"#;

    fn parse(docker: &str) -> Result<DockerConfig, String> {
        let text = format!("{APP}{docker}\n");
        let config =
            Config::parse(Path::new("/srv/cutover.toml"), &text).map_err(|e| e.to_string())?;
        match config.apps.into_iter().next().map(|app| app.driver) {
            Some(DriverConfig::Docker(docker)) => Ok(docker),
            other => Err(format!("not a docker app: {other:?}")),
        }
    }

    fn rejected(docker: &str) -> String {
        match parse(docker) {
            Ok(config) => format!("accepted: {config:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_full_section_resolves_paths_and_defaults() {
        let config = parse(
            r#"image = "127.0.0.1:5000/web:{version}"
build = { context = "app", args = { VERSION = "{version}" } }
push = true
port = 9000
env = { MODE = "prod" }
volumes = ["./data:/data:ro", "web-cache:/cache"]
labels = { team = "payments" }
network = "backend"
memory = "512MB"
cpus = 0.5
stop_timeout = "5s"
keep_images = 2
registry_user = "ci"
registry_password_file = "secrets/registry"
"#,
        );
        let config = match config {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.port, 9000);
        assert!(config.push);
        let build = config
            .build
            .as_ref()
            .map(|b| (b.context.as_str(), b.dockerfile.as_str()));
        assert_eq!(build, Some(("/srv/app", "Dockerfile")));
        assert_eq!(config.volumes, ["/srv/./data:/data:ro", "web-cache:/cache"]);
        assert_eq!(config.network, DockerNetwork::Named("backend".to_string()));
        assert_eq!(config.memory, Some(512 << 20));
        assert_eq!(config.stop_timeout, Duration::from_secs(5));
        assert_eq!(config.keep_images, 2);
        let password = config.registry.map(|r| r.password);
        assert_eq!(
            password,
            Some(SecretSource::File(PathBuf::from("/srv/secrets/registry")))
        );

        let defaults = parse(r#"image = "web:{version}""#)
            .map_err(|e| panic!("{e}"))
            .ok();
        let defaults = defaults.map(|d| (d.port, d.network, d.keep_images, d.stop_timeout));
        assert_eq!(
            defaults,
            Some((8080, DockerNetwork::Bridge, 3, Duration::from_secs(10)))
        );
    }

    #[test]
    fn bad_sections_are_rejected_with_what_to_do() {
        for (docker, expected) in [
            (r#"image = "web:latest""#, "must contain {version}"),
            (r#"image = "Web:{version}""#, "not a valid image reference"),
            (
                "image = \"web:{version}\"\nregistry_password = \"hunter2\"",
                "unknown field `registry_password`",
            ),
            (
                "image = \"web:{version}\"\nregistry_user = \"ci\"",
                "registry_user needs a password",
            ),
            (
                "image = \"web:{version}\"\nnetwork = \"host\"",
                "needs host_ports",
            ),
            (
                "image = \"web:{version}\"\nnetwork = \"host\"\nport = 80\nhost_ports = { blue = 1, green = 2 }",
                "remove `port`",
            ),
            (
                "image = \"web:{version}\"\nlabels = { \"cutover.app\" = \"x\" }",
                "set by cutover itself",
            ),
            ("image = \"web:{version}\"\npush = true", "needs a `build`"),
            ("image = \"web:{version}\"\nport = 0", "is not a port"),
            ("image = \"web:{version}\"\nkeep_images = 0", "keep_images must be"),
            ("image = \"web:{version}\"\nvolumes = [\"data\"]", "SOURCE:TARGET"),
            ("image = \"web:{version}\"\nmemory = \"1MB\"", "at least"),
        ] {
            let error = rejected(docker);
            assert!(error.contains(expected), "{docker}: {error}");
            assert!(error.starts_with("/srv/cutover.toml:"), "{error}");
        }
    }

    #[test]
    fn references_are_checked_loosely() {
        for good in [
            "web:v1",
            "localhost:5000/web:v1",
            "127.0.0.1:5000/team/web:1.2.3",
            "registry.example.com/web:v1_2-3",
            "web",
        ] {
            assert!(check_reference(good).is_ok(), "{good}");
        }
        for bad in ["Web:v1", "web:v1+build", "web :v1", "web:-x", "", "/web:v1"] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes_resolve_relative_sources() {
        let base = Path::new("/srv");
        assert_eq!(
            resolve_volume("./data:/data:ro", base).as_deref(),
            Ok("/srv/./data:/data:ro")
        );
        assert_eq!(
            resolve_volume("web-data:/data", base).as_deref(),
            Ok("web-data:/data")
        );
        assert_eq!(resolve_volume("/a:/b", base).as_deref(), Ok("/a:/b"));
        assert!(resolve_volume("data", base).is_err());
        assert!(resolve_volume("a:relative", base).is_err());
        assert!(resolve_volume("a b:/x", base).is_err());
    }
}
