//! End-to-end proofs of the invariants with the docker driver: the real
//! `cutover` binary against a real Docker engine, releases in containers
//! built `FROM scratch` (a static busybox serving `version=<V>`), reached
//! only through ports published on 127.0.0.1, keep-alive clients through
//! the proxy. Every test has its own app name (so its own container names)
//! and removes its containers and images when it ends, also on failure.

#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use cutover_test_support::docker::{
    build_context, build_image, container_versions, containers, docker, image_exists,
    require_docker, unique, Cleanup, Registry,
};
use cutover_test_support::http::Connection;
use cutover_test_support::load::Load;
use cutover_test_support::wait::eventually;
use std::time::Duration;

const LOAD_CLIENTS: usize = 8;
const LOAD_MAX_REQUESTS: usize = 20_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(60);

/// A daemon with one docker app; fields drop in order: the daemon first,
/// then the app's containers and images.
struct DockerApp {
    daemon: Daemon,
    app: String,
    repository: String,
    cleanup: Cleanup,
}

struct Options<'a> {
    deploy_timeout: &'a str,
    /// App-level keys (release safety) beyond the defaults.
    app: String,
    /// `[app.docker]` keys beyond the defaults (image, port, stop_timeout).
    docker: String,
    /// The image repository (without tag); default `cutover-test/<app>`.
    repository: Option<String>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            deploy_timeout: "20s",
            app: String::new(),
            docker: String::new(),
            repository: None,
        }
    }
}

impl DockerApp {
    fn start(prefix: &str, options: Options<'_>) -> DockerApp {
        require_docker();
        let app = unique(prefix);
        let repository = options
            .repository
            .unwrap_or_else(|| format!("cutover-test/{app}"));
        let daemon = Daemon::start_with_apps(&format!(
            r#"
[[app]]
name = "{app}"
drain_timeout = "10s"
{app_keys}

[app.health]
path = "/health"
deploy_timeout = "{deploy_timeout}"
interval = "1s"

[app.docker]
image = "{repository}:{{version}}"
port = 8080
stop_timeout = "2s"
{docker}
"#,
            deploy_timeout = options.deploy_timeout,
            docker = options.docker,
            app_keys = options.app,
        ));
        let cleanup = Cleanup::new(&daemon.state_dir(), &[&repository]);
        DockerApp {
            daemon,
            app,
            repository,
            cleanup,
        }
    }

    fn image(&self, version: &str) -> String {
        format!("{}:{version}", self.repository)
    }

    fn instance(&self) -> String {
        self.cleanup.instance.clone()
    }

    fn deploy(&self, version: &str) -> String {
        self.daemon.ok(&["deploy", &self.app, "--version", version])
    }

    fn status(&self) -> serde_json::Value {
        self.daemon.json(&["status", &self.app])
    }

    fn history(&self) -> Vec<serde_json::Value> {
        self.daemon
            .json(&["history", &self.app])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn load(&self) -> Load {
        Load::start(
            self.daemon.proxy_port,
            LOAD_CLIENTS,
            LOAD_MAX_REQUESTS,
            LOAD_MAX_TIME,
        )
    }
}

/// Invariants 1, 3 and 4 with containers: v1 → v2 under keep-alive load
/// fails no request, and the v1 container is gone after the drain.
#[test]
fn docker_switch_under_keepalive_load_fails_no_request_and_removes_v1_container() {
    let t = DockerApp::start("dk-switch", Options::default());
    build_image(&[&t.image("v1"), &t.image("v2")], "Dockerfile", &[]);
    let first = t.deploy("v1");
    assert!(first.contains("succeeded"), "{first}");
    t.daemon.wait_serving("v1", Duration::from_secs(10));

    let load = t.load();
    std::thread::sleep(Duration::from_millis(300));
    let second = t.deploy("v2");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();

    assert!(second.contains("succeeded"), "{second}");
    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "failed requests during the switch"
    );
    assert!(
        report.requests() > 100,
        "too little load to prove anything: {}",
        report.requests()
    );
    report.assert_versions_in_order(&["v1", "v2"]);
    let status = t.status();
    assert_eq!(status["live_slot"], "green");
    assert_eq!(status["live_version"], "v2");
    assert_eq!(status["driver"], "docker");
    eventually(Duration::from_secs(10), "v1 container removed", || {
        container_versions(&t.instance()) == ["v2"]
    });
    let live = containers(&t.instance());
    assert_eq!(live[0].name, format!("{}-green", t.app));
    let logs = t.daemon.ok(&["logs", &t.app, "--tail", "100000"]);
    assert!(
        logs.contains("fixture: serving version v2 on port 8080"),
        "container output in `cutover logs`:\n{logs}"
    );
}

