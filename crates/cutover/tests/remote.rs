//! Remote operation end to end: a real daemon with `[admin] listen` (TLS
//! with a test CA, or plain HTTP on loopback), and the real CLI started in
//! a directory with no configuration, driving it only through `--admin`,
//! `--admin-ca` and `CUTOVER_TOKEN`: deploy with live steps, status,
//! history, rollback, promote/abort answers, logs (also `--follow`), a
//! failed deployment's exit status, read-only and wrong tokens.

#![allow(clippy::unwrap_used)]

mod common;

use common::proxy::daemon_with_proxy;
use common::{AppOptions, Daemon};
use cutover_test_support::binaries;
use cutover_test_support::ports::free_port;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "remote-e2e-token-0123456789abcdef";
const READ_TOKEN: &str = "remote-e2e-reader-0123456789abcdef";

/// A daemon with the admin API on TCP, and how to reach it from afar.
struct RemoteDaemon {
    daemon: Daemon,
    url: String,
    ca: Option<PathBuf>,
    /// A directory without any cutover.toml, where the CLI runs.
    elsewhere: tempfile::TempDir,
}

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `tls`: serve HTTPS with a certificate for `localhost` from a test CA.
fn start(tls: bool) -> RemoteDaemon {
    let keys = tempfile::tempdir().unwrap();
    private(&keys.path().join("tokens"), &format!("{TOKEN}\n"));
    private(&keys.path().join("read-tokens"), &format!("{READ_TOKEN}\n"));
    let port = free_port();
    let mut admin = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\nread_tokens_file = \"{}\"\n",
        keys.path().join("tokens").display(),
        keys.path().join("read-tokens").display()
    );
    let mut ca_file = None;
    if tls {
        let ca = cutover_test_support::tls::Ca::new();
        let (cert, key) = ca.leaf(&["localhost"]).write(keys.path(), "admin");
        admin.push_str(&format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        ));
        let ca_path = keys.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        ca_file = Some(ca_path);
    }
    let daemon = daemon_with_proxy(AppOptions::default(), "", &admin);
    let scheme = if tls { "https" } else { "http" };
    let host = if tls { "localhost" } else { "127.0.0.1" };
    let elsewhere = tempfile::tempdir().unwrap();
    // The keys live as long as the test: keep the directory.
    std::mem::forget(keys);
    RemoteDaemon {
        daemon,
        url: format!("{scheme}://{host}:{port}"),
        ca: ca_file,
        elsewhere,
    }
}

impl RemoteDaemon {
    /// The CLI on "another machine": no config, only `--admin` and the token.
    fn command(&self, token: &str, args: &[&str]) -> Command {
        let mut command = Command::new(binaries::cutover());
        command
            .args(args)
            .arg("--admin")
            .arg(&self.url)
            .current_dir(self.elsewhere.path())
            .env("CUTOVER_TOKEN", token)
            .env_remove("CUTOVER_ADMIN")
            .env_remove("CUTOVER_CA_FILE")
            .stdin(Stdio::null());
        if let Some(ca) = &self.ca {
            command.arg("--admin-ca").arg(ca);
        }
        command
    }

