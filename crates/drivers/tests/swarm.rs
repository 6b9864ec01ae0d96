//! The swarm driver against this machine's Docker engine as a swarm manager
//! (scripts/test runs `docker swarm init --advertise-addr 127.0.0.1` when
//! needed): images built `FROM scratch` with a static busybox, tasks
//! publishing their port in host mode. Every test uses its own app name and
//! state dir, and removes its services and images when it ends, also when
//! it fails.

#![allow(clippy::unwrap_used)]

use cutover_config::{Slot, SwarmConfig};
use cutover_drivers::swarm::SwarmDriver;
use cutover_drivers::{Driver, Endpoint, ReleaseSpec, RuntimeHealth};
use cutover_test_support::docker::{self as fixtures, build_image, docker_ok};
use cutover_test_support::http::Connection;
use cutover_test_support::swarm::{require_swarm, service_names, task_containers, SwarmCleanup};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Generous bound for things that should happen "soon" on a loaded machine.
const SOON: Duration = Duration::from_secs(30);

struct Fixture {
    app: String,
    repository: String,
    dir: tempfile::TempDir,
    cleanup: SwarmCleanup,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        require_swarm();
        let app = fixtures::unique(prefix);
        let repository = format!("cutover-test/{app}");
        let dir = tempfile::tempdir().unwrap();
        let cleanup = SwarmCleanup::new(&dir.path().join("state"), &[&repository]);
        Fixture {
            app,
            repository,
            dir,
            cleanup,
        }
    }

    fn image(&self, version: &str) -> String {
        format!("{}:{version}", self.repository)
    }

    fn config(&self, replicas: u32) -> SwarmConfig {
        SwarmConfig {
            image: format!("{}:{{version}}", self.repository),
            build: None,
            push: false,
            port: 8080,
            replicas,
            // Only this node (the manager): the e2e cross-node test may
            // add a worker that has only its own images.
            constraints: vec!["node.role == manager".to_string()],
            env: BTreeMap::from([("SHOW_HOST".to_string(), "1".to_string())]),
            labels: BTreeMap::new(),
            networks: Vec::new(),
            stop_timeout: Duration::from_secs(2),
            socket: None,
        }
    }

    fn driver(&self, config: SwarmConfig) -> SwarmDriver {
        SwarmDriver::new(
            &self.app,
            config,
            &self.dir.path().join("state"),
            Duration::from_secs(30),
        )
    }

    fn spec(&self, slot: Slot, version: &str) -> ReleaseSpec {
        ReleaseSpec {
            app: self.app.clone(),
            slot,
            version: version.to_string(),
            deployment_id: 3,
            log_path: self.log_path(slot),
            artifact: None,
        }
    }

    fn log_path(&self, slot: Slot) -> PathBuf {
        self.dir.path().join(format!("logs/{slot}.log"))
    }

    fn services(&self) -> Vec<String> {
        service_names(self.cleanup.instance())
    }
}

/// The body of GET / on a connection of its own.
fn body(addr: SocketAddr) -> String {
    Connection::to(addr)
        .and_then(|mut c| c.get_with("/", &[("Connection", "close")]))
        .map(|r| r.text().trim().to_string())
        .unwrap_or_else(|e| format!("error: {e}"))
}

async fn bodies(endpoints: &[Endpoint]) -> BTreeSet<String> {
    let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
    tokio::task::spawn_blocking(move || addrs.into_iter().map(body).collect())
        .await
        .unwrap()
}

