//! The docker driver against a real Docker engine: images built `FROM
//! scratch` with a static busybox (no registry on the internet), containers
//! reached only through ports published on 127.0.0.1. Every test uses its
//! own app name and state dir, and removes its containers and images when it
//! ends, also when it fails.

#![allow(clippy::unwrap_used)]

use cutover_config::docker::DockerNetwork;
use cutover_config::{DockerConfig, Slot, SlotPorts};
use cutover_drivers::docker::DockerDriver;
use cutover_drivers::{Driver, Endpoint, ReleaseSpec, RuntimeHealth, StartedRelease};
use cutover_test_support::docker::{
    self as fixtures, build_image, containers, docker_ok, image_exists, require_docker, Cleanup,
};
use cutover_test_support::http::Connection;
use cutover_test_support::ports::free_port;
use cutover_test_support::wait::eventually_async;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generous bound for things that should happen "at once" on a loaded machine.
const SOON: Duration = Duration::from_secs(20);

struct Fixture {
    app: String,
    repository: String,
    dir: tempfile::TempDir,
    cleanup: Cleanup,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        require_docker();
        let app = fixtures::unique(prefix);
        let repository = format!("cutover-test/{app}");
        let dir = tempfile::tempdir().unwrap();
        let cleanup = Cleanup::new(&dir.path().join("state"), &[&repository]);
        Fixture {
            app,
            repository,
            dir,
            cleanup,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn image(&self, version: &str) -> String {
        format!("{}:{version}", self.repository)
    }

    fn config(&self) -> DockerConfig {
        DockerConfig {
            advertise: None,
            image: format!("{}:{{version}}", self.repository),
            build: None,
            push: false,
            port: 8080,
            host_ports: None,
            env: BTreeMap::new(),
            volumes: Vec::new(),
            labels: BTreeMap::new(),
            network: DockerNetwork::Bridge,
            memory: None,
            cpus: None,
            stop_timeout: Duration::from_secs(2),
            keep_images: 3,
            registry: None,
            socket: None,
        }
    }

    fn driver(&self, config: DockerConfig) -> DockerDriver {
        DockerDriver::new(&self.app, config, &self.state_dir())
    }

    fn spec(&self, slot: Slot, version: &str) -> ReleaseSpec {
        ReleaseSpec {
            app: self.app.clone(),
            slot,
            version: version.to_string(),
            deployment_id: 7,
            log_path: self.log_path(slot, version),
            artifact: None,
        }
    }

    fn log_path(&self, slot: Slot, version: &str) -> PathBuf {
        self.state_dir()
            .join("logs")
            .join(&self.app)
            .join(format!("7-{slot}-{version}.log"))
    }

    fn instance(&self) -> String {
        self.cleanup.instance.clone()
    }
}

/// GET on a connection of its own; the response body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let response = Connection::to(addr)?.get_with(path, &[("Connection", "close")])?;
    Ok(response.text())
}

async fn wait_serving(addr: SocketAddr, body: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let answer = tokio::task::spawn_blocking(move || get(addr, "/"))
            .await
            .unwrap();
        if answer.as_deref().is_ok_and(|a| a.contains(body)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never answered {body}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_async(SOON, Duration::from_millis(100), what, condition).await;
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn error_text<T>(result: Result<T, cutover_drivers::DriverError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

async fn start(driver: &DockerDriver, spec: &ReleaseSpec) -> StartedRelease {
    driver.prepare(spec).await.unwrap();
    driver.start(spec).await.unwrap()
}

#[tokio::test]
async fn container_serves_on_loopback_logs_to_release_log_and_is_removed_on_stop() {
    let f = Fixture::new("dd-serve");
    build_image(&[&f.image("v1")], "Dockerfile", &[]);
    let driver = f.driver(f.config());
    let spec = f.spec(Slot::Blue, "v1");
    let started = start(&driver, &spec).await;

    assert!(
        started.first_addr().ip().is_loopback(),
        "{}",
        started.first_addr()
    );
    assert_ne!(started.first_addr().port(), 0);
    wait_serving(started.first_addr(), "version=v1").await;
    let listed = containers(&f.instance());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].id, started.runtime_id,
        "runtime id = container id"
    );
    assert_eq!(listed[0].name, format!("{}-blue", f.app));
    assert_eq!(listed[0].version, "v1");
    let labels = docker_ok(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"cutover.app\"}} {{index .Config.Labels \"cutover.slot\"}} {{index .Config.Labels \"cutover.deployment\"}}",
        &started.runtime_id,
    ]);
    assert_eq!(labels.trim(), format!("{} blue 7", f.app));
    eventually("the container's output in the release log", || {
        read(&spec.log_path).contains("fixture: serving version v1 on port 8080")
    })
    .await;

    let mut exited = started.exited.clone();
    driver.stop(&started.runtime_id).await.unwrap();
    assert!(containers(&f.instance()).is_empty(), "container removed");
    let how = tokio::time::timeout(SOON, exited.wait()).await.unwrap();
    assert!(
        how.contains("exited with code 0") || how.contains("removed"),
        "{how}"
    );
    // Stopping what is gone succeeds.
    driver.stop(&started.runtime_id).await.unwrap();
}

