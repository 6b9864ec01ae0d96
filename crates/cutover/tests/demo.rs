//! `scripts/demo` runs again and again, and stops only what it started: a
//! `cutover-testapp` that is not the demo's (another checkout's, a
//! developer's) runs before it and is still alive after two runs.

#![allow(clippy::unwrap_used)]

mod common;

use cutover_test_support::binaries;
use cutover_test_support::ports::free_port;
use cutover_test_support::process::{alive, stop_child};
use cutover_test_support::wait::eventually;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn checkout() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_demo_runs_twice_in_a_row_and_leaves_a_foreign_testapp_alive() {
    let foreign_port = free_port();
    let mut foreign = Command::new(binaries::testapp())
        .args(["--port", &foreign_port.to_string(), "--version", "foreign"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the foreign testapp", || {
        cutover_test_support::http::try_get(foreign_port, "/health").is_ok()
    });
    let bin_dir = binaries::cutover().parent().unwrap().to_path_buf();
    let ports = format!("{} {} {}", free_port(), free_port(), free_port());
    let state_dir = checkout().join("examples/.cutover");
    for run in 1..=2 {
        let output = Command::new(checkout().join("scripts/demo"))
            .env("CUTOVER_DEMO_BIN_DIR", &bin_dir)
            .env("CUTOVER_DEMO_PORTS", &ports)
            .output()
            .unwrap();
        let said = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "demo run {run} failed:\n{said}");
        assert!(said.contains("web v2 is live"), "run {run}:\n{said}");
        assert!(
            said.contains("client during the switch:"),
            "run {run}:\n{said}"
        );
        assert!(
            alive(foreign.id()),
            "demo run {run} stopped a testapp it did not start"
        );
        // Nothing of the demo's own is left running.
        let left = common::releases_of_instance(&state_dir.canonicalize().unwrap());
        assert!(left.is_empty(), "run {run} left releases running: {left:?}");
    }
    stop_child(&mut foreign, Duration::from_secs(5));
}
