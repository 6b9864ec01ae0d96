//! What can go wrong with the swarm driver, in the engine's own words where
//! it gave any, and what to do.

use crate::docker::DockerError;

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(transparent)]
    Docker(#[from] DockerError),

    #[error("the Docker engine at {socket} is not a swarm manager: {message}; run cutover on a manager node or point [app.swarm] socket at a manager's engine")]
    NotManager { socket: String, message: String },

    #[error("a service named {name} already exists and was not created by this cutover ({owner}); remove it (`docker service rm {name}`) or give the app another name")]
    NameTaken { name: String, owner: String },

    #[error("service {id} is not a release of this cutover (its labels say {owner}); refusing to touch it")]
    NotOurs { id: String, owner: String },

    #[error("service {service} cannot place its tasks: {message}; check [app.swarm] constraints against the nodes' labels (`docker node ls`, `docker node inspect`)")]
    NoSuitableNode { service: String, message: String },

    #[error("service {service} cannot run its tasks: {message}")]
    TasksFailed { service: String, message: String },

    #[error("service {service} had {running} of {replicas} task(s) running after {seconds:.1}s (deploy_timeout){detail}")]
    NotRunning {
        service: String,
        running: usize,
        replicas: u32,
        seconds: f64,
        detail: String,
    },
}