/// Invariant 2 with containers: the deployment of a bad v2 fails with a
/// reason naming the cause, v1 serves throughout, no v2 container remains.
fn assert_bad_image_fails_deploy(
    prefix: &str,
    dockerfile: &str,
    args: &[(&str, &str)],
    deploy_timeout: &str,
    expected: &[&str],
) {
    let t = DockerApp::start(
        prefix,
        Options {
            deploy_timeout,
            ..Options::default()
        },
    );
    build_image(&[&t.image("v1")], "Dockerfile", &[]);
    build_image(&[&t.image("v2")], dockerfile, args);
    t.deploy("v1");
    t.daemon.wait_serving("v1", Duration::from_secs(10));

    let load = t.load();
    let output = t.daemon.cli(&["deploy", &t.app, "--version", "v2"]);
    let report = load.stop();

    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "deploy must exit 1:\n{said}");
    for text in expected {
        assert!(
            said.contains(text),
            "the reason should mention `{text}`:\n{said}"
        );
    }
    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "a failed deployment must not fail requests"
    );
    assert!(
        report
            .clients
            .iter()
            .all(|c| c.versions.iter().all(|v| v == "v1")),
        "traffic reached v2"
    );
    eventually(Duration::from_secs(10), "no v2 container left", || {
        container_versions(&t.instance()) == ["v1"]
    });
    assert_eq!(t.status()["live_version"], "v1");
    assert_eq!(t.history()[0]["state"], "failed");
    assert_eq!(t.daemon.get("/").text().trim(), "version=v1");
}

#[test]
fn docker_failing_entrypoint_fails_deploy_with_exit_code_and_output_and_v1_keeps_serving() {
    assert_bad_image_fails_deploy(
        "dk-exit",
        "Dockerfile",
        &[("MODE", "fail")],
        "20s",
        &["exited with code 3", "failing at start on purpose"],
    );
}

#[test]
fn docker_never_healthy_fails_deploy_at_deploy_timeout_and_v1_keeps_serving() {
    assert_bad_image_fails_deploy(
        "dk-hang",
        "Dockerfile",
        &[("MODE", "hang")],
        "3s",
        &["not healthy after", "never listening"],
    );
}

#[test]
fn docker_healthcheck_unhealthy_fails_deploy_and_v1_keeps_serving() {
    assert_bad_image_fails_deploy(
        "dk-unhealthy",
        "Dockerfile.healthcheck",
        &[("HEALTHCHECK_PATH", "missing")],
        "30s",
        &["unhealthy by its Docker HEALTHCHECK", "404"],
    );
}

