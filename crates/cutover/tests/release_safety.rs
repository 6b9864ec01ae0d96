//! Release safety end to end (issue 7): preview, manual promotion and its
//! timers, verification with automatic rollback, gradual shifting with
//! sticky clients, lifecycle hooks, the keep_old instant rollback, and
//! continuous health of the live release. Real processes, real sockets.

#![allow(clippy::unwrap_used)]

mod common;

use common::{AppOptions, Daemon};
use cutover_test_support::http::Connection;
use cutover_test_support::load::{ClientOptions, Load};
use cutover_test_support::wait::eventually;
use std::time::Duration;

const MAX_REQUESTS: usize = 20_000;
const MAX_TIME: Duration = Duration::from_secs(60);

fn daemon_with(extra: &str) -> Daemon {
    Daemon::start(AppOptions {
        extra: extra.to_string(),
        ..AppOptions::default()
    })
}

fn current_deployment(daemon: &Daemon) -> serde_json::Value {
    daemon.status()["current_deployment"].clone()
}

fn wait_state(daemon: &Daemon, state: &str) -> i64 {
    let mut id = 0;
    eventually(
        Duration::from_secs(20),
        &format!("a deployment in state {state}"),
        || {
            let current = current_deployment(daemon);
            id = current["id"].as_i64().unwrap_or(0);
            current["state"] == state
        },
    );
    id
}

fn last_deployment(daemon: &Daemon) -> serde_json::Value {
    daemon.json(&["history", "web", "--limit", "1"])[0].clone()
}

fn deploy_manual(daemon: &Daemon, version: &str) {
    daemon.ok(&["deploy", "web", "--version", version, "--no-wait"]);
    wait_state(daemon, "awaiting_promotion");
    daemon.ok(&["promote", "web"]);
    eventually(Duration::from_secs(20), "promoted release live", || {
        daemon.status()["live_version"] == version
    });
}

/// Preview: while v2 awaits promotion, requests with the preview header
/// reach v2 (and only v2), the others v1; promotion moves everyone to v2.
#[test]
fn preview_header_reaches_the_new_release_before_promotion_and_promote_switches_all() {
    let daemon = daemon_with("promotion = \"manual\"");
    deploy_manual(&daemon, "v1");
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    wait_state(&daemon, "awaiting_promotion");

    let with_header = ClientOptions {
        header: Some(("X-Cutover-Preview".into(), "1".into())),
        ..ClientOptions::default()
    };
    let previewing = Load::start_with(daemon.proxy_port, 4, 300, MAX_TIME, with_header);
    let regular = Load::start(daemon.proxy_port, 4, 300, MAX_TIME);
    std::thread::sleep(Duration::from_millis(800));
    let (previewing, regular) = (previewing.stop(), regular.stop());
    assert_eq!(previewing.failures(), Vec::<&str>::new());
    assert_eq!(regular.failures(), Vec::<&str>::new());
    assert!(previewing.requests() > 50 && regular.requests() > 50);
    assert!(
        previewing
            .clients
            .iter()
            .all(|c| c.versions.iter().all(|v| v == "v2")),
        "preview reached v1"
    );
    assert!(
        regular
            .clients
            .iter()
            .all(|c| c.versions.iter().all(|v| v == "v1")),
        "regular traffic reached v2"
    );
    assert_eq!(daemon.status()["live_version"], "v1");

    let load = Load::start(daemon.proxy_port, 8, MAX_REQUESTS, MAX_TIME);
    daemon.ok(&["promote", "web"]);
    eventually(Duration::from_secs(20), "v2 live", || {
        daemon.status()["live_version"] == "v2"
    });
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    assert_eq!(report.failures(), Vec::<&str>::new());
    report.assert_versions_in_order(&["v1", "v2"]);
    assert_eq!(daemon.get("/").text().trim(), "version=v2");
}

