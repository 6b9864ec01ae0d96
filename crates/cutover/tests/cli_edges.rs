//! The command line's rough edges: `serve` announces itself once, `serve
//! --json` logs JSON, `--admin` is refused where no daemon is involved and
//! the global options show only where they mean something, every `<APP>`
//! is described, an unknown app is a usage error (exit 2), and with
//! `--json` errors are JSON too.

#![allow(clippy::unwrap_used)]

mod common;

use common::{AppOptions, Daemon};
use cutover_test_support::binaries;
use cutover_test_support::process::{signal, spawn_logged, wait_exit, wait_ready};
use nix::sys::signal::Signal;
use std::process::{Command, Output};
use std::time::Duration;

fn cutover(args: &[&str]) -> Output {
    Command::new(binaries::cutover())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serve_prints_its_start_line_once() {
    let daemon = Daemon::start(AppOptions::default());
    let log = daemon.serve_log();
    assert_eq!(log.matches("cutover serving").count(), 1, "{log}");
}

#[test]
fn serve_json_writes_json_logs() {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.terminate();
    let log_path = daemon.dir.path().join("serve-json.log");
    let config = daemon.config.display().to_string();
    let mut child = spawn_logged(
        Command::new(binaries::cutover()).args(["serve", "--json", "--config", &config]),
        &log_path,
    )
    .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_ready(
        &mut child,
        "cutover serve --json",
        (Duration::from_secs(20), Duration::from_millis(50)),
        || daemon.cli(&["status", "--json"]).status.success(),
        read_log,
    );
    signal(child.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).is_some());
    let log = read_log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log record ({e}): {line}"));
        assert!(record["level"].is_string(), "{line}");
    }
    assert_eq!(log.matches("cutover serving").count(), 1, "{log}");
}

#[test]
fn an_unknown_app_with_a_daemon_running_is_a_usage_error_in_both_formats() {
    let daemon = Daemon::start(AppOptions::default());
    let text = daemon.cli(&["status", "nope"]);
    assert_eq!(text.status.code(), Some(2), "{}", stderr(&text));
    assert!(stderr(&text).contains("nope"));
    let json = daemon.cli(&["history", "nope", "--json"]);
    assert_eq!(json.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_str(stderr(&json).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(&json)));
    assert!(error["error"].as_str().unwrap().contains("nope"), "{error}");
    assert_eq!(error["exit_code"], 2);
}

#[test]
fn with_json_every_error_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml").display().to_string();
    let socket = dir.path().join("nobody.sock").display().to_string();
    for (args, code) in [
        // A usage error clap finds.
        (vec!["deploy", "--json"], 2),
        // A configuration error.
        (vec!["status", "--json", "--config", &missing], 2),
        // No daemon.
        (vec!["status", "--json", "--admin", &socket], 1),
    ] {
        let output = cutover(&args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        let error: serde_json::Value = serde_json::from_str(stderr(&output).trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", stderr(&output)));
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{error}"
        );
        assert_eq!(error["exit_code"], code);
    }
}

#[test]
fn admin_is_refused_where_no_daemon_is_involved() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock").display().to_string();
    for command in [
        &["serve"][..],
        &["config", "check"],
        &["nginx-config", "web"],
    ] {
        let mut args = command.to_vec();
        args.extend(["--admin", &socket]);
        let output = cutover(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stderr(&output).contains("--admin"), "{}", stderr(&output));
    }
}

#[test]
fn help_shows_global_options_where_they_mean_something_and_describes_app() {
    let help = |args: &[&str]| String::from_utf8_lossy(&cutover(args).stdout).into_owned();
    let serve = help(&["serve", "--help"]);
    assert!(!serve.contains("--admin"), "{serve}");
    assert!(
        serve.contains("--json"),
        "serve --json means JSON logs: {serve}"
    );
    let nginx = help(&["nginx-config", "--help"]);
    assert!(
        !nginx.contains("--admin") && !nginx.contains("--json"),
        "{nginx}"
    );
    let check = help(&["config", "check", "--help"]);
    assert!(
        !check.contains("--admin") && check.contains("--json"),
        "{check}"
    );
    let status = help(&["status", "--help"]);
    assert!(
        status.contains("--admin") && status.contains("--json"),
        "{status}"
    );
    for command in [
        "deploy",
        "history",
        "rollback",
        "abort",
        "promote",
        "logs",
        "nginx-config",
    ] {
        let text = help(&[command, "--help"]);
        let app_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("<APP>"))
            .unwrap_or_else(|| panic!("{command}: no <APP> line:\n{text}"));
        assert!(
            app_line
                .trim_start()
                .trim_start_matches("<APP>")
                .trim()
                .len()
                > 5,
            "{command}: <APP> has no description: {app_line:?}"
        );
    }
}