/// Invariant 6 with containers: kill -9 of cutover while v2 is being
/// checked; after the restart the v1 container (the same one) is adopted
/// and serves, the v2 container is removed, the deployment is recorded as
/// interrupted, and the output stream resumes without repeating lines.
#[test]
fn docker_kill_9_mid_deployment_readopts_live_container_and_leaves_no_orphan() {
    let mut t = DockerApp::start("dk-crash", Options::default());
    build_image(&[&t.image("v1")], "Dockerfile", &[]);
    build_image(&[&t.image("v2")], "Dockerfile", &[("MODE", "hang")]);
    t.deploy("v1");
    t.daemon.wait_serving("v1", Duration::from_secs(10));
    let v1_id = containers(&t.instance())[0].id.clone();
    t.daemon
        .ok(&["deploy", &t.app, "--version", "v2", "--no-wait"]);
    eventually(Duration::from_secs(20), "deployment in checking", || {
        t.status()["current_deployment"]["state"] == "checking"
    });
    t.daemon.kill9();
    // Containers outlive the daemon.
    assert_eq!(container_versions(&t.instance()), ["v1", "v2"]);

    t.daemon.spawn();
    t.daemon.wait_serving("v1", Duration::from_secs(15));
    eventually(Duration::from_secs(15), "v2 container removed", || {
        container_versions(&t.instance()) == ["v1"]
    });
    assert_eq!(
        containers(&t.instance())[0].id,
        v1_id,
        "the live container is adopted, not replaced"
    );
    assert!(t.daemon.serve_log().contains("adopted container"));
    let last = &t.history()[0];
    assert_eq!(last["version"], "v2");
    assert_eq!(last["state"], "failed");
    assert!(
        last["reason"].as_str().unwrap().contains("interrupted"),
        "{last}"
    );
    assert_eq!(t.status()["live_version"], "v1");

    t.daemon.get("/after-restart");
    eventually(
        Duration::from_secs(10),
        "output after the restart in the log",
        || {
            t.daemon
                .ok(&["logs", &t.app, "--tail", "100000"])
                .contains("url:/after-restart")
        },
    );
    let logs = t.daemon.ok(&["logs", &t.app, "--tail", "100000"]);
    assert_eq!(
        logs.matches("fixture: serving version v1").count(),
        1,
        "no line is written twice after the restart:\n{logs}"
    );
}

/// The seed's pipeline: build from a Dockerfile at deploy time, push to a
/// local registry (with credentials from a file, never logged), remove the
/// local image, and a rollback pulls it back from the registry.
#[test]
fn docker_build_push_then_deploy_pulls_the_removed_image_back_from_the_registry() {
    require_docker();
    let registry = Registry::start();
    let context = build_context();
    let app_hint = unique("dk-registry");
    let repository = format!("{}/{app_hint}", registry.address());
    let t = DockerApp::start(
        "dk-registry",
        Options {
            repository: Some(repository.clone()),
            docker: format!(
                "build = {{ context = \"{}\", dockerfile = \"Dockerfile\" }}\npush = true\nregistry_user = \"ci\"\nregistry_password_file = \"registry-password\"\n",
                context.path().display()
            ),
            ..Options::default()
        },
    );
    // The password file sits next to cutover.toml (relative paths are).
    let password = "pw-never-in-any-log-4242";
    std::fs::write(t.daemon.dir.path().join("registry-password"), password).unwrap();

    let first = t.deploy("v1");
    assert!(first.contains("succeeded"), "{first}");
    t.daemon.wait_serving("v1", Duration::from_secs(10));
    assert!(t
        .daemon
        .serve_log()
        .contains(&format!("pushed image {}", t.image("v1"))));
    t.deploy("v2");
    t.daemon.wait_serving("v2", Duration::from_secs(10));

    // v1 is only in the registry now.
    let removed = docker(&["rmi", &t.image("v1")]);
    assert!(removed.status.success(), "{removed:?}");
    assert!(!image_exists(&t.image("v1")));

    let output = t.daemon.ok(&["rollback", &t.app]);
    assert!(output.contains("succeeded"), "{output}");
    t.daemon.wait_serving("v1", Duration::from_secs(10));
    assert!(image_exists(&t.image("v1")), "pulled back");
    let serve_log = t.daemon.serve_log();
    assert!(
        serve_log.contains(&format!("pulled image {}", t.image("v1"))),
        "{serve_log}"
    );
    assert!(
        !serve_log.contains(password),
        "the registry password was logged"
    );
    eventually(Duration::from_secs(10), "only v1 runs", || {
        container_versions(&t.instance()) == ["v1"]
    });
}

