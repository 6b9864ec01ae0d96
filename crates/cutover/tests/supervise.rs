//! Supervision of the live release (`[[app]] restart`): a live release that
//! dies is started again in its slot after a backoff, health-gated, and
//! counted in status, app events and metrics; after `restart_limit`
//! restarts within the window cutover gives up and says so; `restart =
//! "never"` leaves it down; `on_live_failure = "standby"` switches to a
//! healthy `keep_old` standby instead.

#![allow(clippy::unwrap_used)]

mod common;

use common::proxy::{sample, scrape};
use common::{AppOptions, Daemon};
use cutover_test_support::http;
use cutover_test_support::load::Load;
use cutover_test_support::process::signal;
use cutover_test_support::wait::eventually;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

fn daemon_with(keys: &str) -> Daemon {
    Daemon::start(AppOptions {
        extra: keys.to_string(),
        ..AppOptions::default()
    })
}

/// The PID of the one release of `version`.
fn pid_of(daemon: &Daemon, version: &str) -> u32 {
    let pids: Vec<u32> = daemon
        .releases()
        .into_iter()
        .filter(|(_, v)| v == version)
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(pids.len(), 1, "releases of {version}: {pids:?}");
    pids[0]
}

fn serves(daemon: &Daemon, version: &str) -> bool {
    http::try_get(daemon.proxy_port, "/")
        .is_ok_and(|r| r.status == 200 && r.text().trim() == format!("version={version}"))
}

#[test]
fn a_live_release_killed_under_load_is_restarted_in_place_and_counted() {
    let daemon = daemon_with("restart_backoff = \"300ms\"");
    daemon.deploy("v1");
    let dead = pid_of(&daemon, "v1");
    let mut events = daemon.admin_stream("/v1/apps/web/events");
    let load = Load::start(daemon.proxy_port, 2, usize::MAX, Duration::from_secs(30));
    eventually(Duration::from_secs(5), "load running", || {
        load.answered() > 20
    });

    signal(dead, Signal::SIGKILL);
    let killed = Instant::now();
    eventually(Duration::from_secs(15), "v1 restarted and serving", || {
        daemon.releases().iter().any(|(pid, _)| *pid != dead) && serves(&daemon, "v1")
    });
    let back_after = killed.elapsed();
    let during = load.stop();
    println!(
        "kill -9 of the live release: serving again after {:.2}s ({} requests, {} failed meanwhile)",
        back_after.as_secs_f64(),
        during.requests(),
        during.failures().len()
    );
    // Backoff (0.3 s) + start + health gate; generous bound.
    assert!(back_after < Duration::from_secs(10), "{back_after:?}");

    // Once back, nothing fails.
    let after = Load::start(daemon.proxy_port, 2, 200, Duration::from_secs(10)).stop_when_done();
    assert_eq!(after.failures(), Vec::<&str>::new());

    let status = daemon.status();
    assert_eq!(status["live_slot"], "blue", "same slot: {status}");
    assert_eq!(status["live_version"], "v1");
    assert_eq!(status["health"], "healthy");
    let supervision = &status["supervision"];
    assert_eq!(supervision["restarts"], 1, "{status}");
    assert_eq!(supervision["state"], "watching", "{status}");
    assert!(
        supervision["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("SIGKILL")),
        "{status}"
    );
    let seen = common::read_until(&mut events, "event: restarted", Duration::from_secs(5));
    assert!(seen.contains("event: restarting"), "{seen}");
    assert!(seen.contains("event: restarted"), "{seen}");
    let samples = scrape(&daemon);
    assert_eq!(
        sample(&samples, "cutover_live_restarts_total", &[("app", "web")]),
        Some(1.0)
    );
    // No deployment was made for it.
    assert_eq!(daemon.history().len(), 1);
    let table = daemon.ok(&["status"]);
    assert!(table.contains("RESTARTS"), "{table}");
}

#[test]
fn restarts_stop_after_restart_limit_within_the_window_and_say_so() {
    let daemon = daemon_with("restart_limit = 1\nrestart_backoff = \"100ms\"");
    daemon.deploy("v1");
    let first = pid_of(&daemon, "v1");
    signal(first, Signal::SIGKILL);
    eventually(Duration::from_secs(15), "the first restart", || {
        daemon.status()["supervision"]["restarts"] == 1 && serves(&daemon, "v1")
    });
    let second = pid_of(&daemon, "v1");
    assert_ne!(first, second);
    signal(second, Signal::SIGKILL);
    eventually(Duration::from_secs(10), "supervision giving up", || {
        daemon.status()["supervision"]["state"] == "gave_up"
    });
    // It really stays down: nothing is started again.
    std::thread::sleep(Duration::from_millis(500));
    assert!(daemon.releases().is_empty(), "{:?}", daemon.releases());
    assert_ne!(daemon.get("/").status, 200);
    let samples = scrape(&daemon);
    assert_eq!(
        sample(&samples, "cutover_live_restart_gave_up", &[("app", "web")]),
        Some(1.0)
    );
    assert!(daemon.ok(&["status"]).contains("1 (gave up)"));
    assert!(daemon.serve_log().contains("cutover stops restarting it"));
    // A deployment serves the app again and resets the count.
    daemon.ok(&["deploy", "web", "--version", "v2"]);
    assert_eq!(daemon.status()["supervision"]["state"], "watching");
}

#[test]
fn restart_never_leaves_a_dead_live_release_down() {
    let daemon = daemon_with("restart = \"never\"");
    daemon.deploy("v1");
    signal(pid_of(&daemon, "v1"), Signal::SIGKILL);
    eventually(Duration::from_secs(10), "the release reported down", || {
        daemon.status()["supervision"]["state"] == "down"
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(daemon.releases().is_empty());
    assert_eq!(daemon.status()["supervision"]["restarts"], 0);
}

#[test]
fn on_live_failure_standby_switches_to_the_healthy_keep_old_standby() {
    let daemon = daemon_with("keep_old = \"60s\"\non_live_failure = \"standby\"");
    daemon.deploy("v1");
    daemon.deploy("v2");
    assert_eq!(daemon.release_versions(), ["v1", "v2"]);
    signal(pid_of(&daemon, "v2"), Signal::SIGKILL);
    eventually(Duration::from_secs(15), "the standby v1 serving", || {
        serves(&daemon, "v1")
    });
    let status = daemon.status();
    assert_eq!(status["live_version"], "v1", "{status}");
    assert_eq!(status["live_slot"], "blue", "{status}");
    let newest = &daemon.history()[0];
    assert_eq!(newest["trigger"], "rollback", "{newest}");
    eventually(Duration::from_secs(10), "the switch finished", || {
        daemon.history()[0]["state"] == "succeeded"
    });
    assert_eq!(daemon.release_versions(), ["v1"]);
}
