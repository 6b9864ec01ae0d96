//! End-to-end proofs with the swarm driver: the real `cutover` binary
//! against this machine's Docker engine as a swarm manager (scripts/test
//! runs `docker swarm init --advertise-addr 127.0.0.1` when it is not one),
//! releases as services of tasks built `FROM scratch` (a static busybox
//! serving `version=<V> host=<task hostname>`), each task publishing its
//! port in host mode; keep-alive clients through the proxy. Every test has
//! its own app name and removes its services and images when it ends, also
//! on failure. The machine has two cores: the tests are few and lean.

#![allow(clippy::unwrap_used)]

mod common;

use common::nginx::{FrontOptions, NginxFront};
use common::Daemon;
use cutover_test_support::docker::{build_image, docker_ok, unique};
use cutover_test_support::load::{ClientOptions, Load, LoadReport};
use cutover_test_support::swarm::{
    require_swarm, service_names, services, task_containers, SwarmCleanup, WorkerNode,
};
use cutover_test_support::wait::eventually;
use std::collections::BTreeSet;
use std::time::Duration;

const LOAD_CLIENTS: usize = 8;
const LOAD_MAX_REQUESTS: usize = 50_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(90);

/// A daemon with one swarm app; fields drop in order: the daemon first,
/// then the app's services and images.
struct SwarmApp {
    daemon: Daemon,
    app: String,
    repository: String,
    cleanup: SwarmCleanup,
}

/// The `[app.swarm]` table of `app` with `extra` keys.
fn swarm_section(repository: &str, extra: &str) -> String {
    format!(
        r#"[app.swarm]
image = "{repository}:{{version}}"
port = 8080
replicas = 2
stop_timeout = "2s"
env = {{ SHOW_HOST = "1" }}
{extra}
"#
    )
}

/// An `[[app]]` table of a swarm app with `app_keys` in it and
/// `swarm_extra` in its `[app.swarm]`.
fn app_table(
    app: &str,
    repository: &str,
    deploy_timeout: &str,
    app_keys: &str,
    swarm_extra: &str,
) -> String {
    format!(
        r#"
[[app]]
name = "{app}"
drain_timeout = "10s"
{app_keys}

[app.health]
path = "/health"
deploy_timeout = "{deploy_timeout}"
interval = "500ms"

{swarm}
"#,
        swarm = swarm_section(repository, swarm_extra),
    )
}

/// Keeps a test's tasks on this node (the manager): the cross-node test
/// adds a worker that has only its own images.
const ON_THIS_NODE: &str = r#"constraints = ["node.role == manager"]"#;

impl SwarmApp {
    fn start(prefix: &str, deploy_timeout: &str, swarm_extra: &str) -> SwarmApp {
        SwarmApp::start_with(prefix, deploy_timeout, "", swarm_extra)
    }

    /// With `app_keys` in the `[[app]]` table.
    fn start_with(
        prefix: &str,
        deploy_timeout: &str,
        app_keys: &str,
        swarm_extra: &str,
    ) -> SwarmApp {
        require_swarm();
        let app = unique(prefix);
        let repository = format!("cutover-test/{app}");
        let daemon = Daemon::start_with_apps(&app_table(
            &app,
            &repository,
            deploy_timeout,
            app_keys,
            swarm_extra,
        ));
        let cleanup = SwarmCleanup::new(&daemon.state_dir(), &[&repository]);
        SwarmApp {
            daemon,
            app,
            repository,
            cleanup,
        }
    }