/// Rollback to the previous image under load fails no request.
#[test]
fn docker_rollback_under_load_returns_to_previous_image_without_failures() {
    let t = DockerApp::start("dk-rollback", Options::default());
    build_image(&[&t.image("v1"), &t.image("v2")], "Dockerfile", &[]);
    t.deploy("v1");
    t.deploy("v2");
    t.daemon.wait_serving("v2", Duration::from_secs(10));
    let load = t.load();
    std::thread::sleep(Duration::from_millis(200));
    let output = t.daemon.ok(&["rollback", &t.app]);
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    assert!(output.contains("succeeded"), "{output}");
    assert_eq!(report.failures(), Vec::<&str>::new());
    report.assert_versions_in_order(&["v2", "v1"]);
    assert_eq!(t.status()["live_version"], "v1");
    assert_eq!(t.history()[0]["trigger"], "rollback");
    eventually(Duration::from_secs(10), "only v1 runs", || {
        container_versions(&t.instance()) == ["v1"]
    });
}

/// Release safety is the engine's, so it holds for containers too:
/// preview before a manual promotion, then a rollback inside `keep_old`
/// that is a pure switch to the container still running idle.
#[test]
fn docker_preview_promotion_and_instant_rollback_within_keep_old() {
    let t = DockerApp::start(
        "dk-safety",
        Options {
            app: "promotion = \"manual\"\nkeep_old = \"60s\"".to_string(),
            ..Options::default()
        },
    );
    build_image(&[&t.image("v1"), &t.image("v2")], "Dockerfile", &[]);
    for version in ["v1", "v2"] {
        t.daemon
            .ok(&["deploy", &t.app, "--version", version, "--no-wait"]);
        eventually(Duration::from_secs(20), "awaiting promotion", || {
            t.status()["current_deployment"]["state"] == "awaiting_promotion"
        });
        if version == "v2" {
            let header = [("X-Cutover-Preview", "1")];
            let mut connection = Connection::open(t.daemon.proxy_port).unwrap();
            assert_eq!(
                connection.get_with("/", &header).unwrap().text().trim(),
                "version=v2"
            );
            assert_eq!(connection.get("/").unwrap().text().trim(), "version=v1");
        }
        t.daemon.ok(&["promote", &t.app]);
        eventually(Duration::from_secs(20), "promoted", || {
            t.status()["live_version"] == version
        });
    }
    eventually(Duration::from_secs(10), "v1 kept idle next to v2", || {
        let mut versions = container_versions(&t.instance());
        versions.sort();
        versions == ["v1", "v2"]
    });
    let load = t.load();
    std::thread::sleep(Duration::from_millis(200));
    let output = t.daemon.ok(&["rollback", &t.app]);
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    assert!(output.contains("instant rollback"), "{output}");
    assert!(!output.contains("starting"), "{output}");
    assert_eq!(report.failures(), Vec::<&str>::new());
    report.assert_versions_in_order(&["v2", "v1"]);
    assert_eq!(t.status()["live_version"], "v1");
}

/// Supervision with containers: `docker kill` of the live container — the
/// container is removed and the same image started again in its slot,
/// health-gated, counted in status.
#[test]
fn docker_live_container_killed_is_restarted_in_its_slot_and_counted() {
    let t = DockerApp::start(
        "dk-restart",
        Options {
            app: "restart_backoff = \"200ms\"".into(),
            ..Options::default()
        },
    );
    build_image(&[&t.image("v1")], "Dockerfile", &[]);
    t.deploy("v1");
    t.daemon.wait_serving("v1", Duration::from_secs(10));
    let before = containers(&t.instance());
    assert_eq!(before.len(), 1);
    let output = docker(&["kill", &before[0].id]);
    assert!(output.status.success(), "{output:?}");
    eventually(Duration::from_secs(30), "the container restarted", || {
        t.status()["supervision"]["restarts"] == 1
    });
    t.daemon.wait_serving("v1", Duration::from_secs(10));
    let after = containers(&t.instance());
    assert_eq!(after.len(), 1, "the dead container removed");
    assert_eq!(after[0].name, format!("{}-blue", t.app));
    assert_ne!(after[0].id, before[0].id);
    assert_eq!(t.status()["live_slot"], "blue");
    assert_eq!(t.history().len(), 1, "no deployment made for it");
}
