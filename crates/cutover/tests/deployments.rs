//! End-to-end proofs of PRODUCT.md's invariants with real processes: the
//! `cutover` binary, the test app as releases, keep-alive clients.

#![allow(clippy::unwrap_used)]

mod common;

use common::{AppOptions, Daemon};
use cutover_test_support::load::Load;
use cutover_test_support::wait::eventually;
use cutover_test_support::{http, ports, process};
use std::time::{Duration, Instant};

const LOAD_CLIENTS: usize = 8;
const LOAD_MAX_REQUESTS: usize = 20_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(60);

/// Invariants 1 and 3: v1 → v2 under keep-alive load drops nothing, and no
/// client goes back to v1 after its first v2.
#[test]
fn blue_green_switch_under_keepalive_load_fails_no_request() {
    let daemon = Daemon::start(AppOptions::default());
    let first = daemon.deploy("v1");
    assert!(first.contains("succeeded"), "{first}");
    daemon.wait_serving("v1", Duration::from_secs(5));

    let load = Load::start(
        daemon.proxy_port,
        LOAD_CLIENTS,
        LOAD_MAX_REQUESTS,
        LOAD_MAX_TIME,
    );
    std::thread::sleep(Duration::from_millis(300));
    let second = daemon.deploy("v2");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();

    assert!(second.contains("succeeded"), "{second}");
    for step in [
        "starting",
        "checking",
        "switching",
        "draining",
        "retiring",
        "succeeded",
    ] {
        assert!(
            second.contains(step),
            "deploy output lacks step {step}:\n{second}"
        );
    }
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
    for client in &report.clients {
        assert_eq!(client.versions.last().map(String::as_str), Some("v2"));
    }
    let status = daemon.status();
    assert_eq!(status["live_slot"], "green");
    assert_eq!(status["live_version"], "v2");
    eventually(Duration::from_secs(5), "v1 process stopped", || {
        daemon.release_versions() == ["v2"]
    });
}

