//! Secrets never show, and text from outside is shown escaped.
//!
//! One run uses every secret key the process driver's apps can have — the
//! webhook secret (`github_secret_file`) and a build secret
//! (`secret_env_files`) that the build prints — through a successful build,
//! a failing one, a wrongly signed webhook and a refused CLI request; then
//! every output is searched for them: the daemon's log, every deployment's
//! events, `status --json`, `history` in both formats, the CLI's errors,
//! release and build logs, the metrics and the webhook's answers.
//!
//! A git ref carrying a bidi override (U+202E) is deployed from a webhook:
//! the daemon's log, `history` (text) and `--json` output never carry the
//! raw character, but its escape.

#![allow(clippy::unwrap_used)]

mod common;

use common::git::{daemon_for, Repo, BUILD_TOKEN, WEBHOOK_SECRET};
use common::proxy::admin_get_text;
use common::Daemon;
use cutover_test_support::wait::eventually;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const TAGS: &str = r#"{ tags = ["*cicd*"] }"#;

/// The deployment made for webhook delivery `delivery`, once it ended.
fn ended(daemon: &Daemon, delivery: &str) -> Value {
    let mut found = Value::Null;
    eventually(Duration::from_secs(60), "the deployment ended", || {
        found = daemon
            .history()
            .into_iter()
            .find(|d| d["source"]["delivery"] == delivery)
            .unwrap_or(Value::Null);
        matches!(
            found["state"].as_str(),
            Some("succeeded" | "failed" | "aborted" | "rolled_back")
        )
    });
    found
}

fn text_under(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.push_str(&text_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            all.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    all
}

fn all_events(daemon: &Daemon) -> String {
    daemon
        .history()
        .iter()
        .map(|d| daemon.event_messages(d["id"].as_i64().unwrap()).join("\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_secret_shows_in_logs_events_status_history_errors_or_answers() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, TAGS);
    let mut outputs = Vec::new();

    // A build that succeeds (it prints the build secret).
    let c1 = repo.commit("r1");
    repo.tag("v1-cicd", false);
    outputs.push(hooks.push("d-1", "refs/tags/v1-cicd", &c1, Some(&c1)).body);
    assert_eq!(ended(&daemon, "d-1")["state"], "succeeded");
    // A build that fails after printing it: the reason quotes the log tail.
    std::fs::write(
        repo.work.join("build.sh"),
        "#!/bin/sh\necho \"token: $BUILD_TOKEN\"\necho \"$BUILD_TOKEN\" >&2\nexit 3\n",
    )
    .unwrap();
    let c2 = repo.commit("r2");
    repo.tag("v2-cicd", false);
    outputs.push(hooks.push("d-2", "refs/tags/v2-cicd", &c2, Some(&c2)).body);
    assert_eq!(ended(&daemon, "d-2")["state"], "failed");
    // A webhook signed with another secret, and one with none.
    outputs.push(
        hooks
            .post(
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", "sha256=00"),
                ],
                b"{}",
            )
            .body,
    );
    // CLI errors, in both formats.
    for args in [
        &["deploy", "web", "--ref", "no-such-ref"][..],
        &["deploy", "web", "--ref", "no-such-ref", "--json"],
        &["deploy", "nope", "--version", "v1", "--json"],
        &["status", "--json"],
        &["status"],
        &["history", "web"],
        &["history", "web", "--json"],
        &["logs", "web"],
    ] {
        let output = daemon.cli(args);
        outputs.push(String::from_utf8_lossy(&output.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    outputs.push(admin_get_text(&daemon, "/metrics").1);
    outputs.push(admin_get_text(&daemon, "/v1/apps").1);
    outputs.push(all_events(&daemon));
    outputs.push(daemon.serve_log());
    outputs.push(text_under(&daemon.state_dir().join("logs")));

    let everything = outputs.join("\n");
    assert!(
        everything.contains("token: [redacted]"),
        "the build printed its secret, redacted"
    );
    for secret in [BUILD_TOKEN, WEBHOOK_SECRET] {
        assert!(
            !everything.contains(secret),
            "secret {secret:?} shows in the output"
        );
    }
}

#[test]
fn a_ref_with_a_bidi_override_is_shown_escaped_in_the_log_history_and_json() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, TAGS);
    let tag = "v1\u{202E}dcic-cicd";
    let c1 = repo.commit("r1");
    repo.tag(tag, false);
    let full_ref = format!("refs/tags/{tag}");
    let reply = hooks.push("bidi-1", &full_ref, &c1, Some(&c1));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let deployment = ended(&daemon, "bidi-1");
    // The JSON value is the ref as it is ...
    assert_eq!(deployment["source"]["ref"], full_ref.as_str());

    // ... and no output carries the raw override.
    let history = daemon.ok(&["history", "web"]);
    assert!(history.contains("v1\\u{202e}dcic-cicd"), "{history}");
    let json = daemon.cli(&["history", "web", "--json"]);
    let json_text = String::from_utf8_lossy(&json.stdout);
    assert!(json_text.contains("v1\\u202edcic-cicd"), "{json_text}");
    let log = daemon.serve_log();
    assert!(
        log.contains("\\u{202e}"),
        "the daemon logs the ref escaped:\n{log}"
    );
    for (what, text) in [
        ("history", history.as_str()),
        ("history --json", &*json_text),
        ("the daemon's log", log.as_str()),
    ] {
        assert!(!text.contains('\u{202E}'), "{what} carries U+202E raw");
    }
}