/// Two tasks, two endpoints on their node's address, each answering as its
/// own task; a killed task is replaced and the endpoint set follows; a new
/// driver (cutover restarted) adopts the service by id; `stop_orphans`
/// removes what the engine does not keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_replica_service_has_one_endpoint_per_task_and_follows_a_replaced_task() {
    let f = Fixture::new("sw-tasks");
    build_image(&[&f.image("v1")], "Dockerfile", &[]);
    let driver = f.driver(f.config(2));
    let spec = f.spec(Slot::Blue, "v1");
    driver.prepare(&spec).await.unwrap();
    let started = driver.start(&spec).await.unwrap();
    assert_eq!(started.endpoints.len(), 2, "{:?}", started.endpoints);
    assert_eq!(f.services(), [format!("{}-blue", f.app)]);
    for endpoint in &started.endpoints {
        assert_eq!(
            endpoint.addr.ip().to_string(),
            "127.0.0.1",
            "the node's Status.Addr"
        );
        assert!(
            endpoint.label.starts_with(&format!("{}-blue.", f.app)),
            "{}",
            endpoint.label
        );
    }
    let answers = bodies(&started.endpoints).await;
    assert_eq!(
        answers.len(),
        2,
        "two tasks answer as two hosts: {answers:?}"
    );
    assert!(
        answers.iter().all(|a| a.starts_with("version=v1 host=")),
        "{answers:?}"
    );
    assert_eq!(
        driver.check(&started.runtime_id).await,
        RuntimeHealth::Healthy
    );

    // A task's container dies: the orchestrator replaces it and the
    // published set follows (the dead endpoint leaves, a new one joins).
    let victim = task_containers(&format!("{}-blue", f.app))[0].clone();
    docker_ok(&["kill", &victim]);
    let mut changes = started.endpoint_changes.clone().unwrap();
    let before: BTreeSet<Endpoint> = started.endpoints.iter().cloned().collect();
    let replaced = tokio::time::timeout(
        SOON,
        changes.wait_for(|now| {
            let now: BTreeSet<&Endpoint> = now.iter().collect();
            now.len() == 2 && now.iter().any(|e| !before.contains(e))
        }),
    )
    .await
    .expect("the replacement task becomes an endpoint")
    .unwrap()
    .clone();
    assert_eq!(bodies(&replaced).await.len(), 2);

    // cutover restarted: a new driver finds the service by id.
    let again = f.driver(f.config(2));
    let adopted = again
        .adopt(&started.runtime_id, &started.endpoints)
        .await
        .unwrap()
        .expect("the service still runs");
    assert_eq!(adopted.current_endpoints().len(), 2);
    let stopped = again.stop_orphans(&f.app, &[]).await.unwrap();
    assert_eq!(stopped, std::slice::from_ref(&started.runtime_id));
    assert!(f.services().is_empty(), "{:?}", f.services());
    let mut exited = adopted.exited.clone();
    let how = tokio::time::timeout(SOON, exited.wait()).await.unwrap();
    assert_eq!(how, "was removed");

    let log = std::fs::read_to_string(f.log_path(Slot::Blue)).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("{}-blue.", f.app))
                && l.contains(" | fixture: serving version v1")),
        "task output is prefixed by task in the release log:\n{log}"
    );
}

/// Constraints no node satisfies fail the start at once with the engine's
/// words, and the service is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_no_node_satisfies_fail_at_once_and_leave_no_service() {
    let f = Fixture::new("sw-place");
    build_image(&[&f.image("v1")], "Dockerfile", &[]);
    let mut config = f.config(1);
    config.constraints = vec!["node.labels.cutover-test-tier == nowhere".to_string()];
    let driver = f.driver(config);
    let spec = f.spec(Slot::Green, "v1");
    driver.prepare(&spec).await.unwrap();
    let began = Instant::now();
    let error = driver
        .start(&spec)
        .await
        .map(|s| s.runtime_id)
        .unwrap_err()
        .to_string();
    assert!(error.contains("no suitable node"), "{error}");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "not at once: {:?}",
        began.elapsed()
    );
    assert!(f.services().is_empty(), "{:?}", f.services());
}

/// A task that exits at once keeps failing: the release fails long before
/// deploy_timeout with the engine's message — at the start, or (when the
/// failures came after the start's last look, on a loaded machine) in the
/// runtime's verdict the engine consults with every health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_failing_fails_the_release_with_the_engines_message() {
    let f = Fixture::new("sw-fail");
    build_image(&[&f.image("v1")], "Dockerfile", &[("MODE", "fail")]);
    let driver = f.driver(f.config(1));
    let spec = f.spec(Slot::Blue, "v1");
    driver.prepare(&spec).await.unwrap();
    let began = Instant::now();
    let error = match driver.start(&spec).await {
        Err(e) => e.to_string(),
        Ok(started) => {
            let verdict = loop {
                match driver.check(&started.runtime_id).await {
                    RuntimeHealth::Failing(why) => break why,
                    other => assert!(began.elapsed() < SOON, "still {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            driver.stop(&started.runtime_id).await.unwrap();
            verdict
        }
    };
    assert!(
        error.contains("task failures") && error.contains("non-zero exit (3)"),
        "{error}"
    );
    assert!(began.elapsed() < SOON, "{:?}", began.elapsed());
    assert!(f.services().is_empty(), "{:?}", f.services());
}