    fn image(&self, version: &str) -> String {
        format!("{}:{version}", self.repository)
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

    fn services(&self) -> Vec<String> {
        service_names(self.cleanup.instance())
    }

    fn load(&self) -> Load {
        Load::start(
            self.daemon.proxy_port,
            LOAD_CLIENTS,
            LOAD_MAX_REQUESTS,
            LOAD_MAX_TIME,
        )
    }

    /// Waits until the current deployment is in `state`; returns its id.
    fn wait_state(&self, state: &str) -> i64 {
        let mut id = 0;
        eventually(
            Duration::from_secs(60),
            &format!("a deployment in state {state}"),
            || {
                let current = self.status()["current_deployment"].clone();
                id = current["id"].as_i64().unwrap_or(0);
                current["state"] == state
            },
        );
        id
    }

    /// Waits until the proxy answers `/` with `version` (from any task).
    fn wait_serving(&self, version: &str) {
        eventually(
            Duration::from_secs(20),
            "the proxy serving the release",
            || {
                self.daemon
                    .get("/")
                    .text()
                    .starts_with(&format!("version={version} host="))
            },
        );
    }
}

/// The hosts (tasks) that answered `version` in a load report; the load
/// client records each answer as `<version> host=<hostname>`.
fn hosts_of(report: &LoadReport, version: &str) -> BTreeSet<String> {
    report
        .clients
        .iter()
        .flat_map(|c| c.versions.iter())
        .filter_map(|answer| answer.strip_prefix(&format!("{version} host=")))
        .map(str::to_string)
        .collect()
}

/// Every client saw only v1 answers, then only v2 answers.
fn assert_v1_then_v2(report: &LoadReport) {
    for (index, client) in report.clients.iter().enumerate() {
        let versions: Vec<&str> = client
            .versions
            .iter()
            .map(|answer| answer.split(' ').next().unwrap_or(""))
            .collect();
        let first_v2 = versions
            .iter()
            .position(|v| *v == "v2")
            .unwrap_or(versions.len());
        assert!(
            versions[..first_v2].iter().all(|v| *v == "v1")
                && versions[first_v2..].iter().all(|v| *v == "v2"),
            "client {index} went back or saw something else: {versions:?}"
        );
    }
}

/// v1 → v2 with two tasks each under 8 keep-alive clients: no request
/// fails, both tasks of v1 and then both of v2 answered, the status lists
/// both endpoints of the live release, and `<app>-blue` is gone.
#[test]
fn swarm_v1_to_v2_with_two_replicas_under_load_fails_no_request_and_reaches_every_task() {
    let t = SwarmApp::start("sw-switch", "30s", ON_THIS_NODE);
    build_image(&[&t.image("v1"), &t.image("v2")], "Dockerfile", &[]);
    let first = t.deploy("v1");
    assert!(first.contains("succeeded"), "{first}");
    t.wait_serving("v1");

    let load = t.load();
    std::thread::sleep(Duration::from_millis(1000));
    let second = t.deploy("v2");
    std::thread::sleep(Duration::from_millis(1000));
    let report = load.stop();

    assert!(second.contains("succeeded"), "{second}");
    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "failed requests during the switch"
    );
    assert!(
        report.requests() > 200,
        "too little load: {}",
        report.requests()
    );
    assert_v1_then_v2(&report);
    let (v1_hosts, v2_hosts) = (hosts_of(&report, "v1"), hosts_of(&report, "v2"));
    assert_eq!(v1_hosts.len(), 2, "both v1 tasks answered: {v1_hosts:?}");
    assert_eq!(v2_hosts.len(), 2, "both v2 tasks answered: {v2_hosts:?}");

