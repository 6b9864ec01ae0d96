//! Invariant 8 for configuration: `config check` and `serve` reject bad
//! files with exit 2, naming file, line and problem, and start nothing.

#![allow(clippy::unwrap_used)]

mod common;

use cutover_test_support::binaries;
use std::process::Command;

fn run(args: &[&str], config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(binaries::cutover())
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !dir.path().join(".cutover").exists(),
        "a rejected config must not create state"
    );
    (
        output.status.code().unwrap_or(-1),
        text.replace(&format!("{}", path.display()), "cutover.toml"),
    )
}

const GOOD: &str = "[[app]]\nname = \"web\"\n[app.process]\ncommand = [\"app\", \"{port}\"]\n";

#[test]
fn config_check_accepts_a_good_file() {
    let (code, text) = run(&["config", "check"], GOOD);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("web"), "{text}");
}

fn assert_rejected(config: &str, location: &str, problem: &str) {
    for args in [&["config", "check"][..], &["serve"][..]] {
        let (code, text) = run(args, config);
        assert_eq!(code, 2, "`{}` must exit 2:\n{text}", args.join(" "));
        assert!(
            text.contains(&format!("cutover.toml:{location}")),
            "`{}` must name the place {location}:\n{text}",
            args.join(" ")
        );
        assert!(
            text.contains(problem),
            "`{}` must say `{problem}`:\n{text}",
            args.join(" ")
        );
    }
}

#[test]
fn unknown_key_is_rejected_with_file_line_and_problem() {
    assert_rejected(
        &format!("{GOOD}colour = \"blue\"\n"),
        "5:1",
        "unknown field `colour`",
    );
}

#[test]
fn wrong_type_is_rejected_with_file_line_and_problem() {
    assert_rejected(
        &GOOD.replace("name = \"web\"", "name = \"web\"\ndrain_timeout = 30"),
        "3:",
        "duration",
    );
}

#[test]
fn duplicate_app_name_is_rejected_with_file_line_and_problem() {
    let config = format!("{GOOD}[[app]]\nname = \"web\"\nhosts = [\"b.example\"]\n[app.process]\ncommand = [\"b\"]\n");
    assert_rejected(&config, "6:", "duplicate app name `web`");
}

#[test]
fn both_drivers_in_one_app_are_rejected_with_file_line_and_problem() {
    let config = format!("{GOOD}[app.docker]\nimage = \"web:{{version}}\"\n");
    assert_rejected(&config, "", "both [app.process] and [app.docker]");
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let output = Command::new(binaries::cutover())
        .args(["config", "check", "--config", "/nonexistent/cutover.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/cutover.toml"));
}

#[test]
fn a_slot_port_on_the_proxy_port_is_rejected_with_file_line_and_problem() {
    let config = format!(
        "[proxy]\nlisten = [\"127.0.0.1:18090\"]\n{GOOD}ports = {{ blue = 18090, green = 18091 }}\n"
    );
    assert_rejected(
        &config,
        "7:",
        "ports.blue = 18090 is the port of [proxy] listen",
    );
}

#[test]
fn a_webhook_on_the_proxy_port_is_rejected_with_file_line_and_problem() {
    let config = format!(
        "[proxy]\nlisten = [\"127.0.0.1:18092\"]\n{GOOD}[webhook]\nlisten = \"127.0.0.1:18092\"\ngithub_secret_env = \"GH\"\n"
    );
    assert_rejected(
        &config,
        "8:",
        "the webhook receiver needs a port of its own",
    );
}

#[test]
fn a_missing_webhook_secret_file_is_rejected_before_anything_starts() {
    let config =
        format!("{GOOD}[webhook]\nlisten = \"127.0.0.1:0\"\ngithub_secret_file = \"gh.secret\"\n");
    assert_rejected(&config, "7:", "secret file `gh.secret` does not exist");
}

#[test]
fn an_endless_config_file_is_a_bounded_usage_error() {
    let started = std::time::Instant::now();
    let output = Command::new(binaries::cutover())
        .args(["config", "check", "--config", "/dev/zero"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/dev/zero: "), "{stderr}");
    assert!(stderr.contains("larger than 4 MiB"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
