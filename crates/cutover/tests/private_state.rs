//! The daemon's state is private to its user: the state directory and its
//! logs directory 0700; the database, release logs and the access log 0600
//! — created so, and tightened when an older install left them open.

#![allow(clippy::unwrap_used)]

mod common;

use common::proxy::daemon_with_proxy;
use common::{AppOptions, Daemon};
use cutover_test_support::wait::eventually;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn daemon_with_access_log() -> Daemon {
    let daemon = daemon_with_proxy(
        AppOptions::default(),
        "access_log_file = \"access.log\"",
        "",
    );
    daemon.deploy("v1");
    assert_eq!(daemon.get("/").status, 200);
    eventually(Duration::from_secs(5), "the access log written", || {
        daemon.dir.path().join("access.log").exists()
    });
    daemon
}

fn assert_private(daemon: &Daemon) {
    let state = daemon.state_dir();
    assert_eq!(mode(&state), 0o700, "state_dir");
    assert_eq!(mode(&state.join("logs")), 0o700, "the logs directory");
    let database_files: Vec<PathBuf> = files_under(&state)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("cutover.db"))
        .collect();
    assert!(!database_files.is_empty(), "no database under {state:?}");
    let release_logs = files_under(&state.join("logs"));
    assert!(!release_logs.is_empty(), "no release log");
    for file in database_files.iter().chain(&release_logs) {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(&daemon.dir.path().join("access.log")), 0o600);
}

#[test]
fn state_dir_database_release_logs_and_access_log_are_owner_only() {
    let daemon = daemon_with_access_log();
    assert_private(&daemon);
}

#[test]
fn state_left_world_readable_by_an_older_install_is_tightened_at_start() {
    let mut daemon = daemon_with_access_log();
    daemon.terminate();
    let state = daemon.state_dir();
    let open = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(&state, 0o755);
    open(&state.join("logs"), 0o755);
    open(&state.join("cutover.db"), 0o644);
    daemon.spawn();
    daemon.wait_serving("v1", Duration::from_secs(10));
    assert_private(&daemon);
}

/// A build from git leaves nothing readable by others either: its build log,
/// the kept artifact (executable for its owner only), the workspace and
/// the webhook inbox (in the database).
#[test]
fn builds_artifacts_workspaces_and_the_webhook_inbox_are_owner_only() {
    let repo = common::git::Repo::new();
    let (daemon, hooks) = common::git::daemon_for(&repo, r#"{ tags = ["*cicd*"] }"#);
    let commit = repo.commit("r1");
    repo.tag("v1-cicd", false);
    let reply = hooks.push("private-1", "refs/tags/v1-cicd", &commit, Some(&commit));
    assert_eq!(reply.status, 202, "{}", reply.body);
    daemon.wait_serving("r1", Duration::from_secs(60));
    assert_private_tree(&daemon.state_dir());
    let state = daemon.state_dir();
    for dir in ["artifacts", "workspaces"] {
        assert_eq!(mode(&state.join(dir)), 0o700, "{dir}");
    }
    for file in files_under(&state.join("artifacts"))
        .into_iter()
        .chain(files_under(&state.join("logs")))
    {
        assert_eq!(mode(&file) & 0o077, 0, "{}", file.display());
    }
    assert_eq!(mode(&state.join("admin.sock")), 0o600);
}

/// state_dir and the database files are owner-only.
fn assert_private_tree(state: &Path) {
    assert_eq!(mode(state), 0o700, "state_dir");
    for file in files_under(state)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("cutover.db"))
    {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}
