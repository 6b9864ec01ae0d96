//! Graceful shutdown of `cutover serve` with a deployment in progress:
//! SIGTERM brings it to a safe point within the engine's bound — halted and
//! cleaned up before its commit, finished after it — instead of leaving it
//! for the next start's recovery.

#![allow(clippy::unwrap_used)]

mod common;

use common::{AppOptions, Daemon};
use cutover_test_support::http;
use cutover_test_support::wait::eventually;
use std::time::{Duration, Instant};

/// The bound for these apps (drain 1s, stop 5s, no hooks): the engine's
/// floor of 10s; the proxy's own grace (5s here) runs alongside.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

fn pid_of(daemon: &Daemon, version: &str) -> Option<u32> {
    daemon
        .releases()
        .into_iter()
        .find(|(_, v)| v == version)
        .map(|(pid, _)| pid)
}

/// SIGTERM while v2 waits for its health check: the daemon exits within
/// the bound, v2 is recorded as aborted by the shutdown (not failed by a
/// later recovery) and its process is gone, v1 keeps running untouched and
/// serves again after the restart.
#[test]
fn sigterm_during_health_check_wait_aborts_the_deployment_and_keeps_the_live_release() {
    let mut daemon = Daemon::start(AppOptions {
        drain_timeout: "1s",
        deploy_timeout: "60s",
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    let v1 = pid_of(&daemon, "v1").unwrap();
    daemon.behave("v2", "--start-delay 60000");
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    eventually(Duration::from_secs(10), "deployment in checking", || {
        daemon.status()["current_deployment"]["state"] == "checking"
    });
    assert_eq!(daemon.release_versions(), ["v1", "v2"]);

    let began = Instant::now();
    daemon.terminate();
    let took = began.elapsed();
    assert!(
        took <= SHUTDOWN_BOUND,
        "cutover serve took {took:?} to exit (bound {SHUTDOWN_BOUND:?}):\n{}",
        daemon.serve_log()
    );
    assert_eq!(
        daemon.releases(),
        [(v1, "v1".to_string())],
        "v2 is stopped by the shutdown itself; v1 runs on while cutover is down"
    );

    daemon.spawn();
    daemon.wait_serving("v1", Duration::from_secs(10));
    assert_eq!(
        pid_of(&daemon, "v1"),
        Some(v1),
        "v1 was adopted, not restarted"
    );
    let last = &daemon.history()[0];
    assert_eq!(last["version"], "v2");
    assert_eq!(last["state"], "aborted", "{last}");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.contains("interrupted by shutdown"), "{reason}");
    assert_eq!(daemon.status()["live_version"], "v1");
}

/// SIGTERM while the old release drains: the deployment is committed, so
/// the daemon lets it finish (drain, stop v1, succeeded) before exiting.
#[test]
fn sigterm_while_draining_lets_the_committed_deployment_finish() {
    let mut daemon = Daemon::start(AppOptions {
        drain_timeout: "5s",
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    let port = daemon.proxy_port;
    let slow = std::thread::spawn(move || http::try_get(port, "/slow?ms=1500"));
    std::thread::sleep(Duration::from_millis(200));
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    eventually(Duration::from_secs(10), "deployment draining", || {
        daemon.status()["current_deployment"]["state"] == "draining"
    });

    let began = Instant::now();
    daemon.terminate();
    let took = began.elapsed();
    assert!(
        took <= SHUTDOWN_BOUND,
        "cutover serve took {took:?} to exit:\n{}",
        daemon.serve_log()
    );
    let answer = slow.join().unwrap().unwrap();
    assert_eq!(answer.status, 200, "the request in flight on v1 finished");
    assert_eq!(
        daemon.release_versions(),
        ["v2"],
        "v1 was stopped after its drain"
    );

    daemon.spawn();
    daemon.wait_serving("v2", Duration::from_secs(10));
    let all = daemon.history();
    assert_eq!(all[0]["version"], "v2");
    assert_eq!(all[0]["state"], "succeeded", "{:?}", all[0]);
}
