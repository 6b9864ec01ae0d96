//! What can go wrong with the docker driver, each saying what happened and
//! what to do. No variant ever carries a secret.

use cutover_config::Slot;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {socket}: {reason}; is dockerd running (`docker info` tells)? Another socket can be set with the app's `socket` ([app.docker] or [app.swarm]) or DOCKER_HOST")]
    Unreachable { socket: String, reason: String },

    #[error("{context}: the Docker engine answered: {message}")]
    Api { context: String, message: String },

    #[error("image {image} is not present locally and the registry does not have it: {detail}; check the image name and tag in [app.docker] image, or add a `build`")]
    ImageNotFound { image: String, detail: String },

    #[error("pulling image {image} failed: {detail}; check that the registry is reachable and, if it needs a login, registry_user and registry_password_file/_env in [app.docker]")]
    PullFailed { image: String, detail: String },

    #[error("building image {image} failed: {reason}{}", tail_section(.tail))]
    BuildFailed {
        image: String,
        reason: String,
        tail: String,
    },

    #[error("cannot read the build context {path}: {problem}; check build.context and build.dockerfile in [app.docker]")]
    BuildContext { path: PathBuf, problem: String },

    #[error("pushing image {image} failed: {detail}; check that the registry is reachable and accepts pushes (credentials: registry_user and registry_password_file/_env in [app.docker])")]
    PushFailed { image: String, detail: String },

    #[error("version `{version}` cannot be used in a Docker image reference: {problem}")]
    BadVersion { version: String, problem: String },

    #[error("host port {port} for slot {slot} is already in use; free it or choose other host_ports in [app.docker]")]
    PortInUse { port: u16, slot: Slot },

    #[error("Docker could not publish the port of {container}: {message}; free the port or choose other host_ports in [app.docker]")]
    PublishFailed { container: String, message: String },

    #[error("network `{network}` does not exist; create it with `docker network create {network}` or change [app.docker] network")]
    NetworkNotFound { network: String },

    #[error("a container named {name} already exists and was not created by this cutover ({owner}); remove or rename it (`docker rm -f {name}`), or give the app another name")]
    NameTaken { name: String, owner: String },

    #[error("container {id} is not a release of this cutover (its labels say {owner}); refusing to touch it")]
    NotOurs { id: String, owner: String },

    #[error("could not start container {container}: {message}")]
    StartFailed { container: String, message: String },

    #[error("container {container} started but Docker reports no port published for {port}/tcp; check [app.docker] port")]
    NoPublishedPort { container: String, port: u16 },

    #[error("cannot read the registry password from {source_name}: {problem}")]
    Secret {
        source_name: String,
        problem: String,
    },
}

fn tail_section(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(
            "\n--- last lines of the build output ---\n{}",
            tail.trim_end()
        )
    }
}