/// `auto_abort_after` expires: the deployment is aborted, v2 is gone, v1 untouched.
#[test]
fn auto_abort_after_expiry_aborts_and_leaves_v1_serving() {
    let daemon = daemon_with("promotion = \"manual\"\nauto_abort_after = \"1s\"");
    deploy_manual(&daemon, "v1");
    let output = daemon.cli(&["deploy", "web", "--version", "v2"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("auto_abort_after"), "{said}");
    assert_eq!(last_deployment(&daemon)["state"], "aborted");
    assert_eq!(daemon.release_versions(), ["v1"]);
    assert_eq!(daemon.get("/").text().trim(), "version=v1");
    let header = [("X-Cutover-Preview", "1")];
    let previewed = Connection::open(daemon.proxy_port)
        .unwrap()
        .get_with("/", &header)
        .unwrap();
    assert_eq!(
        previewed.text().trim(),
        "version=v1",
        "no preview after the abort"
    );
}

/// `cutover abort` while awaiting promotion stops it cleanly.
#[test]
fn abort_while_awaiting_promotion_removes_the_new_release() {
    let daemon = daemon_with("promotion = \"manual\"");
    deploy_manual(&daemon, "v1");
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    wait_state(&daemon, "awaiting_promotion");
    daemon.ok(&["abort", "web"]);
    eventually(Duration::from_secs(10), "aborted", || {
        last_deployment(&daemon)["state"] == "aborted"
    });
    eventually(Duration::from_secs(10), "v2 stopped", || {
        daemon.release_versions() == ["v1"]
    });
}

/// Verification: a v2 that passes health but fails 30% of requests is
/// rolled back; clients saw no failure other than v2's own 500s.
#[test]
fn verification_failure_rolls_back_to_v1_with_the_measured_ratio() {
    let daemon = daemon_with("verify_for = \"5s\"\nverify_max_error_ratio = 0.1");
    daemon.deploy("v1");
    daemon.behave("v2", "--fail-ratio 0.3");
    let load = Load::start(daemon.proxy_port, 8, MAX_REQUESTS, MAX_TIME);
    let output = daemon.cli(&["deploy", "web", "--version", "v2"]);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();

    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{said}");
    let last = last_deployment(&daemon);
    assert_eq!(last["state"], "rolled_back", "{last}");
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("error ratio") && reason.contains('%'),
        "{reason}"
    );
    for failure in report.failures() {
        assert!(
            failure.starts_with("status 500: version=v2 error=injected"),
            "a failure v2 did not answer: {failure}"
        );
    }
    for client in &report.clients {
        assert_eq!(
            client.versions.last().map(String::as_str),
            Some("v1"),
            "traffic did not return to v1"
        );
    }
    assert_eq!(daemon.status()["live_version"], "v1");
    eventually(Duration::from_secs(10), "v2 retired", || {
        daemon.release_versions() == ["v1"]
    });
}

/// A healthy v2 passes verification; the old release is drained only after.
#[test]
fn verification_pass_keeps_v2_and_retires_v1_afterwards() {
    let daemon = daemon_with("verify_for = \"1s\"");
    daemon.deploy("v1");
    let output = daemon.deploy("v2");
    assert!(
        output.contains("verifying") && output.contains("verification passed"),
        "{output}"
    );
    let verify_at = output.find("verification passed").unwrap();
    let drain_at = output.find("drained after").unwrap();
    assert!(
        verify_at < drain_at,
        "the old release drained before verification ended:\n{output}"
    );
    assert_eq!(daemon.release_versions(), ["v2"]);
}

/// Gradual shifting: each step's share of v2 is within ±5 points over
/// 2,000 cookie-less requests, and a client that keeps its cookie never
/// sees both versions within a step.
#[test]
fn gradual_shift_sends_each_steps_share_and_keeps_sticky_clients_on_one_release() {
    let daemon = daemon_with("shift = { steps = [10, 50, 100], every = \"6s\" }");
    daemon.deploy("v1");
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    let id = wait_state(&daemon, "switching");
    for percent in [10, 50] {
        let marker = format!("{percent}% of new clients");
        eventually(Duration::from_secs(20), &marker, || {
            daemon
                .event_messages(id)
                .iter()
                .any(|m| m.contains(&marker))
        });
        let events_before = daemon.event_messages(id).len();
        // 4 clients x 500 requests without cookies: each request is assigned afresh.
        let anonymous = Load::start_with(
            daemon.proxy_port,
            4,
            500,
            MAX_TIME,
            ClientOptions {
                pause: Some(Duration::ZERO),
                ..ClientOptions::default()
            },
        );
        let sticky = Load::start_with(
            daemon.proxy_port,
            4,
            100,
            MAX_TIME,
            ClientOptions {
                keep_cookies: true,
                pause: Some(Duration::from_millis(5)),
                ..ClientOptions::default()
            },
        );
        let (anonymous, sticky) = (anonymous.stop_when_done(), sticky.stop_when_done());
        assert_eq!(
            daemon.event_messages(id).len(),
            events_before,
            "the step changed while measuring; the measurement is void"
        );
        assert_eq!(anonymous.failures(), Vec::<&str>::new());
        let total = anonymous.requests();
        let v2: usize = anonymous
            .clients
            .iter()
            .map(|c| c.versions.iter().filter(|v| *v == "v2").count())
            .sum();
        let share = 100.0 * v2 as f64 / total as f64;
        assert_eq!(total, 2000);
        assert!(
            (share - percent as f64).abs() <= 5.0,
            "step {percent}%: measured {share:.1}% of v2"
        );
        for client in &sticky.clients {
            let first = &client.versions[0];
            assert!(
                client.versions.iter().all(|v| v == first),
                "a sticky client saw both versions: {:?}",
                client.versions
            );
        }
    }
    eventually(Duration::from_secs(30), "v2 fully live", || {
        last_deployment(&daemon)["state"] == "succeeded"
    });
    assert_eq!(daemon.get("/").text().trim(), "version=v2");
}