#[tokio::test]
async fn failing_entrypoint_is_reported_with_its_exit_code_and_output() {
    let f = Fixture::new("dd-fail");
    build_image(&[&f.image("v1")], "Dockerfile", &[("MODE", "fail")]);
    let driver = f.driver(f.config());
    let spec = f.spec(Slot::Green, "v1");
    let started = start(&driver, &spec).await;
    let mut exited = started.exited.clone();
    let how = tokio::time::timeout(SOON, exited.wait()).await.unwrap();
    assert_eq!(how, "exited with code 3");
    // The watch fires only once the last output is in the log.
    assert!(
        read(&spec.log_path).contains("failing at start on purpose"),
        "{}",
        read(&spec.log_path)
    );
    driver.stop(&started.runtime_id).await.unwrap();
    assert!(containers(&f.instance()).is_empty());
}

#[tokio::test]
async fn docker_healthcheck_status_is_reported_healthy_or_failing() {
    let f = Fixture::new("dd-hc");
    build_image(&[&f.image("v1")], "Dockerfile.healthcheck", &[]);
    build_image(
        &[&f.image("v2")],
        "Dockerfile.healthcheck",
        &[("HEALTHCHECK_PATH", "missing")],
    );
    let driver = f.driver(f.config());
    let good = start(&driver, &f.spec(Slot::Blue, "v1")).await;
    let bad = start(&driver, &f.spec(Slot::Green, "v2")).await;
    assert!(
        matches!(driver.check(&good.runtime_id).await, RuntimeHealth::Pending(ref why) if why.contains("HEALTHCHECK has not passed yet")),
        "a fresh container's HEALTHCHECK is still starting"
    );
    let deadline = Instant::now() + SOON;
    let (mut good_state, mut bad_state);
    loop {
        good_state = driver.check(&good.runtime_id).await;
        bad_state = driver.check(&bad.runtime_id).await;
        if good_state == RuntimeHealth::Healthy && matches!(bad_state, RuntimeHealth::Failing(_)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "good: {good_state:?}, bad: {bad_state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let RuntimeHealth::Failing(why) = bad_state else {
        unreachable!()
    };
    assert!(
        why.contains("unhealthy by its Docker HEALTHCHECK") && why.contains("404"),
        "{why}"
    );
    // A container without a HEALTHCHECK has nothing to add.
    build_image(&[&f.image("v3")], "Dockerfile", &[]);
    driver.stop(&good.runtime_id).await.unwrap();
    let plain = start(&driver, &f.spec(Slot::Blue, "v3")).await;
    assert_eq!(
        driver.check(&plain.runtime_id).await,
        RuntimeHealth::Healthy
    );
}

/// After a restart of cutover (here: a runtime that is shut down, taking
/// the first driver's tasks with it), the live container is adopted, its
/// output stream resumes where the log left off, and containers the engine
/// does not keep are removed. Another cutover instance touches none of it.
#[test]
fn adopt_resumes_logs_without_duplicates_and_orphans_are_removed() {
    let f = Fixture::new("dd-adopt");
    build_image(&[&f.image("v1"), &f.image("v2")], "Dockerfile", &[]);
    let first_run = tokio::runtime::Runtime::new().unwrap();
    let (live, orphan) = first_run.block_on(async {
        let driver = f.driver(f.config());
        let live = start(&driver, &f.spec(Slot::Blue, "v1")).await;
        let orphan = start(&driver, &f.spec(Slot::Green, "v2")).await;
        wait_serving(live.first_addr(), "version=v1").await;
        let log = f.log_path(Slot::Blue, "v1");
        eventually("first output logged", || {
            read(&log).contains("fixture: serving")
        })
        .await;
        (
            (live.runtime_id.clone(), live.first_addr()),
            orphan.runtime_id.clone(),
        )
    });
    first_run.shutdown_background();

    let second_run = tokio::runtime::Runtime::new().unwrap();
    second_run.block_on(async {
        let driver = f.driver(f.config());
        let adopted = driver
            .adopt(&live.0, &[Endpoint::new(live.1, "")])
            .await
            .unwrap()
            .expect("the live container is adopted");
        assert_eq!(adopted.first_addr(), live.1);
        assert!(adopted.exited.exited().is_none());
        tokio::task::spawn_blocking(move || get(live.1, "/after-restart"))
            .await
            .unwrap()
            .unwrap();
        let log = f.log_path(Slot::Blue, "v1");
        eventually("output after the restart logged", || {
            read(&log).contains("url:/after-restart")
        })
        .await;
        let text = read(&log);
        assert_eq!(
            text.matches("fixture: serving version v1").count(),
            1,
            "lines written before the restart are not written again:\n{text}"
        );

        // Another cutover (other state dir) with an app of the same name.
        let other_dir = tempfile::tempdir().unwrap();
        let other = DockerDriver::new(&f.app, f.config(), other_dir.path());
        let taken = error_text(other.start(&f.spec(Slot::Blue, "v1")).await);
        assert!(
            taken.contains("already exists and was not created by this cutover"),
            "{taken}"
        );
        let refused = error_text(other.stop(&live.0).await);
        assert!(
            refused.contains("is not a release of this cutover"),
            "{refused}"
        );
        assert_eq!(
            other.stop_orphans(&f.app, &[]).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            other
                .adopt(&live.0, &[Endpoint::new(live.1, "")])
                .await
                .unwrap()
                .map(|s| s.runtime_id),
            None
        );

        let removed = driver
            .stop_orphans(&f.app, std::slice::from_ref(&live.0))
            .await
            .unwrap();
        assert_eq!(removed, vec![orphan.clone()]);
        let left: Vec<String> = containers(&f.instance())
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(left, vec![live.0.clone()]);
        wait_serving(live.1, "version=v1").await;
    });
}

#[tokio::test]
async fn unreachable_engine_error_names_the_socket() {
    let f = Fixture::new("dd-nosock");
    let mut config = f.config();
    config.socket = Some(PathBuf::from("/nonexistent/docker.sock"));
    let driver = f.driver(config);
    let error = error_text(driver.prepare(&f.spec(Slot::Blue, "v1")).await);
    assert!(
        error.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock")
            && error.contains("dockerd"),
        "{error}"
    );
}

#[tokio::test]
async fn image_that_cannot_be_pulled_fails_prepare_naming_it() {
    let f = Fixture::new("dd-nopull");
    let mut config = f.config();
    // Nothing listens on port 1: the registry is unreachable.
    config.image = format!("127.0.0.1:1/{}:{{version}}", f.app);
    let driver = f.driver(config);
    let error = error_text(driver.prepare(&f.spec(Slot::Blue, "v1")).await);
    assert!(
        error.contains(&format!("127.0.0.1:1/{}:v1", f.app)) && error.contains("pull"),
        "{error}"
    );
}

#[tokio::test]
async fn failed_build_quotes_the_tail_of_the_build_output() {
    let f = Fixture::new("dd-badbuild");
    let context = fixtures::build_context();
    let mut config = f.config();
    config.build = Some(cutover_config::docker::DockerBuild {
        context: context.path().display().to_string(),
        dockerfile: "Dockerfile.broken".to_string(),
        args: BTreeMap::new(),
    });
    let driver = f.driver(config);
    let error = error_text(driver.prepare(&f.spec(Slot::Blue, "v1")).await);
    assert!(
        error.contains(&format!("building image {}", f.image("v1"))),
        "{error}"
    );
    assert!(error.contains("no-such-file"), "{error}");
    assert!(error.contains("last lines of the build output"), "{error}");
    assert!(!image_exists(&f.image("v1")));
}

#[tokio::test]
async fn fixed_host_port_already_taken_is_a_clear_error() {
    let f = Fixture::new("dd-port");
    build_image(&[&f.image("v1")], "Dockerfile", &[]);
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let free = free_port();
    let mut config = f.config();
    config.host_ports = Some(SlotPorts {
        blue: free,
        green: taken,
    });
    let driver = f.driver(config);
    let error = error_text(driver.start(&f.spec(Slot::Green, "v1")).await);
    assert!(
        error.contains(&format!(
            "host port {taken} for slot green is already in use"
        )),
        "{error}"
    );
    assert!(containers(&f.instance()).is_empty());
    let started = start(&driver, &f.spec(Slot::Blue, "v1")).await;
    assert_eq!(started.first_addr().port(), free);
    wait_serving(started.first_addr(), "version=v1").await;
}

/// Images cutover built beyond `keep_images` go once their container is
/// retired; an image of the same repository that cutover did not make stays.
#[tokio::test]
async fn images_beyond_keep_images_are_removed_but_never_foreign_ones() {
    let f = Fixture::new("dd-keep");
    build_image(&[&f.image("foreign")], "Dockerfile", &[]);
    let context = fixtures::build_context();
    let mut config = f.config();
    config.keep_images = 1;
    config.build = Some(cutover_config::docker::DockerBuild {
        context: context.path().display().to_string(),
        dockerfile: "Dockerfile".to_string(),
        args: BTreeMap::from([("MODE".to_string(), "serve".to_string())]),
    });
    let driver = f.driver(config);
    let v1 = start(&driver, &f.spec(Slot::Blue, "v1")).await;
    wait_serving(v1.first_addr(), "version=v1").await;
    let v2 = start(&driver, &f.spec(Slot::Green, "v2")).await;
    wait_serving(v2.first_addr(), "version=v2").await;
    assert!(image_exists(&f.image("v1")) && image_exists(&f.image("v2")));
    let built_by = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"cutover.app\"}}",
        &f.image("v2"),
    ]);
    assert_eq!(built_by.trim(), f.app, "built images carry the app's label");

    driver.stop(&v1.runtime_id).await.unwrap();
    assert!(
        !image_exists(&f.image("v1")),
        "v1 is beyond keep_images = 1"
    );
    assert!(
        image_exists(&f.image("v2")),
        "the live release's image stays"
    );
    assert!(image_exists(&f.image("foreign")), "cutover did not make it");
    // Deploying v1 again builds it again.
    let again = start(&driver, &f.spec(Slot::Blue, "v1")).await;
    wait_serving(again.first_addr(), "version=v1").await;
}

