//! Docker Swarm fixtures, through the `docker` CLI: the check that this
//! engine is a swarm manager (scripts/test runs `docker swarm init
//! --advertise-addr 127.0.0.1` when it is not), service listings by
//! cutover's labels, and a guard that removes a test's services (and then
//! its containers and images) even when the test fails.

use crate::docker::{docker, docker_ok, require_docker, Cleanup};
use std::path::Path;
use std::time::{Duration, Instant};

/// Fails the test at once, clearly, when the engine is not a swarm manager.
pub fn require_swarm() {
    require_docker();
    let state = docker_ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    assert_eq!(
        state.trim(),
        "active true",
        "these tests need this Docker engine to be a swarm manager: scripts/test runs `docker swarm init --advertise-addr 127.0.0.1` (and leaves the swarm again at its end)"
    );
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub version: String,
}

/// Services labelled with this cutover instance.
pub fn services(instance: &str) -> Vec<Service> {
    let filter = format!("label=cutover.instance={instance}");
    let listing = docker_ok(&["service", "ls", "-q", "--filter", &filter]);
    listing
        .split_whitespace()
        .filter_map(|id| {
            let output = docker(&[
                "service",
                "inspect",
                id,
                "--format",
                "{{.ID}}\t{{.Spec.Name}}\t{{index .Spec.Labels \"cutover.release\"}}",
            ]);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let mut fields = text.trim().split('\t');
            Some(Service {
                id: fields.next()?.to_string(),
                name: fields.next()?.to_string(),
                version: fields.next()?.to_string(),
            })
        })
        .collect()
}

/// Names of the instance's services, sorted.
pub fn service_names(instance: &str) -> Vec<String> {
    let mut names: Vec<String> = services(instance).into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// The containers of service `name`'s running tasks on this node.
pub fn task_containers(name: &str) -> Vec<String> {
    let filter = format!("label=com.docker.swarm.service.name={name}");
    docker_ok(&["ps", "-q", "--no-trunc", "--filter", &filter])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes, when dropped, every service of a cutover instance, waits for
/// their containers to go, then does what [`Cleanup`] does (containers and
/// images of the listed repositories).
pub struct SwarmCleanup {
    pub images: Cleanup,
}

impl SwarmCleanup {
    pub fn new(instance: &Path, repositories: &[&str]) -> SwarmCleanup {
        SwarmCleanup {
            images: Cleanup::new(instance, repositories),
        }
    }

    pub fn instance(&self) -> &str {
        &self.images.instance
    }

    pub fn remove_services(&self) {
        let services = services(self.instance());
        for service in &services {
            let _ = docker(&["service", "rm", &service.id]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for service in &services {
            while !task_containers(&service.name).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl Drop for SwarmCleanup {
    fn drop(&mut self) {
        self.remove_services();
    }
}