    let status = t.status();
    assert_eq!(
        (status["live_slot"].as_str(), status["driver"].as_str()),
        (Some("green"), Some("swarm"))
    );
    let endpoints = status["endpoints"].as_array().cloned().unwrap_or_default();
    assert_eq!(endpoints.len(), 2, "{status}");
    for endpoint in &endpoints {
        assert!(
            endpoint["label"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{}-green.", t.app)),
            "{endpoint}"
        );
        assert_eq!(endpoint["healthy"], true, "{endpoint}");
    }
    let text = t.daemon.ok(&["status", &t.app]);
    assert!(
        text.contains("ENDPOINT") && text.matches(&format!("{}-green.", t.app)).count() == 2,
        "{text}"
    );
    eventually(Duration::from_secs(20), "web-blue removed", || {
        t.services() == [format!("{}-green", t.app)]
    });
    println!(
        "switch after the last task became healthy: {} ms; {} requests, 0 failed",
        switch_delay_ms(&t),
        report.requests()
    );
    let logs = t.daemon.ok(&["logs", &t.app, "--tail", "100000"]);
    assert!(
        logs.lines()
            .any(|l| l.starts_with(&format!("{}-green.", t.app))
                && l.contains("| fixture: serving version v2")),
        "task output prefixed by task in `cutover logs`:\n{logs}"
    );
}

/// Milliseconds from the note "… is healthy after …" (every task passed)
/// to the switch (the `draining` transition) of the last deployment.
fn switch_delay_ms(t: &SwarmApp) -> i64 {
    let id = t.history()[0]["id"].as_i64().unwrap_or_default();
    let detail = t.daemon.admin_get(&format!("/v1/deployments/{id}"));
    let events = detail["events"].as_array().cloned().unwrap_or_default();
    let at = |found: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .find(|e| found(e))
            .and_then(|e| e["at"].as_i64())
    };
    let healthy = at(&|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("is healthy after"))
    });
    let switched = at(&|e| e["state"] == "draining");
    switched.zip(healthy).map_or(-1, |(s, h)| s - h)
}