/// With host networking the release listens on its slot's host port ($PORT).
#[tokio::test]
async fn host_network_release_listens_on_its_slot_port() {
    let f = Fixture::new("dd-host");
    build_image(&[&f.image("v1")], "Dockerfile", &[]);
    let (blue, green) = (free_port(), free_port());
    let mut config = f.config();
    config.network = DockerNetwork::Host;
    config.host_ports = Some(SlotPorts { blue, green });
    let driver = f.driver(config);
    let started = start(&driver, &f.spec(Slot::Green, "v1")).await;
    assert_eq!(
        started.first_addr(),
        SocketAddr::from(([127, 0, 0, 1], green))
    );
    wait_serving(started.first_addr(), "version=v1").await;
    driver.stop(&started.runtime_id).await.unwrap();
}

/// Removes a Docker network when dropped.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = fixtures::docker(&["network", "rm", &self.0]);
    }
}

/// A named network must exist (a clear error otherwise); the port is
/// published on 127.0.0.1 as with the default bridge.
#[tokio::test]
async fn named_network_must_exist_and_publishes_on_loopback() {
    let f = Fixture::new("dd-net");
    build_image(&[&f.image("v1")], "Dockerfile", &[]);
    let name = format!("cutover-test-{}", f.app);
    let mut config = f.config();
    config.network = DockerNetwork::Named(name.clone());
    let driver = f.driver(config.clone());
    let error = error_text(driver.prepare(&f.spec(Slot::Blue, "v1")).await);
    assert!(
        error.contains(&format!("network `{name}` does not exist")),
        "{error}"
    );

    docker_ok(&["network", "create", &name]);
    let _network = Network(name.clone());
    let started = start(&driver, &f.spec(Slot::Blue, "v1")).await;
    assert!(started.first_addr().ip().is_loopback());
    wait_serving(started.first_addr(), "version=v1").await;
    let networks = docker_ok(&[
        "inspect",
        "--format",
        "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
        &started.runtime_id,
    ]);
    assert_eq!(networks.trim(), name);
    driver.stop(&started.runtime_id).await.unwrap();
}

/// `advertise`: the container's port is published on that address (where
/// a front on another host reaches it) and the endpoint is there.
#[tokio::test]
async fn a_container_is_published_on_its_advertise_address() {
    let f = Fixture::new("dd-advertise");
    build_image(&[&f.image("v1")], "Dockerfile", &[]);
    let mut config = f.config();
    config.advertise = "127.0.0.2".parse().ok();
    let driver = f.driver(config);
    let spec = f.spec(Slot::Green, "v1");
    let started = start(&driver, &spec).await;
    assert_eq!(started.first_addr().ip().to_string(), "127.0.0.2");
    assert_eq!(started.endpoints[0].label, format!("{}-green", f.app));
    wait_serving(started.first_addr(), "version=v1").await;
    let bound = docker_ok(&["port", &started.runtime_id, "8080/tcp"]);
    assert!(bound.trim().starts_with("127.0.0.2:"), "{bound}");
    driver.stop(&started.runtime_id).await.unwrap();
}
