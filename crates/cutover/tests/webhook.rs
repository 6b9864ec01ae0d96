//! The git trigger end to end, with real git and real HTTP: a bare
//! repository reached by a `file://` URL, signed webhooks to the daemon's
//! receiver, builds in the daemon's workspace, releases of the artifact
//! behind the proxy under keep-alive load.

#![allow(clippy::unwrap_used)]

mod common;

use common::git::{daemon_for, Repo, BUILD_TOKEN};
use common::Daemon;
use cutover_test_support::load::Load;
use cutover_test_support::wait::eventually;
use serde_json::Value;
use std::time::{Duration, Instant};

const TAGS: &str = r#"{ branches = ["main"], tags = ["*cicd*"] }"#;

fn history(daemon: &Daemon) -> Vec<Value> {
    daemon
        .json(&["history", "web", "--limit", "100"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until nothing runs or waits for `web`.
fn wait_idle(daemon: &Daemon, within: Duration) {
    eventually(within, "web to have no deployment in progress", || {
        let status = daemon.status();
        status["current_deployment"].is_null()
            && status["queued"].as_array().is_none_or(Vec::is_empty)
    });
}

/// Waits for the deployment started by `delivery` to end; returns it.
fn deployment_of(daemon: &Daemon, delivery: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = history(daemon)
            .into_iter()
            .find(|d| d["source"]["delivery"] == delivery)
        {
            if cutover_store::is_terminal_state(found["state"].as_str().unwrap_or("")) {
                return found;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no finished deployment for delivery {delivery}:\n{}",
            daemon.serve_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The seed's rule, safely: a tag containing `cicd` deploys; the build runs
/// in the daemon; the switch drops no request; a branch no rule names
/// deploys nothing; history shows who triggered what.
#[test]
fn a_cicd_tag_push_builds_and_deploys_under_load_and_other_branches_deploy_nothing() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, TAGS);

    let c1 = repo.commit("r1");
    repo.tag("v1-cicd", false);
    let reply = hooks.push("delivery-1", "refs/tags/v1-cicd", &c1, Some(&c1));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let first = deployment_of(&daemon, "delivery-1", Duration::from_secs(60));
    assert_eq!(first["state"], "succeeded", "{first}");
    daemon.wait_serving("r1", Duration::from_secs(5));

    let load = Load::start(daemon.proxy_port, 8, 20_000, Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(300));

    // A push to a branch no rule names: acknowledged, nothing built.
    let c2 = repo.commit("r2");
    repo.push("feature/x");
    let ignored = hooks.push("delivery-2", "refs/heads/feature/x", &c2, Some(&c2));
    assert_eq!(ignored.status, 200, "{}", ignored.body);
    assert!(ignored.body.contains("ignored"), "{}", ignored.body);

    // An annotated tag whose payload names only the tag object: the
    // pipeline resolves it to its commit.
    let tag_object = repo.tag("v2-cicd", true);
    assert_ne!(tag_object, c2);
    let reply = hooks.push("delivery-3", "refs/tags/v2-cicd", &tag_object, None);
    assert_eq!(reply.status, 202, "{}", reply.body);
    let second = deployment_of(&daemon, "delivery-3", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();

    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(report.failures(), Vec::<&str>::new(), "failed requests");
    assert!(
        report.requests() > 100,
        "too little load: {}",
        report.requests()
    );
    report.assert_versions_in_order(&["r1", "r2"]);
    daemon.wait_serving("r2", Duration::from_secs(5));

    // Trigger facts in history, for every deployment.
    let all = history(&daemon);
    assert_eq!(
        all.len(),
        2,
        "the ignored branch push deployed something: {all:?}"
    );
    let source = &second["source"];
    assert_eq!(second["trigger"], "webhook");
    assert_eq!(source["provider"], "github");
    assert_eq!(source["delivery"], "delivery-3");
    assert_eq!(source["ref"], "refs/tags/v2-cicd");
    assert_eq!(
        source["commit"],
        c2.as_str(),
        "the tag object resolved to its commit"
    );
    assert_eq!(source["build"], "built");
    assert_eq!(first["source"]["commit"], c1.as_str());
    let text = daemon.ok(&["history", "web"]);
    assert!(
        text.contains("SOURCE") && text.contains("DELIVERY"),
        "{text}"
    );
    assert!(text.contains("github refs/tags/v2-cicd"), "{text}");
    assert!(text.contains("delivery-3"), "{text}");

    // Build output is in the events, the build secret redacted.
    let id = second["id"].as_i64().unwrap();
    let events = daemon.event_messages(id);
    let all_events = events.join("\n");
    assert!(all_events.contains("| built dist/app.sh"), "{all_events}");
    assert!(all_events.contains("token: [redacted]"), "{all_events}");
    assert!(!all_events.contains(BUILD_TOKEN), "{all_events}");
    let build_log = daemon
        .state_dir()
        .join("logs/web")
        .join(format!("{id}-build.log"));
    let log = std::fs::read_to_string(&build_log).unwrap();
    assert!(
        !log.contains(BUILD_TOKEN) && log.contains("[redacted]"),
        "{log}"
    );

    // The artifact was kept outside the workspace, so the release stays runnable.
    let version = second["version"].as_str().unwrap();
    assert!(version.starts_with("v2-cicd-"), "{version}");
    let artifact = daemon
        .state_dir()
        .join("artifacts/web")
        .join(version)
        .join("app.sh");
    assert!(artifact.exists(), "{} is missing", artifact.display());
    assert_eq!(repo.builds(), 2);
}

/// Invariant 7: ref names from payloads are data. Names with `$(…)`,
/// backticks and `;` (all valid in git) are built without executing
/// anything; names git refuses or that look like options are never used.
#[test]
fn hostile_ref_names_never_execute_and_never_become_options() {
    let marker_dir = std::env::temp_dir().join(format!("cutover-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&marker_dir).unwrap();
    let marker = |n: u32| marker_dir.join(format!("pwned{n}"));
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, r#"{ branches = ["*"] }"#);
    let names = [
        format!("$(touch${{IFS}}{})", marker(1).display()),
        format!("`touch${{IFS}}{}`", marker(2).display()),
        format!("x;touch${{IFS}}{}", marker(3).display()),
        "a|b&c>d".to_string(),
    ];
    for (index, name) in names.iter().enumerate() {
        let commit = repo.commit(&format!("h{index}"));
        repo.push(name);
        let delivery = format!("hostile-{index}");
        let reply = hooks.push(
            &delivery,
            &format!("refs/heads/{name}"),
            &commit,
            Some(&commit),
        );
        assert_eq!(reply.status, 202, "{name}: {}", reply.body);
        let deployment = deployment_of(&daemon, &delivery, Duration::from_secs(60));
        assert_eq!(deployment["state"], "succeeded", "{name}: {deployment}");
        // Kept exactly as data.
        assert_eq!(deployment["source"]["ref"], format!("refs/heads/{name}"));
        let version = deployment["version"].as_str().unwrap();
        assert!(
            version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "{version}"
        );
    }
    // Names that could be read as options, or that git refuses, are
    // refused before any git command runs — by hand and by webhook.
    for bad in ["--upload-pack=touch /tmp/x", "-x", "a b", "x..y"] {
        let output = daemon.cli(&["deploy", "web", &format!("--ref={bad}")]);
        assert!(!output.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not accepted"), "{bad}: {stderr}");
        let commit = repo.rev("HEAD");
        let reply = hooks.push(
            &format!("bad-{bad}").replace(' ', "_"),
            &format!("refs/heads/{bad}"),
            &commit,
            Some(&commit),
        );
        assert_eq!(reply.status, 200, "{bad}: {}", reply.body);
        assert!(reply.body.contains("not accepted"), "{bad}: {}", reply.body);
    }
    for n in 1..=3 {
        assert!(
            !marker(n).exists(),
            "a ref name was executed: {}",
            marker(n).display()
        );
    }
    let workspace = daemon.state_dir().join("workspaces/web");
    for entry in std::fs::read_dir(&workspace).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.contains("pwned"), "{name} in the workspace");
    }
    let _ = std::fs::remove_dir_all(&marker_dir);
}

#[test]
fn a_duplicate_delivery_builds_once() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, TAGS);
    let commit = repo.commit("r1");
    repo.tag("v1-cicd", false);
    let first = hooks.push("same-id", "refs/tags/v1-cicd", &commit, Some(&commit));
    let again = hooks.push("same-id", "refs/tags/v1-cicd", &commit, Some(&commit));
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.body.contains("duplicate"), "{}", again.body);
    deployment_of(&daemon, "same-id", Duration::from_secs(60));
    // A redelivery after the build is still recognised.
    let later = hooks.push("same-id", "refs/tags/v1-cicd", &commit, Some(&commit));
    assert_eq!(later.status, 200, "{}", later.body);
    wait_idle(&daemon, Duration::from_secs(10));
    assert_eq!(history(&daemon).len(), 1);
    assert_eq!(repo.builds(), 1);
}

/// Bursts collapse to the newest commit: ten pushes in quick succession end
/// with the tenth live, after fewer builds than pushes.
#[test]
fn ten_rapid_pushes_deploy_the_newest_with_fewer_builds_than_pushes() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, TAGS);
    let mut last = String::new();
    for n in 1..=10 {
        last = repo.commit(&format!("p{n}"));
        repo.push("main");
        let reply = hooks.push(&format!("push-{n}"), "refs/heads/main", &last, Some(&last));
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let newest = deployment_of(&daemon, "push-10", Duration::from_secs(90));
    assert_eq!(newest["state"], "succeeded", "{newest}");
    assert_eq!(newest["source"]["commit"], last.as_str());
    wait_idle(&daemon, Duration::from_secs(30));
    daemon.wait_serving("p10", Duration::from_secs(5));
    let builds = repo.builds();
    assert!(builds < 10, "{builds} builds for 10 pushes");
    let all = history(&daemon);
    let succeeded = all.iter().filter(|d| d["state"] == "succeeded").count();
    assert!(succeeded < 10, "{all:?}");
    // The others were superseded in the queue or found their ref moved on.
    for d in all.iter().filter(|d| d["state"] != "succeeded") {
        let reason = d["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("superseded") || reason.contains("moved"),
            "{d}"
        );
    }
}

/// A replay of an older commit after a newer one is live changes nothing;
/// `--force` by hand deploys it anyway.
#[test]
fn replaying_an_older_commit_changes_nothing() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, TAGS);
    let old = repo.commit("r1");
    repo.tag("v1-cicd", false);
    let new = repo.commit("r2");
    repo.tag("v2-cicd", false);
    assert_eq!(
        hooks
            .push("new", "refs/tags/v2-cicd", &new, Some(&new))
            .status,
        202
    );
    assert_eq!(
        deployment_of(&daemon, "new", Duration::from_secs(60))["state"],
        "succeeded"
    );
    daemon.wait_serving("r2", Duration::from_secs(5));
    let live = daemon.status()["live_version"].clone();

    assert_eq!(
        hooks
            .push("replay", "refs/tags/v1-cicd", &old, Some(&old))
            .status,
        202
    );
    let replay = deployment_of(&daemon, "replay", Duration::from_secs(60));
    assert_eq!(replay["state"], "aborted", "{replay}");
    let reason = replay["reason"].as_str().unwrap();
    assert!(reason.contains("older than the live commit"), "{reason}");
    assert!(reason.contains("nothing changed"), "{reason}");
    assert_eq!(replay["source"]["build"], "skipped");
    assert_eq!(daemon.status()["live_version"], live);
    daemon.wait_serving("r2", Duration::from_secs(1));
    assert_eq!(repo.builds(), 1, "the older commit was built");

    // The same commit again is no new deployment either.
    let same = hooks.push("same", "refs/tags/v2-cicd", &new, Some(&new));
    assert_eq!(same.status, 202, "{}", same.body);
    std::thread::sleep(Duration::from_millis(500));
    wait_idle(&daemon, Duration::from_secs(10));
    assert_eq!(daemon.status()["live_version"], live);

    let forced = daemon.ok(&["deploy", "web", "--ref", "v1-cicd", "--force"]);
    assert!(forced.contains("succeeded"), "{forced}");
    daemon.wait_serving("r1", Duration::from_secs(5));
}

