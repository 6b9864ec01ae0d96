//! The proxy's access log (nginx `combined` and JSON) and the admin API's
//! `/metrics`, through the real daemon.

#![allow(clippy::unwrap_used)]

mod common;

use common::proxy::{daemon_with_proxy, sample, scrape, serve_pid};
use common::{AppOptions, Daemon};
use cutover_test_support::http::Connection;
use cutover_test_support::process;
use cutover_test_support::wait::eventually;
use std::time::Duration;

fn log_lines(daemon: &Daemon, file: &str) -> Vec<String> {
    std::fs::read_to_string(daemon.dir.path().join(file))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The fields of one `combined` line, parsed as log tools (goaccess,
/// awstats, fail2ban) read it.
#[derive(Debug)]
struct Combined {
    remote: String,
    time: String,
    method: String,
    target: String,
    protocol: String,
    status: u16,
    bytes: u64,
    referer: String,
    user_agent: String,
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status
/// $body_bytes_sent "$http_referer" "$http_user_agent"`
fn parse_combined(line: &str) -> Option<Combined> {
    let (remote, rest) = line.split_once(" - ")?;
    let (_user, rest) = rest.split_once(" [")?;
    let (time, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut request = request.split(' ');
    let (method, target, protocol) = (request.next()?, request.next()?, request.next()?);
    let mut rest = rest.splitn(3, ' ');
    let status = rest.next()?.parse().ok()?;
    let bytes = rest.next()?.parse().ok()?;
    let quoted = rest.next()?;
    let (referer, user_agent) = quoted
        .strip_prefix('"')?
        .strip_suffix('"')?
        .split_once("\" \"")?;
    // dd/Mon/yyyy:HH:MM:SS +zzzz
    let time_ok = time.len() == 26
        && time.as_bytes()[2] == b'/'
        && time.as_bytes()[6] == b'/'
        && time.as_bytes()[11] == b':'
        && (time.as_bytes()[21] == b'+' || time.as_bytes()[21] == b'-');
    time_ok.then(|| Combined {
        remote: remote.to_owned(),
        time: time.to_owned(),
        method: method.to_owned(),
        target: target.to_owned(),
        protocol: protocol.to_owned(),
        status,
        bytes,
        referer: referer.to_owned(),
        user_agent: user_agent.to_owned(),
    })
}

#[test]
fn access_log_lines_parse_as_nginx_combined_format() {
    let daemon = daemon_with_proxy(
        AppOptions::default(),
        "access_log = \"combined\"\naccess_log_file = \"access.log\"",
        "",
    );
    daemon.deploy("v1");
    let mut conn = Connection::open(daemon.proxy_port).unwrap();
    let ok = conn
        .get_with("/?q=1", &[("Referer", "https://example.com/page")])
        .unwrap();
    assert_eq!(ok.status, 200);
    let missing = conn.get("/status?code=503").unwrap();
    assert_eq!(missing.status, 503);

    eventually(Duration::from_secs(10), "two access log lines", || {
        log_lines(&daemon, "access.log").len() >= 2
    });
    let lines = log_lines(&daemon, "access.log");
    let parsed: Vec<Combined> = lines
        .iter()
        .map(|line| parse_combined(line).unwrap_or_else(|| panic!("not combined format: {line:?}")))
        .collect();
    let first = &parsed[0];
    assert_eq!(first.remote, "127.0.0.1");
    assert_eq!(
        (
            first.method.as_str(),
            first.target.as_str(),
            first.protocol.as_str()
        ),
        ("GET", "/?q=1", "HTTP/1.1")
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.bytes, ok.body.len() as u64);
    assert_eq!(first.referer, "https://example.com/page");
    assert_eq!(first.user_agent, "cutover-e2e");
    assert!(first.time.ends_with("+0000"), "{}", first.time);
    let second = &parsed[1];
    assert_eq!(
        (second.target.as_str(), second.status),
        ("/status?code=503", 503)
    );
    assert_eq!(second.referer, "-");
}

#[test]
fn access_log_lines_parse_as_json_with_app_slot_release_and_request_id() {
    let daemon = daemon_with_proxy(
        AppOptions::default(),
        "access_log = \"json\"\naccess_log_file = \"access.json\"",
        "",
    );
    daemon.deploy("v1");
    let mut conn = Connection::open(daemon.proxy_port).unwrap();
    let reply = conn.get_with("/", &[("X-Request-Id", "req-42")]).unwrap();
    assert_eq!(reply.status, 200);
    eventually(Duration::from_secs(10), "an access log line", || {
        !log_lines(&daemon, "access.json").is_empty()
    });
    let line = &log_lines(&daemon, "access.json")[0];
    let entry: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(entry["app"], "web");
    assert_eq!(entry["slot"], "blue");
    assert_eq!(entry["release"], "v1");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["uri"], "/");
    assert_eq!(entry["request_id"], "req-42");
    assert_eq!(entry["bytes"], reply.body.len());
    assert_eq!(entry["remote_addr"], "127.0.0.1");
    assert!(
        entry["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{entry}"
    );
    assert!(
        entry["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{entry}"
    );
}

#[test]
fn access_log_file_is_reopened_on_sighup_after_rotation() {
    let daemon = daemon_with_proxy(
        AppOptions::default(),
        "access_log = \"combined\"\naccess_log_file = \"access.log\"",
        "",
    );
    daemon.deploy("v1");
    daemon.get("/");
    eventually(Duration::from_secs(10), "a line before rotation", || {
        log_lines(&daemon, "access.log").len() == 1
    });
    std::fs::rename(
        daemon.dir.path().join("access.log"),
        daemon.dir.path().join("access.log.1"),
    )
    .unwrap();
    process::signal(serve_pid(&daemon), nix::sys::signal::Signal::SIGHUP);
    // The reopen is asynchronous: keep sending until a line lands in the new file.
    eventually(Duration::from_secs(10), "a line in the new file", || {
        daemon.get("/after-rotation");
        !log_lines(&daemon, "access.log").is_empty()
    });
    assert!(log_lines(&daemon, "access.log.1")[0].contains("\"GET / HTTP/1.1\" 200"));
    assert!(log_lines(&daemon, "access.log")[0].contains("/after-rotation"));
    eventually(Duration::from_secs(5), "the daemon still serves", || {
        daemon.get("/").status == 200
    });
}

#[test]
fn metrics_parse_as_prometheus_text_and_counters_move_with_requests() {
    let daemon = daemon_with_proxy(AppOptions::default(), "access_log = \"off\"", "");
    daemon.deploy("v1");
    let before = scrape(&daemon);
    let ok_before = sample(
        &before,
        "cutover_proxy_requests_total",
        &[("app", "web"), ("slot", "blue"), ("class", "2xx")],
    )
    .unwrap_or(0.0);
    let mut conn = Connection::open(daemon.proxy_port).unwrap();
    for _ in 0..10 {
        assert_eq!(conn.get("/").unwrap().status, 200);
    }
    assert_eq!(conn.get("/status?code=500").unwrap().status, 500);

    let after = scrape(&daemon);
    let labels = [("app", "web"), ("slot", "blue")];
    let ok = sample(
        &after,
        "cutover_proxy_requests_total",
        &[("app", "web"), ("slot", "blue"), ("class", "2xx")],
    );
    assert_eq!(ok, Some(ok_before + 10.0));
    assert_eq!(
        sample(
            &after,
            "cutover_proxy_requests_total",
            &[("app", "web"), ("slot", "blue"), ("class", "5xx")]
        ),
        Some(1.0)
    );
    let count = sample(
        &after,
        "cutover_proxy_request_duration_seconds_count",
        &labels,
    )
    .unwrap();
    assert!(count >= 11.0, "{count}");
    let inf = sample(
        &after,
        "cutover_proxy_request_duration_seconds_bucket",
        &[("app", "web"), ("slot", "blue"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(count));
    assert_eq!(
        sample(&after, "cutover_proxy_in_flight_requests", &labels),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, "cutover_proxy_upgraded_connections", &labels),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &after,
            "cutover_proxy_upstream_connect_errors_total",
            &labels
        ),
        Some(0.0)
    );
    assert!(sample(&after, "cutover_proxy_client_connections", &[]).is_some_and(|n| n >= 1.0));

    // The engine's side.
    assert_eq!(
        sample(
            &after,
            "cutover_deployments_total",
            &[("app", "web"), ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "cutover_deployment_duration_seconds_count",
            &[("app", "web"), ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "cutover_live_slot",
            &[("app", "web"), ("slot", "blue")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "cutover_live_slot",
            &[("app", "web"), ("slot", "green")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &after,
            "cutover_live_release",
            &[("app", "web"), ("slot", "blue"), ("version", "v1")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "cutover_live_health",
            &[("app", "web"), ("state", "healthy")]
        ),
        Some(1.0)
    );

    // After a switch the counters of the new slot move, the old ones stay.
    daemon.deploy("v2");
    let mut conn = Connection::open(daemon.proxy_port).unwrap();
    for _ in 0..3 {
        assert_eq!(conn.get("/").unwrap().status, 200);
    }
    let switched = scrape(&daemon);
    assert_eq!(
        sample(
            &switched,
            "cutover_proxy_requests_total",
            &[("app", "web"), ("slot", "green"), ("class", "2xx")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &switched,
            "cutover_proxy_requests_total",
            &[("app", "web"), ("slot", "blue"), ("class", "2xx")]
        ),
        ok
    );
    assert_eq!(
        sample(
            &switched,
            "cutover_live_slot",
            &[("app", "web"), ("slot", "green")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &switched,
            "cutover_deployments_total",
            &[("app", "web"), ("outcome", "succeeded")]
        ),
        Some(2.0)
    );
}