/// A live task's container is killed under load: it leaves the rotation,
/// requests keep succeeding (at most the ones in flight on it fail, one per
/// client), and the replacement task answers once healthy.
#[test]
fn swarm_killed_task_leaves_rotation_and_its_healthy_replacement_gets_traffic() {
    let t = SwarmApp::start("sw-kill", "30s", ON_THIS_NODE);
    build_image(&[&t.image("v1")], "Dockerfile", &[]);
    t.deploy("v1");
    t.wait_serving("v1");
    let before: BTreeSet<String> = endpoint_labels(&t);
    assert_eq!(before.len(), 2);

    let load = t.load();
    std::thread::sleep(Duration::from_millis(500));
    let victim = task_containers(&format!("{}-blue", t.app))[0].clone();
    docker_ok(&["kill", &victim]);
    eventually(
        Duration::from_secs(30),
        "the replacement task in rotation",
        || {
            let now = endpoint_labels(&t);
            now.len() == 2 && now != before
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();

    let failures = report.failures();
    println!(
        "failed requests when a task was killed under load: {} of {}",
        failures.len(),
        report.requests()
    );
    assert!(
        failures.len() <= LOAD_CLIENTS,
        "more failures than requests that can have been in flight on the killed task: {failures:?}"
    );
    let hosts = hosts_of(&report, "v1");
    assert_eq!(
        hosts.len(),
        3,
        "both first tasks and the replacement answered: {hosts:?}"
    );
    assert_eq!(t.status()["health"], "healthy");
}

fn endpoint_labels(t: &SwarmApp) -> BTreeSet<String> {
    t.status()["endpoints"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["label"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A v2 whose tasks never become healthy (its Docker HEALTHCHECK fails),
/// then — after a restart with constraints no node satisfies — a v3: each
/// fails with the engine's cause, v1 keeps serving, no new service is left.
#[test]
fn swarm_unhealthy_or_unplaceable_releases_fail_with_the_cause_and_v1_keeps_serving() {
    let mut t = SwarmApp::start("sw-bad", "40s", ON_THIS_NODE);
    build_image(&[&t.image("v1"), &t.image("v3")], "Dockerfile", &[]);
    build_image(
        &[&t.image("v2")],
        "Dockerfile.healthcheck",
        &[("HEALTHCHECK_PATH", "missing")],
    );
    t.deploy("v1");
    t.wait_serving("v1");
    let v1_service = services(t.cleanup.instance())[0].id.clone();

    let load = t.load();
    let unhealthy = t.daemon.cli(&["deploy", &t.app, "--version", "v2"]);
    let during_v2 = load.stop();
    let said = String::from_utf8_lossy(&unhealthy.stderr).into_owned()
        + &String::from_utf8_lossy(&unhealthy.stdout);
    assert_eq!(unhealthy.status.code(), Some(1), "{said}");
    assert!(said.contains("unhealthy"), "the cause is named:\n{said}");
    eventually(Duration::from_secs(20), "no v2 service left", || {
        t.services() == [format!("{}-blue", t.app)]
    });

    // Constraints are configuration: restart with ones no node satisfies.
    let config = std::fs::read_to_string(&t.daemon.config).unwrap().replace(
        ON_THIS_NODE,
        r#"constraints = ["node.labels.cutover-test-tier == nowhere"]"#,
    );
    std::fs::write(&t.daemon.config, config).unwrap();
    t.daemon.terminate();
    t.daemon.spawn();
    t.wait_serving("v1");
    let load = t.load();
    let unplaced = t.daemon.cli(&["deploy", &t.app, "--version", "v3"]);
    let during_v3 = load.stop();
    let said = String::from_utf8_lossy(&unplaced.stderr).into_owned()
        + &String::from_utf8_lossy(&unplaced.stdout);
    assert_eq!(unplaced.status.code(), Some(1), "{said}");
    assert!(
        said.contains("no suitable node"),
        "the engine's words:\n{said}"
    );

    for report in [&during_v2, &during_v3] {
        assert_eq!(
            report.failures(),
            Vec::<&str>::new(),
            "a failed deployment fails no request"
        );
        assert!(
            report
                .clients
                .iter()
                .all(|c| c.versions.iter().all(|v| v.starts_with("v1 "))),
            "traffic reached v2 or v3"
        );
    }
    assert!(during_v2.requests() > 50, "{}", during_v2.requests());
    assert_eq!(t.services(), [format!("{}-blue", t.app)]);
    assert_eq!(
        services(t.cleanup.instance())[0].id,
        v1_service,
        "v1's service is untouched"
    );
    let history = t.history();
    assert_eq!(
        (history[0]["state"].as_str(), history[1]["state"].as_str()),
        (Some("failed"), Some("failed"))
    );
}

/// kill -9 of cutover while v2's service is being checked: after the
/// restart v1's service (the same one) is adopted and serves, v2's service
/// is removed, the deployment is recorded as interrupted.
#[test]
fn swarm_kill_9_mid_deployment_readopts_the_live_service_and_leaves_no_orphan() {
    let mut t = SwarmApp::start("sw-crash", "60s", ON_THIS_NODE);
    build_image(&[&t.image("v1")], "Dockerfile", &[]);
    build_image(&[&t.image("v2")], "Dockerfile", &[("MODE", "hang")]);
    t.deploy("v1");
    t.wait_serving("v1");
    let v1_service = services(t.cleanup.instance())[0].id.clone();
    t.daemon
        .ok(&["deploy", &t.app, "--version", "v2", "--no-wait"]);
    eventually(Duration::from_secs(30), "deployment in checking", || {
        t.status()["current_deployment"]["state"] == "checking"
    });
    t.daemon.kill9();
    assert_eq!(t.services().len(), 2, "services outlive the daemon");

    t.daemon.spawn();
    t.wait_serving("v1");
    eventually(Duration::from_secs(30), "v2's service removed", || {
        t.services() == [format!("{}-blue", t.app)]
    });
    assert_eq!(
        services(t.cleanup.instance())[0].id,
        v1_service,
        "adopted, not replaced"
    );
    assert!(
        t.daemon.serve_log().contains("adopted service"),
        "{}",
        t.daemon.serve_log()
    );
    let last = &t.history()[0];
    assert_eq!(
        (last["version"].as_str(), last["state"].as_str()),
        (Some("v2"), Some("failed"))
    );
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .contains("interrupted"),
        "{last}"
    );
    assert_eq!(t.status()["endpoints"].as_array().map(Vec::len), Some(2));
}

/// nginx as the front: the include written for a two-task swarm release
/// lists both task endpoints, and nginx serves through them.
#[test]
fn swarm_nginx_include_lists_every_task_endpoint() {
    require_swarm();
    let app_hint = unique("sw-nginx");
    let repository = format!("cutover-test/{app_hint}");
    let front = NginxFront::start(FrontOptions {
        driver: Some(swarm_section(&repository, ON_THIS_NODE)),
        ..FrontOptions::default()
    });
    let _cleanup = SwarmCleanup::new(&front.daemon.state_dir(), &[&repository]);
    build_image(&[&format!("{repository}:v1")], "Dockerfile", &[]);
    let deployed = front.daemon.deploy("v1");
    assert!(deployed.contains("succeeded"), "{deployed}");
    let include = front.include();
    let endpoints: Vec<String> = front.daemon.status()["endpoints"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["addr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(endpoints.len(), 2, "{include}");
    for addr in &endpoints {
        assert!(
            include.contains(&format!("server {addr};")),
            "{addr} missing:\n{include}"
        );
    }
}

/// Two nodes: a worker (a second dockerd in a network namespace this test
/// creates) joins the swarm; v1's two tasks run one on each node; the
/// worker's engine is stopped under load: its endpoint leaves the rotation,
/// the orchestrator's replacement on this node joins once healthy, and at
/// most the requests in flight on the lost node fail.
#[test]
fn swarm_tasks_on_two_nodes_survive_the_loss_of_one_node_under_load() {
    require_swarm();
    let mut worker = WorkerNode::start();
    let t = SwarmApp::start("sw-nodes", "60s", "");
    build_image(&[&t.image("v1")], "Dockerfile", &[]);
    worker.load_image(&t.image("v1"));
    t.deploy("v1");
    t.wait_serving("v1");
    let ips = endpoint_ips(&t);
    assert!(
        ips.contains(&worker.addr) && ips.iter().any(|ip| ip != &worker.addr),
        "one task on each node: {ips:?}"
    );

    let load = t.load();
    std::thread::sleep(Duration::from_millis(1000));
    worker.stop_engine();
    eventually(
        Duration::from_secs(90),
        "both endpoints on this node",
        || {
            let ips = endpoint_ips(&t);
            ips.len() == 2 && !ips.contains(&worker.addr)
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();

    let failures = report.failures();
    println!(
        "failed requests when a node was lost under load: {} of {}",
        failures.len(),
        report.requests()
    );
    assert!(
        failures.len() <= LOAD_CLIENTS,
        "more failures than requests that can have been in flight on the lost node: {failures:?}"
    );
    assert!(
        hosts_of(&report, "v1").len() >= 3,
        "the replacement answered"
    );
}

fn endpoint_ips(t: &SwarmApp) -> Vec<String> {
    t.status()["endpoints"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| {
                    let addr = e["addr"].as_str()?;
                    Some(addr.rsplit_once(':')?.0.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// keep_old with a swarm release: the previous service stays running idle
/// and a rollback inside the window switches back to it (checked once on
/// every endpoint) without starting anything or failing a request.
#[test]
fn swarm_rollback_inside_keep_old_switches_back_to_the_idle_service() {
    let t = SwarmApp::start_with("sw-keep", "30s", "keep_old = \"60s\"", ON_THIS_NODE);
    build_image(&[&t.image("v1"), &t.image("v2")], "Dockerfile", &[]);
    t.deploy("v1");
    let v1_service = services(t.cleanup.instance())[0].id.clone();
    t.deploy("v2");
    t.wait_serving("v2");
    assert_eq!(t.services().len(), 2, "v1 stays running idle");

    let load = t.load();
    std::thread::sleep(Duration::from_millis(500));
    let output = t.daemon.ok(&["rollback", &t.app]);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();

    assert!(output.contains("instant rollback"), "{output}");
    assert!(
        !output.contains("starting"),
        "nothing is started:\n{output}"
    );
    assert_eq!(report.failures(), Vec::<&str>::new());
    assert_v2_then_v1(&report);
    let live = services(t.cleanup.instance())
        .into_iter()
        .find(|s| s.version == "v1")
        .map(|s| s.id);
    assert_eq!(live, Some(v1_service), "v1's service was reused");
    assert_eq!(t.status()["endpoints"].as_array().map(Vec::len), Some(2));
}

fn assert_v2_then_v1(report: &LoadReport) {
    for client in &report.clients {
        let versions: Vec<&str> = client
            .versions
            .iter()
            .map(|answer| answer.split(' ').next().unwrap_or(""))
            .collect();
        let first_v1 = versions
            .iter()
            .position(|v| *v == "v1")
            .unwrap_or(versions.len());
        assert!(
            versions[..first_v1].iter().all(|v| *v == "v2")
                && versions[first_v1..].iter().all(|v| *v == "v1"),
            "{versions:?}"
        );
    }
}

/// Whether every answer in `report` came from `version` (any task).
fn only_version(report: &LoadReport, version: &str) -> bool {
    let prefix = format!("{version} host=");
    report
        .clients
        .iter()
        .all(|c| c.versions.iter().all(|v| v.starts_with(&prefix)))
}

/// A few keep-alive clients with these options, each sending `requests`.
fn clients_with(t: &SwarmApp, clients: usize, requests: usize, options: ClientOptions) -> Load {
    Load::start_with(
        t.daemon.proxy_port,
        clients,
        requests,
        LOAD_MAX_TIME,
        options,
    )
}

/// Preview and manual promotion with two tasks per release: while v2
/// awaits promotion, requests carrying the preview header reach both v2
/// tasks and only them, the others both v1 tasks; `cutover promote` then
/// moves everyone to both v2 tasks, with no failed request under
/// keep-alive load, and the v1 service is removed.
#[test]
fn swarm_preview_reaches_both_new_tasks_and_promote_switches_all_traffic_without_failures() {
    let t = SwarmApp::start_with("sw-preview", "30s", r#"promotion = "manual""#, ON_THIS_NODE);
    build_image(&[&t.image("v1"), &t.image("v2")], "Dockerfile", &[]);
    t.daemon
        .ok(&["deploy", &t.app, "--version", "v1", "--no-wait"]);
    t.wait_state("awaiting_promotion");
    t.daemon.ok(&["promote", &t.app]);
    t.wait_serving("v1");
    t.daemon
        .ok(&["deploy", &t.app, "--version", "v2", "--no-wait"]);
    t.wait_state("awaiting_promotion");

    let preview = ClientOptions {
        header: Some(("X-Cutover-Preview".into(), "1".into())),
        ..ClientOptions::default()
    };
    let previewing = clients_with(&t, 4, 400, preview);
    let regular = clients_with(&t, 4, 400, ClientOptions::default());
    let (previewing, regular) = (previewing.stop_when_done(), regular.stop_when_done());
    assert_eq!(previewing.failures(), Vec::<&str>::new());
    assert_eq!(regular.failures(), Vec::<&str>::new());
    assert!(only_version(&previewing, "v2"), "a preview reached v1");
    assert!(only_version(&regular, "v1"), "normal traffic reached v2");
    let (preview_hosts, regular_hosts) = (hosts_of(&previewing, "v2"), hosts_of(&regular, "v1"));
    assert_eq!(
        preview_hosts.len(),
        2,
        "both v2 tasks previewed: {preview_hosts:?}"
    );
    assert_eq!(
        regular_hosts.len(),
        2,
        "both v1 tasks served: {regular_hosts:?}"
    );
    assert_eq!(t.status()["live_version"], "v1");
    assert_eq!(t.services().len(), 2, "v2 runs beside v1 until promoted");

    let load = t.load();
    std::thread::sleep(Duration::from_millis(1000));
    t.daemon.ok(&["promote", &t.app]);
    eventually(Duration::from_secs(30), "v2 promoted", || {
        t.history()[0]["state"] == "succeeded"
    });
    std::thread::sleep(Duration::from_millis(1000));
    let report = load.stop();

    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "failed requests at the promotion"
    );
    assert_v1_then_v2(&report);
    let (v1_hosts, v2_hosts) = (hosts_of(&report, "v1"), hosts_of(&report, "v2"));
    assert_eq!(
        (v1_hosts.len(), v2_hosts.len()),
        (2, 2),
        "{v1_hosts:?} then {v2_hosts:?}"
    );
    assert_eq!(
        v2_hosts, preview_hosts,
        "the previewed tasks are the ones promoted"
    );
    eventually(Duration::from_secs(20), "v1's service removed", || {
        t.services() == [format!("{}-green", t.app)]
    });
    println!(
        "preview: {} requests (all v2), regular: {} (all v1); promotion under load: {} requests, 0 failed",
        previewing.requests(),
        regular.requests(),
        report.requests()
    );
}

/// A gradual sticky shift with two tasks per release: at the 50 % step,
/// clients without a cookie reach both v1 tasks and both v2 tasks, a
/// client that keeps its cookie stays on one release; at the end only the
/// v2 tasks answer; keep-alive clients across the whole shift fail no
/// request.
#[test]
fn swarm_gradual_shift_spreads_over_both_releases_tasks_keeps_sticky_clients_and_ends_on_v2() {
    let t = SwarmApp::start_with(
        "sw-shift",
        "30s",
        r#"shift = { steps = [50, 100], every = "10s" }"#,
        ON_THIS_NODE,
    );
    build_image(&[&t.image("v1"), &t.image("v2")], "Dockerfile", &[]);
    t.deploy("v1");
    t.wait_serving("v1");

    let whole_shift = t.load();
    t.daemon
        .ok(&["deploy", &t.app, "--version", "v2", "--no-wait"]);
    let id = t.wait_state("switching");
    let marker = "50% of new clients";
    eventually(Duration::from_secs(30), marker, || {
        t.daemon
            .event_messages(id)
            .iter()
            .any(|m| m.contains(marker))
    });
    let events_before = t.daemon.event_messages(id);
    let anonymous = clients_with(
        &t,
        4,
        400,
        ClientOptions {
            pause: Some(Duration::ZERO),
            ..ClientOptions::default()
        },
    );
    let sticky = clients_with(
        &t,
        4,
        100,
        ClientOptions {
            keep_cookies: true,
            pause: Some(Duration::from_millis(5)),
            ..ClientOptions::default()
        },
    );
    let (anonymous, sticky) = (anonymous.stop_when_done(), sticky.stop_when_done());
    let events_after = t.daemon.event_messages(id);
    assert!(
        !events_after[events_before.len()..]
            .iter()
            .any(|m| m.contains("of new clients")),
        "the step changed while measuring; the measurement is void: {events_after:?}"
    );
    assert_eq!(anonymous.failures(), Vec::<&str>::new());
    assert_eq!(sticky.failures(), Vec::<&str>::new());
    let (v1_hosts, v2_hosts) = (hosts_of(&anonymous, "v1"), hosts_of(&anonymous, "v2"));
    assert_eq!(
        (v1_hosts.len(), v2_hosts.len()),
        (2, 2),
        "every task of both releases answered at 50%: {v1_hosts:?} {v2_hosts:?}"
    );
    for client in &sticky.clients {
        let release = |answer: &String| answer.split(' ').next().unwrap_or("").to_string();
        let first = release(&client.versions[0]);
        assert!(
            client.versions.iter().all(|v| release(v) == first),
            "a sticky client changed release: {:?}",
            client.versions
        );
    }

    eventually(Duration::from_secs(30), "the shift completed", || {
        t.history()[0]["state"] == "succeeded"
    });
    let report = whole_shift.stop();
    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "failed requests during the shift"
    );
    let after = clients_with(&t, 4, 200, ClientOptions::default()).stop_when_done();
    assert_eq!(after.failures(), Vec::<&str>::new());
    assert!(only_version(&after, "v2"), "v1 answered after the shift");
    assert_eq!(
        hosts_of(&after, "v2").len(),
        2,
        "both v2 tasks answer at the end"
    );
    eventually(Duration::from_secs(20), "v1's service removed", || {
        t.services() == [format!("{}-green", t.app)]
    });
    let v2_share = anonymous
        .clients
        .iter()
        .flat_map(|c| &c.versions)
        .filter(|v| v.starts_with("v2 "))
        .count();
    println!(
        "shift: {} requests across it, 0 failed; at 50%: {v2_share} of {} anonymous requests on v2",
        report.requests(),
        anonymous.requests()
    );
}

/// The engine behind an app's `[app.swarm] socket` cannot serve it: a
/// socket file where nothing listens (unreachable), or a plain Docker
/// engine joined to no swarm (a second dockerd in a network namespace,
/// named as `unix://…` like the README does). `cutover deploy` fails at
/// once with exit 1 and the engine's own words, no service is created,
/// and the live app beside them serves on untouched with no failed request.
#[test]
fn swarm_unreachable_engine_or_one_that_is_no_manager_fails_the_deploy_and_changes_nothing() {
    require_swarm();
    let plain_engine = WorkerNode::start_unjoined();
    let sockets = tempfile::tempdir().unwrap();
    let dead = sockets.path().join("docker.sock");
    // Bound, then closed: the file stays and connecting is refused.
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let app = unique("sw-engine");
    let repository = format!("cutover-test/{app}");
    let (unreachable, no_manager) = (format!("{app}-dead"), format!("{app}-plain"));
    let apps = [
        app_table(&app, &repository, "30s", "", ON_THIS_NODE),
        app_table(
            &unreachable,
            &repository,
            "30s",
            r#"hosts = ["dead.test"]"#,
            &format!("socket = \"{}\"", dead.display()),
        ),
        app_table(
            &no_manager,
            &repository,
            "30s",
            r#"hosts = ["plain.test"]"#,
            &format!("socket = \"{}\"", plain_engine.socket()),
        ),
    ];
    let daemon = Daemon::start_with_apps(&apps.concat());
    let cleanup = SwarmCleanup::new(&daemon.state_dir(), &[&repository]);
    build_image(&[&format!("{repository}:v1")], "Dockerfile", &[]);
    daemon.ok(&["deploy", &app, "--version", "v1"]);
    let live_service = services(cleanup.instance())[0].id.clone();

    let load = Load::start(
        daemon.proxy_port,
        LOAD_CLIENTS,
        LOAD_MAX_REQUESTS,
        LOAD_MAX_TIME,
    );
    std::thread::sleep(Duration::from_millis(500));
    let failed_deploy = |name: &str| {
        let started = std::time::Instant::now();
        let output = daemon.cli(&["deploy", name, "--version", "v1"]);
        let said = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{said}");
        println!(
            "`cutover deploy {name}` failed after {:?}:\n{said}",
            started.elapsed()
        );
        said
    };
    let said_unreachable = failed_deploy(&unreachable);
    let said_no_manager = failed_deploy(&no_manager);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();

    assert!(
        said_unreachable.contains(&dead.display().to_string())
            && said_unreachable
                .to_ascii_lowercase()
                .contains("connection refused"),
        "the socket and the connection's error are named:\n{said_unreachable}"
    );
    assert!(
        said_no_manager.contains("This node is not a swarm manager"),
        "Docker's own words:\n{said_no_manager}"
    );
    for name in [&unreachable, &no_manager] {
        let status = daemon.json(&["status", name]);
        assert!(status["live_version"].is_null(), "{status}");
        let last = &daemon.json(&["history", name])[0];
        assert_eq!(last["state"], "failed", "{last}");
    }
    assert_eq!(report.failures(), Vec::<&str>::new());
    assert!(only_version(&report, "v1"));
    assert_eq!(service_names(cleanup.instance()), [format!("{app}-blue")]);
    assert_eq!(
        services(cleanup.instance())[0].id,
        live_service,
        "the live service is untouched"
    );
    let created = plain_engine.docker(&["ps", "-aq"]);
    assert_eq!(
        String::from_utf8_lossy(&created.stdout).trim(),
        "",
        "nothing runs on the plain engine"
    );
    println!(
        "the live app under load meanwhile: {} requests, 0 failed",
        report.requests()
    );
}