/// A build that takes as long as the test wants (it waits for a gate
/// file) does not slow the receiver: every webhook meanwhile is answered
/// within a second, and `cutover status` shows the build in progress. The
/// property is the same for a 60-second build: the answer never waits for
/// the build.
#[test]
fn a_long_build_does_not_delay_webhook_answers() {
    let repo = Repo::new();
    let (daemon, hooks) = daemon_for(&repo, TAGS);
    std::fs::write(repo.work.join("WAIT"), "").unwrap();
    let slow = repo.commit("slow");
    repo.tag("slow-cicd", false);
    let reply = hooks.push("slow", "refs/tags/slow-cicd", &slow, Some(&slow));
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(reply.took < Duration::from_secs(1), "{:?}", reply.took);

    eventually(Duration::from_secs(30), "the build to be running", || {
        daemon.status()["current_deployment"]["source"]["build"] == "building"
    });
    let text = daemon.ok(&["status", "web"]);
    assert!(text.contains("building refs/tags/slow-cicd"), "{text}");

    let started = Instant::now();
    for n in 0..10 {
        let reply = hooks.push(
            &format!("during-{n}"),
            "refs/heads/unrelated",
            &slow,
            Some(&slow),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            reply.took < Duration::from_secs(1),
            "answer {n} took {:?}",
            reply.took
        );
    }
    let ping = hooks.post(
        &[("X-GitHub-Event", "ping"), ("X-GitHub-Delivery", "p")],
        b"{}",
    );
    assert_eq!(ping.status, 200);
    assert!(ping.took < Duration::from_secs(1));
    assert_eq!(
        daemon.status()["current_deployment"]["source"]["build"],
        "building"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    std::fs::write(repo.gate(), "").unwrap();
    let done = deployment_of(&daemon, "slow", Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    daemon.wait_serving("slow", Duration::from_secs(5));
}

/// `cutover deploy APP --ref REF` runs the same pipeline by hand (for CI
/// systems that call cutover), following it to the end.
#[test]
fn deploy_by_ref_runs_the_same_pipeline_for_ci() {
    let repo = Repo::new();
    let (daemon, _hooks) = daemon_for(&repo, TAGS);
    let commit = repo.commit("ci1");
    repo.tag("ci1-cicd", true);
    let output = daemon.ok(&["deploy", "web", "--ref", "ci1-cicd"]);
    for step in [
        "preparing",
        "fetching refs/tags/ci1-cicd",
        "step 1/1",
        "built",
        "succeeded",
    ] {
        assert!(output.contains(step), "no `{step}` in:\n{output}");
    }
    daemon.wait_serving("ci1", Duration::from_secs(5));
    let last = &history(&daemon)[0];
    assert_eq!(last["trigger"], "cli");
    assert_eq!(last["source"]["provider"], "cli");
    assert_eq!(last["source"]["ref"], "refs/tags/ci1-cicd");
    assert_eq!(last["source"]["commit"], commit.as_str());

    // Branches by name, and errors that say what is wrong.
    let next = repo.commit("ci2");
    repo.push("main");
    let output = daemon.ok(&["deploy", "web", "--ref", "main"]);
    assert!(output.contains("succeeded"), "{output}");
    assert_eq!(history(&daemon)[0]["source"]["commit"], next.as_str());
    let missing = daemon.cli(&["deploy", "web", "--ref", "no-such-tag"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no branch or tag"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let again = daemon.cli(&["deploy", "web", "--ref", "main"]);
    assert!(
        !again.status.success(),
        "the live commit was deployed again without --force"
    );
}

/// The inbox is persisted: a delivery accepted just before a crash (202
/// sent, not yet dispatched) is built after the restart.
#[test]
fn a_delivery_accepted_before_a_crash_is_built_after_the_restart() {
    let repo = Repo::new();
    let (mut daemon, _hooks) = daemon_for(&repo, TAGS);
    let commit = repo.commit("after-crash");
    repo.tag("v1-cicd", false);
    daemon.kill9();
    {
        let store = cutover_store::Store::open(&daemon.state_dir().join("cutover.db")).unwrap();
        let queued = store
            .insert_delivery(&cutover_store::NewDelivery {
                provider: "github".into(),
                delivery_id: "before-crash".into(),
                event: "push".into(),
                repository: Some("team/web".into()),
                ref_kind: Some("tag".into()),
                ref_name: Some("v1-cicd".into()),
                commit: Some(commit.clone()),
                apps: vec!["web".into()],
                status: "queued".into(),
                reason: None,
            })
            .unwrap();
        assert!(queued.is_some());
    }
    daemon.spawn();
    let built = deployment_of(&daemon, "before-crash", Duration::from_secs(60));
    assert_eq!(built["state"], "succeeded", "{built}");
    daemon.wait_serving("after-crash", Duration::from_secs(5));
}