/// Invariant 4: a request in flight on the old slot finishes there, and the
/// drain ends as soon as it does (not at drain_timeout).
#[test]
fn slow_request_on_old_slot_completes_and_drain_ends_when_it_does() {
    let daemon = Daemon::start(AppOptions {
        drain_timeout: "30s",
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    let port = daemon.proxy_port;
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let response = http::get(port, "/slow?ms=3000");
        (response, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let deploy_started = Instant::now();
    let output = daemon.deploy("v2");
    let deploy_took = deploy_started.elapsed();
    let (response, _) = slow.join().unwrap();

    assert_eq!(response.status, 200);
    assert_eq!(response.text().trim(), "version=v1 slept=3000");
    assert!(output.contains("drained after"), "{output}");
    // Generous bound: the drain waited for the slow request (~2.7 s left),
    // far less than the 30 s drain_timeout.
    assert!(
        deploy_took < Duration::from_secs(20),
        "deploy took {deploy_took:?}"
    );
    assert!(
        deploy_took >= Duration::from_millis(2000),
        "drain did not wait for the slow request: {deploy_took:?}"
    );
    assert_eq!(
        daemon.release_versions(),
        ["v2"],
        "v1 must be stopped once drained"
    );
    assert_eq!(daemon.get("/").text().trim(), "version=v2");
}

fn assert_failed_deploy_changes_nothing(flags: &str, fixed_ports: bool, expected_reason: &str) {
    let ports = fixed_ports.then(|| (ports::free_port(), ports::free_port()));
    let daemon = Daemon::start(AppOptions {
        deploy_timeout: "3s",
        fixed_ports: ports,
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    daemon.behave("v2", flags);
    // For the port case, something else holds green's port.
    let _squatter =
        ports.map(|(_, green)| std::net::TcpListener::bind(("127.0.0.1", green)).unwrap());

    let load = Load::start(
        daemon.proxy_port,
        LOAD_CLIENTS,
        LOAD_MAX_REQUESTS,
        LOAD_MAX_TIME,
    );
    let output = daemon.cli(&["deploy", "web", "--version", "v2"]);
    let report = load.stop();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "deploy must exit 1:\n{stdout}\n{stderr}"
    );
    let said = format!("{stdout}{stderr}");
    assert!(
        said.contains(expected_reason),
        "reason should mention `{expected_reason}`:\n{said}"
    );
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
    assert_eq!(
        daemon.release_versions(),
        ["v1"],
        "no v2 process may be left behind"
    );
    let status = daemon.status();
    assert_eq!(status["live_version"], "v1");
    let last = &daemon.history()[0];
    assert_eq!(last["state"], "failed");
    assert_eq!(daemon.get("/").text().trim(), "version=v1");
}

/// Invariant 2, each way a new release can fail.
#[test]
fn release_exiting_at_start_fails_deploy_and_v1_keeps_serving() {
    assert_failed_deploy_changes_nothing("--exit-at-start 3", false, "exited with code 3");
}

#[test]
fn release_never_healthy_fails_deploy_at_deploy_timeout_and_v1_keeps_serving() {
    assert_failed_deploy_changes_nothing("--start-delay 60000", false, "not healthy after");
}

#[test]
fn health_answering_500_fails_deploy_and_v1_keeps_serving() {
    assert_failed_deploy_changes_nothing("--health-status 500", false, "answered 500");
}

#[test]
fn port_already_taken_fails_deploy_and_v1_keeps_serving() {
    assert_failed_deploy_changes_nothing("", true, "already in use");
}

/// The failure reason carries the tail of the new release's log.
#[test]
fn failed_deploy_reason_quotes_the_release_log() {
    let daemon = Daemon::start(AppOptions::default());
    daemon.behave("v1", "--exit-at-start 7");
    let output = daemon.cli(&["deploy", "web", "--version", "v1"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("exiting at start"),
        "log tail missing:\n{said}"
    );
    assert_eq!(daemon.get("/").status, 503, "nothing live yet: 503");
    let logs = daemon.ok(&["logs", "web", "--slot", "blue"]);
    assert!(
        logs.contains("exiting at start"),
        "the failed release's log stays readable:\n{logs}"
    );
}

/// Invariant 5: two deployments requested at once never interleave.
#[test]
fn concurrent_deploys_are_serialised_never_interleaved() {
    let daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.behave("v2", "--start-delay 1000");
    let first = daemon.json(&["deploy", "web", "--version", "v2", "--no-wait"]);
    let second = daemon.json(&["deploy", "web", "--version", "v3", "--no-wait"]);
    let (first_id, second_id) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );
    eventually(Duration::from_secs(30), "both deployments finished", || {
        daemon
            .history()
            .iter()
            .filter(|d| d["state"] == "succeeded")
            .count()
            == 3
    });
    let all = daemon.history();
    let find = |id: i64| all.iter().find(|d| d["id"] == id).unwrap().clone();
    let (a, b) = (find(first_id), find(second_id));
    assert!(
        a["finished_at"].as_i64().unwrap() <= b["started_at"].as_i64().unwrap(),
        "deployment {second_id} started before {first_id} finished: {a} {b}"
    );
    assert_eq!(daemon.status()["live_version"], "v3");
    assert_eq!(daemon.release_versions(), ["v3"]);
}

/// Invariant 5: a burst collapses to the newest request.
#[test]
fn burst_of_deploys_collapses_to_the_newest() {
    let daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.behave("v2", "--start-delay 1500");
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    daemon.ok(&["deploy", "web", "--version", "v3", "--no-wait"]);
    daemon.ok(&["deploy", "web", "--version", "v4", "--no-wait"]);
    eventually(Duration::from_secs(30), "v4 live", || {
        daemon.status()["live_version"] == "v4"
    });
    eventually(Duration::from_secs(10), "no deployment running", || {
        daemon.status()["current_deployment"].is_null()
    });
    let all = daemon.history();
    let v3 = all.iter().find(|d| d["version"] == "v3").unwrap();
    assert_eq!(v3["state"], "aborted");
    assert!(
        v3["reason"].as_str().unwrap().contains("superseded"),
        "{v3}"
    );
}

/// Invariant 5, refusal: with max_queued = 0 a second request is refused clearly.
#[test]
fn deploy_while_busy_is_refused_when_queueing_is_off() {
    let daemon = Daemon::start(AppOptions {
        max_queued: Some(0),
        ..AppOptions::default()
    });
    daemon.behave("v1", "--start-delay 1500");
    daemon.ok(&["deploy", "web", "--version", "v1", "--no-wait"]);
    let refused = daemon.cli(&["deploy", "web", "--version", "v2"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
}

/// Rollback returns to the previous release with no failed request.
#[test]
fn rollback_under_load_returns_to_previous_release_without_failures() {
    let daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.deploy("v2");
    let load = Load::start(
        daemon.proxy_port,
        LOAD_CLIENTS,
        LOAD_MAX_REQUESTS,
        LOAD_MAX_TIME,
    );
    std::thread::sleep(Duration::from_millis(200));
    let output = daemon.ok(&["rollback", "web"]);
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    assert!(output.contains("succeeded"), "{output}");
    assert_eq!(report.failures(), Vec::<&str>::new());
    report.assert_versions_in_order(&["v2", "v1"]);
    let status = daemon.status();
    assert_eq!(status["live_version"], "v1");
    assert_eq!(daemon.history()[0]["trigger"], "rollback");
}

#[test]
fn rollback_with_no_earlier_release_is_refused() {
    let daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    let output = daemon.cli(&["rollback", "web"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no earlier release"));
}

/// Invariant 6: kill -9 during `checking`; after restart the old live slot
/// serves, the interrupted deployment is failed, no orphan remains.
#[test]
fn kill_9_during_checking_keeps_v1_live_and_cleans_up_v2() {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.behave("v2", "--start-delay 60000");
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    eventually(Duration::from_secs(10), "deployment in checking", || {
        daemon.status()["current_deployment"]["state"] == "checking"
    });
    daemon.kill9();
    // The releases outlive the daemon: v1 and the starting v2.
    assert_eq!(daemon.release_versions(), ["v1", "v2"]);
    daemon.spawn();
    daemon.wait_serving("v1", Duration::from_secs(10));
    eventually(Duration::from_secs(10), "v2 cleaned up", || {
        daemon.release_versions() == ["v1"]
    });
    let last = &daemon.history()[0];
    assert_eq!(last["version"], "v2");
    assert_eq!(last["state"], "failed");
    assert!(
        last["reason"].as_str().unwrap().contains("interrupted"),
        "{last}"
    );
    assert_eq!(daemon.status()["live_version"], "v1");
}

/// Invariant 6: kill -9 right after the switch (while draining); after
/// restart v2 serves, v1 is stopped, history is intact.
#[test]
fn kill_9_right_after_switch_serves_v2_and_stops_v1() {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    let port = daemon.proxy_port;
    let slow = std::thread::spawn(move || http::try_get(port, "/slow?ms=4000"));
    std::thread::sleep(Duration::from_millis(200));
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    eventually(Duration::from_secs(10), "deployment draining", || {
        daemon.status()["current_deployment"]["state"] == "draining"
    });
    daemon.kill9();
    daemon.spawn();
    daemon.wait_serving("v2", Duration::from_secs(10));
    eventually(Duration::from_secs(15), "v1 stopped", || {
        daemon.release_versions() == ["v2"]
    });
    let all = daemon.history();
    assert_eq!(all.len(), 2, "history intact: {all:?}");
    assert_eq!(all[0]["state"], "failed");
    assert!(all[0]["reason"].as_str().unwrap().contains("interrupted"));
    assert_eq!(all[1]["state"], "succeeded");
    let _ = slow.join();
}

/// Invariant 6 for a clean stop: SIGTERM, restart, the live release serves
/// again without a new deployment and history is unchanged.
#[test]
fn restart_after_sigterm_serves_the_live_release_without_a_new_deploy() {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.deploy("v2");
    daemon.terminate();
    assert_eq!(
        daemon.release_versions(),
        ["v2"],
        "releases keep running while cutover is down"
    );
    daemon.spawn();
    daemon.wait_serving("v2", Duration::from_secs(10));
    let all = daemon.history();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|d| d["state"] == "succeeded"));
}

/// After a host reboot nothing runs: the recorded live release is started again.
#[test]
fn live_release_that_died_while_cutover_was_down_is_started_again() {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.kill9();
    for (pid, _) in daemon.releases() {
        process::kill_group(pid);
    }
    eventually(Duration::from_secs(5), "v1 gone", || {
        daemon.releases().is_empty()
    });
    daemon.spawn();
    daemon.wait_serving("v1", Duration::from_secs(15));
}

/// Status, history and logs answer in JSON and in text.
#[test]
fn status_history_and_logs_describe_the_live_release() {
    let daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    let status = daemon.status();
    assert_eq!(status["live_slot"], "blue");
    assert_eq!(status["health"], "healthy");
    let text = daemon.ok(&["status"]);
    assert!(
        text.contains("web") && text.contains("v1") && text.contains("blue"),
        "{text}"
    );
    let logs = daemon.ok(&["logs", "web"]);
    assert!(logs.contains("listening on 127.0.0.1"), "{logs}");
    let history_text = daemon.ok(&["history", "web"]);
    assert!(history_text.contains("succeeded"), "{history_text}");
}

/// Invariant 8 for the API: bad versions are refused and change nothing.
#[test]
fn bad_version_is_refused_with_exit_2_and_changes_nothing() {
    let daemon = Daemon::start(AppOptions::default());
    let output = daemon.cli(&["deploy", "web", "--version", "$(touch pwned)"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not valid"));
    assert!(daemon.history().is_empty());
    let unknown = daemon.cli(&["deploy", "nope", "--version", "v1"]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "an unknown app is a usage error"
    );
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no app named `nope`"));
}

/// `status` tells the truth during a drain in both formats: v2 is live and
/// healthy, v1 is shown draining with its request in flight.
#[test]
fn status_during_a_drain_shows_the_new_live_release_and_the_draining_one() {
    let daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    let port = daemon.proxy_port;
    let slow = std::thread::spawn(move || http::get(port, "/slow?ms=8000"));
    std::thread::sleep(Duration::from_millis(100));
    let deploy = deploy_in_background(&daemon, "v2");
    eventually(
        Duration::from_secs(10),
        "the deployment draining v1",
        || daemon.status()["current_deployment"]["state"] == "draining",
    );
    let status = daemon.status();
    assert_eq!(status["live_slot"], "green", "{status}");
    assert_eq!(status["live_version"], "v2", "{status}");
    assert_eq!(status["health"], "healthy", "{status}");
    assert_eq!(status["draining"]["slot"], "blue", "{status}");
    assert_eq!(status["draining"]["version"], "v1", "{status}");
    assert_eq!(status["draining"]["in_flight"], 1, "{status}");
    let table = daemon.ok(&["status"]);
    let row = table.lines().find(|l| l.starts_with("web")).unwrap_or("");
    assert!(
        row.contains("green") && row.contains("v2") && row.contains("+1 on blue v1, draining"),
        "{table}"
    );
    let deployed = deploy.join().unwrap();
    assert!(deployed.status.success(), "{deployed:?}");
    assert_eq!(slow.join().unwrap().status, 200);
    assert!(daemon.status()["draining"].is_null());
}

/// `cutover deploy web --version <version>` run on another thread.
fn deploy_in_background(
    daemon: &Daemon,
    version: &str,
) -> std::thread::JoinHandle<std::process::Output> {
    let config = daemon.config.clone();
    let version = version.to_string();
    std::thread::spawn(move || {
        std::process::Command::new(cutover_test_support::binaries::cutover())
            .args(["deploy", "web", "--version", &version, "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
}

/// The live-health monitor follows the live slot: while the old release
/// stops after a switch (here for seconds: its drain timed out and it
/// finishes a long request before exiting), it refuses connections, which
/// is not the app's health — no `unhealthy` event, counter or status.
#[test]
fn a_switch_reports_no_unhealthy_transition_while_the_old_release_stops() {
    let daemon = Daemon::start(AppOptions {
        drain_timeout: "1s",
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    let mut events = daemon.admin_stream("/v1/apps/web/events");
    let port = daemon.proxy_port;
    let slow = std::thread::spawn(move || http::get(port, "/slow?ms=8000"));
    std::thread::sleep(Duration::from_millis(100));
    let deployed = daemon.deploy("v2");
    assert!(deployed.contains("succeeded"), "{deployed}");
    let _ = slow.join();

    let seen = common::read_until(&mut events, "event: unhealthy", Duration::from_secs(2));
    assert!(!seen.contains("event: unhealthy"), "{seen}");
    assert_eq!(daemon.status()["health"], "healthy");
    let samples = common::proxy::scrape(&daemon);
    let unhealthy = common::proxy::sample(
        &samples,
        "cutover_health_transitions_total",
        &[("app", "web"), ("to", "unhealthy")],
    );
    assert_eq!(unhealthy.unwrap_or(0.0), 0.0);
}