    fn run(&self, token: &str, args: &[&str]) -> Output {
        self.command(token, args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(TOKEN, args);
        assert!(
            output.status.success(),
            "`cutover {}` failed:\n{}\n{}\nserve log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.daemon.serve_log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn live_version(&self) -> String {
        let status: serde_json::Value =
            serde_json::from_str(&self.ok(&["status", "web", "--json"])).unwrap();
        status["live_version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_cli_on_another_machine_drives_the_daemon_over_tls_with_admin_and_cutover_token() {
    let remote = start(true);
    let deployed = remote.ok(&["deploy", "web", "--version", "v1"]);
    assert!(
        deployed.contains("healthy") || deployed.contains("succeeded"),
        "{deployed}"
    );
    assert_eq!(remote.live_version(), "v1");
    let steps = remote.ok(&["deploy", "web", "--version", "v2"]);
    // Live progress: the steps of the deployment, then its outcome.
    for step in ["starting", "switching", "succeeded"] {
        assert!(steps.contains(step), "no `{step}` in:\n{steps}");
    }
    remote.daemon.wait_serving("v2", Duration::from_secs(10));
    let table = remote.ok(&["status"]);
    assert!(table.contains("web") && table.contains("v2"), "{table}");
    let history: serde_json::Value =
        serde_json::from_str(&remote.ok(&["history", "web", "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    remote.ok(&["rollback", "web"]);
    assert_eq!(remote.live_version(), "v1");
    remote.daemon.wait_serving("v1", Duration::from_secs(10));
    let logs = remote.ok(&["logs", "web", "--tail", "20"]);
    assert!(logs.contains("listening on"), "{logs}");

    // Promote and abort reach the daemon (nothing waits for promotion).
    for action in ["promote", "abort"] {
        let output = remote.run(TOKEN, &[action, "web"]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{action}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("has no deployment in progress"),
            "{action}: {}",
            stderr(&output)
        );
    }

    // A deployment that fails fails the command.
    remote.daemon.behave("v3", "--exit-at-start 7");
    let failed = remote.run(TOKEN, &["deploy", "web", "--version", "v3"]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert_eq!(remote.live_version(), "v1");
}

#[test]
fn logs_follow_streams_over_tls_until_interrupted() {
    let remote = start(true);
    remote.ok(&["deploy", "web", "--version", "v1"]);
    let mut follow = remote
        .command(TOKEN, &["logs", "web", "--follow", "--tail", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("cutover-testapp"), "{first}");
    // Still following: the process has not ended by itself.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs --follow ended on its own"
    );
    cutover_test_support::process::signal(follow.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = follow.wait();
}

#[test]
fn read_only_and_wrong_tokens_are_refused_and_logged_without_the_token() {
    let remote = start(false);
    let status = remote.run(READ_TOKEN, &["status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let deploy = remote.run(READ_TOKEN, &["deploy", "web", "--version", "v1"]);
    assert_eq!(deploy.status.code(), Some(1), "{}", stderr(&deploy));
    assert!(
        stderr(&deploy).contains("read-only token"),
        "{}",
        stderr(&deploy)
    );
    let wrong = remote.run("not-the-token-0123456789", &["status"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("token is not valid"),
        "{}",
        stderr(&wrong)
    );
    let missing = remote.run("", &["status"]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("CUTOVER_TOKEN"),
        "{}",
        stderr(&missing)
    );
    assert!(remote.daemon.history().is_empty());

    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = remote.daemon.serve_log();
        if log.contains("token is not valid") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains("admin API request refused"), "{log}");
    assert!(log.contains("read-only token may not POST"), "{log}");
    for secret in [TOKEN, READ_TOKEN, "not-the-token-0123456789"] {
        assert!(!log.contains(secret), "the log shows a token:\n{log}");
    }
}

/// The README's CI recipes, as their shells run them: the exact command
/// line, with `cutover` on PATH and each CI's variables in the
/// environment. A deployment that succeeds passes the job; one that fails
/// fails it.
#[test]
fn the_readme_ci_recipes_deploy_the_commit_and_fail_the_job_when_the_deployment_fails() {
    let remote = start(true);
    let bin = binaries::cutover().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let recipes = [
        (
            "GitHub Actions",
            r#"cutover deploy web --version "$GITHUB_SHA""#,
            "GITHUB_SHA",
        ),
        (
            "Jenkins",
            r#"cutover deploy web --version "$GIT_COMMIT""#,
            "GIT_COMMIT",
        ),
        (
            "GitLab CI",
            r#"cutover deploy web --version "$CI_COMMIT_SHA""#,
            "CI_COMMIT_SHA",
        ),
    ];
    let job = |script: &str, variable: &str, sha: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(remote.elsewhere.path())
            .env("PATH", &path)
            .env("CUTOVER_ADMIN", &remote.url)
            .env("CUTOVER_TOKEN", TOKEN)
            .env("CUTOVER_CA_FILE", remote.ca.as_ref().unwrap())
            .env(variable, sha)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for (index, (ci, script, variable)) in recipes.iter().enumerate() {
        let sha = format!("{index}{}", "a1b2c3d4e5".repeat(4).get(..39).unwrap());
        let passed = job(script, variable, &sha);
        assert!(passed.status.success(), "{ci}: {}", stderr(&passed));
        assert_eq!(remote.live_version(), sha, "{ci}");
    }
    let broken = "ffffffffffffffffffffffffffffffffffffffff";
    remote.daemon.behave(broken, "--exit-at-start 3");
    for (ci, script, variable) in recipes {
        let failed = job(script, variable, broken);
        assert_eq!(failed.status.code(), Some(1), "{ci}: {}", stderr(&failed));
        assert!(
            stderr(&failed).contains("failed"),
            "{ci}: {}",
            stderr(&failed)
        );
    }
}

/// `cutover upgrade` asked over TCP: the new process takes over the admin
/// listener too (same port, same certificate and tokens), so the remote
/// CLI goes on working without noticing.
#[test]
fn an_upgrade_asked_remotely_hands_the_admin_listener_over() {
    let mut remote = start(true);
    remote.ok(&["deploy", "web", "--version", "v1"]);
    let report: serde_json::Value =
        serde_json::from_str(&remote.ok(&["upgrade", "--json"])).unwrap();
    let pid = u32::try_from(report["pid"].as_u64().unwrap()).unwrap();
    remote.daemon.upgraded.push(pid);
    assert_ne!(Some(pid), remote.daemon.first_pid(), "{report}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while remote
        .daemon
        .first_pid()
        .is_some_and(|old| remote.daemon.is_serve_process(old))
    {
        assert!(Instant::now() < deadline, "the old process never exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(remote.live_version(), "v1");
    remote.ok(&["deploy", "web", "--version", "v2"]);
    assert_eq!(remote.live_version(), "v2");
}
