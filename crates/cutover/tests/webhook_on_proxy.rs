//! The webhook receiver on the proxy's own listener (`[webhook]` without
//! `listen`): a signed push to `http://<proxy>/_cutover/hooks/github`
//! builds and deploys; the prefix never reaches an app (unsigned and
//! malformed hooks are answered by the receiver, not the release); paths
//! that only look alike (`/_cutover/hooksx`) and every other path still go
//! to the app (the test app's own answers: its version, its "not found").

#![allow(clippy::unwrap_used)]

mod common;

use common::git::{Hooks, Repo};
use common::Daemon;
use cutover_test_support::http;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TAGS: &str = r#"{ branches = ["main"], tags = ["*cicd*"] }"#;

/// A daemon building `web` from `repo`, its webhooks on the proxy.
fn daemon_with_hooks_on_the_proxy(repo: &Repo) -> (Daemon, Hooks) {
    let config = repo.config(0, TAGS);
    let own_listener = "listen = \"127.0.0.1:0\"\n";
    assert!(config.contains(own_listener), "{config}");
    let daemon = Daemon::start_with_apps(&config.replacen(own_listener, "", 1));
    let hooks = Hooks {
        port: daemon.proxy_port,
        repo_url: repo.url(),
    };
    (daemon, hooks)
}

fn succeeded_deployments(daemon: &Daemon) -> usize {
    daemon
        .json(&["history", "web"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "succeeded")
        .count()
}

#[test]
fn a_signed_push_to_the_proxy_deploys_and_the_prefix_never_reaches_the_app() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_with_hooks_on_the_proxy(&repo);
    assert!(
        daemon
            .serve_log()
            .contains("webhooks on the proxy under /_cutover/hooks/"),
        "{}",
        daemon.serve_log()
    );

    let c1 = repo.commit("r1");
    repo.tag("v1-cicd", false);
    let accepted = hooks.push("proxy-delivery-1", "refs/tags/v1-cicd", &c1, Some(&c1));
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.json()["status"], "accepted", "{}", accepted.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    while succeeded_deployments(&daemon) == 0 {
        assert!(
            Instant::now() < deadline,
            "never deployed:\n{}",
            daemon.serve_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.wait_serving("r1", Duration::from_secs(10));

    // The receiver answers everything under the prefix, signed or not; the
    // release never sees any of it.
    let proxy = SocketAddr::from(([127, 0, 0, 1], daemon.proxy_port));
    let unsigned = http::post(
        proxy,
        "/_cutover/hooks/github",
        &[("X-GitHub-Event", "push")],
        b"{}",
    );
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    assert!(unsigned.json()["error"].is_string(), "{}", unsigned.body);
    for path in [
        "/_cutover/hooks",
        "/_cutover/hooks/",
        "/_cutover/hooks/nope",
        "/_cutover/hooks/github?x=1",
    ] {
        let answer = daemon.get(path);
        assert!(
            [404, 405].contains(&answer.status),
            "{path}: {} {}",
            answer.status,
            answer.text()
        );
        assert!(
            !answer.text().contains("version="),
            "{path} reached the app: {}",
            answer.text()
        );
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{path}"
        );
    }

    // Everything else is the app's, including paths that only look alike:
    // the test app answers `/` with its version and other paths with its
    // own plain-text "not found".
    assert_eq!(daemon.get("/").text().trim(), "version=r1");
    for path in [
        "/_cutover/hooksx",
        "/_cutover/hook",
        "/_cutover",
        "/hooks/github",
    ] {
        let answer = daemon.get(path);
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (404, "not found\n"),
            "{path}"
        );
    }
    assert_eq!(succeeded_deployments(&daemon), 1);
}