/// A failing before_switch hook stops the deployment before any switch.
#[test]
fn failing_before_switch_hook_prevents_the_switch() {
    let daemon = daemon_with(
        "hooks = { before_switch = [[\"sh\", \"-c\", \"echo smoke test failed; exit 3\"]] }",
    );
    daemon.ok(&["deploy", "web", "--version", "v1", "--no-wait"]);
    eventually(Duration::from_secs(20), "first deployment finished", || {
        last_deployment(&daemon)["finished_at"].is_i64()
    });
    let last = last_deployment(&daemon);
    assert_eq!(last["state"], "aborted", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{last}"
    );
    assert_eq!(daemon.get("/").status, 503, "nothing may be live");
    let messages = daemon.event_messages(last["id"].as_i64().unwrap());
    assert!(
        messages.iter().any(|m| m.contains("smoke test failed")),
        "hook output missing: {messages:?}"
    );
    assert!(daemon.releases().is_empty());
}

/// after_switch hooks see the deployment's facts in their environment.
#[test]
fn after_switch_hook_sees_the_deployment_facts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let extra = format!(
        "hooks = {{ after_switch = [[\"sh\", \"-c\", \"env | grep ^CUTOVER_ | sort > \\\"$0\\\"\", \"{}\"]] }}",
        out.display()
    );
    let daemon = daemon_with(&extra);
    daemon.deploy("v1");
    daemon.deploy("v2");
    let env = std::fs::read_to_string(&out).unwrap();
    for expected in [
        "CUTOVER_HOOK=after_switch",
        "CUTOVER_APP=web",
        "CUTOVER_VERSION=v2",
        "CUTOVER_SLOT=green",
        "CUTOVER_PREVIOUS_VERSION=v1",
        "CUTOVER_PREVIOUS_SLOT=blue",
        "CUTOVER_TRIGGER=cli",
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "missing {expected} in:\n{env}"
        );
    }
    assert!(env.contains("CUTOVER_URL=http://127.0.0.1:"), "{env}");
}

/// keep_old: the previous release stays running idle; a rollback inside
/// the window starts nothing and fails no request.
#[test]
fn rollback_inside_keep_old_is_a_pure_switch_without_failures() {
    let daemon = daemon_with("keep_old = \"60s\"");
    daemon.deploy("v1");
    daemon.deploy("v2");
    assert_eq!(
        daemon.release_versions(),
        ["v1", "v2"],
        "v1 must stay running idle"
    );
    let v1_pid = daemon
        .releases()
        .into_iter()
        .find(|(_, v)| v == "v1")
        .unwrap()
        .0;

    let load = Load::start(daemon.proxy_port, 8, MAX_REQUESTS, MAX_TIME);
    std::thread::sleep(Duration::from_millis(200));
    let output = daemon.ok(&["rollback", "web"]);
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();

    assert!(output.contains("instant rollback"), "{output}");
    assert!(
        !output.contains("starting"),
        "a rollback inside keep_old starts nothing:\n{output}"
    );
    assert_eq!(report.failures(), Vec::<&str>::new());
    report.assert_versions_in_order(&["v2", "v1"]);
    let v1_now = daemon
        .releases()
        .into_iter()
        .find(|(_, v)| v == "v1")
        .unwrap()
        .0;
    assert_eq!(v1_now, v1_pid, "v1 was restarted instead of reused");
    assert_eq!(daemon.status()["live_version"], "v1");
}

/// keep_old ends: the idle release is stopped.
#[test]
fn idle_release_is_stopped_when_keep_old_ends() {
    let daemon = daemon_with("keep_old = \"1s\"");
    daemon.deploy("v1");
    daemon.deploy("v2");
    eventually(Duration::from_secs(10), "v1 stopped after keep_old", || {
        daemon.release_versions() == ["v2"]
    });
}

/// The live release keeps being checked: status and the app's event
/// stream show when it turns unhealthy.
#[test]
fn status_and_event_stream_show_the_live_release_turning_unhealthy() {
    // Not restarted (supervision has its own tests): it stays unhealthy.
    let daemon = Daemon::start(AppOptions {
        extra: "restart = \"never\"".into(),
        ..AppOptions::default()
    });
    daemon.behave("v1", "--exit-after 2500");
    daemon.deploy("v1");
    let mut events = daemon.admin_stream("/v1/apps/web/events");
    assert_eq!(daemon.status()["health"], "healthy");
    let seen = common::read_until(&mut events, "turned unhealthy", Duration::from_secs(15));
    assert!(
        seen.contains("event: unhealthy") && seen.contains("turned unhealthy"),
        "{seen}"
    );
    assert_eq!(daemon.status()["health"], "unhealthy");
}
