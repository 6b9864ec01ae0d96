//! Release groups end to end: two apps on one host (`/` → web, `/api` →
//! api) deployed as the group `shop` by the real daemon, with real test-app
//! releases and keep-alive clients that check each pair of answers.

#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use cutover_test_support::binaries;
use cutover_test_support::http::Connection;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The two apps and the group; `web_extra` / `api_extra` go into each app's
/// table. Per-version behaviour flags come from `<behaviours>/<app>-<v>.args`.
fn shop(behaviours: &std::path::Path, web_extra: &str, api_extra: &str) -> Daemon {
    let app = |name: &str, paths: &str, mount: &str, extra: &str| {
        format!(
            r#"
[[app]]
name = "{name}"
drain_timeout = "5s"
{paths}
{extra}

[app.health]
path = "/health"
deploy_timeout = "6s"
interval = "1s"

[app.process]
command = ["sh", "-c", 'exec "$0" --port "$1" --version "$2" {mount} $(cat "$3/{name}-$2.args" 2>/dev/null)', "{testapp}", "{{port}}", "{{version}}", "{behaviours}"]
stop_timeout = "5s"
"#,
            testapp = binaries::testapp().display(),
            behaviours = behaviours.display(),
        )
    };
    let apps = format!(
        "{}{}\n[[group]]\nname = \"shop\"\napps = [\"web\", \"api\"]\n",
        app("web", "", "", web_extra),
        app("api", "paths = [\"/api\"]", "--mount /api", api_extra),
    );
    Daemon::start_with_apps(&apps)
}

fn behave(behaviours: &std::path::Path, app: &str, version: &str, flags: &str) {
    std::fs::write(behaviours.join(format!("{app}-{version}.args")), flags).unwrap();
}

/// The version behind `path`, or why there is none.
fn version_at(conn: &mut Connection, path: &str) -> Result<String, String> {
    let response = conn.get(path).map_err(|e| format!("{path}: {e}"))?;
    let text = response.text();
    match (response.status, text.trim().strip_prefix("version=")) {
        (200, Some(version)) => Ok(version.to_string()),
        (status, _) => Err(format!("{path}: {status} {}", text.trim())),
    }
}

fn serving(daemon: &Daemon) -> (String, String) {
    let mut conn = Connection::open(daemon.proxy_port).unwrap();
    let web = version_at(&mut conn, "/").unwrap();
    let api = version_at(&mut conn, "/api").unwrap();
    (web, api)
}

/// What one client saw: its (web, api) pairs in order, and its failures.
type ClientRun = (Vec<(String, String)>, Vec<String>);

/// Clients that each ask `/` then `/api` on one keep-alive connection, in
/// a loop bounded by a count and a stop flag; each keeps its pairs.
struct PairClients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ClientRun>>,
}

impl PairClients {
    fn start(port: u16, clients: usize) -> PairClients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut pairs, mut failures) = (Vec::new(), Vec::new());
                    let mut conn = Connection::open(port).unwrap();
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let pair = version_at(&mut conn, "/")
                            .and_then(|web| Ok((web, version_at(&mut conn, "/api")?)));
                        match pair {
                            Ok(pair) => pairs.push(pair),
                            Err(why) => {
                                failures.push(why);
                                conn = Connection::open(port).unwrap();
                            }
                        }
                    }
                    (pairs, failures)
                })
            })
            .collect();
        PairClients { stop, threads }
    }

    fn stop(self) -> Vec<ClientRun> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// Per client: no failure; after its first (`to`, `to`) pair only such
/// pairs; never the new web with the old api. Returns the pairs seen.
fn assert_switched_as_one(results: &[ClientRun], from: &str, to: &str) -> usize {
    let mut total = 0;
    for (pairs, failures) in results {
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        let first = pairs.first().map(|(web, api)| (web.as_str(), api.as_str()));
        assert_eq!(
            first,
            Some((from, from)),
            "the load began before the switch"
        );
        let first_new = pairs
            .iter()
            .position(|(web, api)| web == to && api == to)
            .unwrap_or_else(|| panic!("a client never saw {to} on both: {:?}", pairs.last()));
        let mixed: Vec<_> = pairs[first_new..]
            .iter()
            .filter(|(web, api)| web != to || api != to)
            .collect();
        assert!(
            mixed.is_empty(),
            "mixed pairs after the first all-{to} pair: {mixed:?}"
        );
        let new_web_old_api = pairs
            .iter()
            .filter(|(web, api)| web == to && api == from)
            .count();
        assert_eq!(
            new_web_old_api, 0,
            "a client saw the new web with the old api"
        );
        total += pairs.len();
    }
    total
}

fn group_history(daemon: &Daemon) -> Vec<Value> {
    daemon
        .json(&["history", "shop"])
        .as_array()
        .cloned()
        .unwrap()
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_group_deploy_under_load_switches_both_apps_at_once_and_a_group_rollback_drops_nothing() {
    let behaviours = tempfile::tempdir().unwrap();
    let daemon = shop(behaviours.path(), "", "");
    daemon.ok(&["deploy", "shop", "--version", "v1"]);
    assert_eq!(serving(&daemon), ("v1".into(), "v1".into()));

    let clients = PairClients::start(daemon.proxy_port, 4);
    std::thread::sleep(Duration::from_millis(200));
    daemon.ok(&["deploy", "shop", "--set", "web=v2", "--set", "api=v2"]);
    std::thread::sleep(Duration::from_millis(300));
    let pairs = assert_switched_as_one(&clients.stop(), "v1", "v2");
    eprintln!("{pairs} pairs across the group switch, none failed or mixed");

    let last = &group_history(&daemon)[0];
    assert_eq!(last["state"], "succeeded", "{last}");
    let members = last["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert!(members
        .iter()
        .all(|m| m["state"] == "succeeded" && m["version"] == "v2"));
    let status = daemon.json(&["status"]);
    for app in status.as_array().unwrap() {
        assert_eq!(app["live_version"], "v2", "{app}");
    }

    let clients = PairClients::start(daemon.proxy_port, 4);
    std::thread::sleep(Duration::from_millis(200));
    daemon.ok(&["rollback", "shop"]);
    std::thread::sleep(Duration::from_millis(300));
    let pairs = assert_switched_as_one(&clients.stop(), "v2", "v1");
    eprintln!("{pairs} pairs across the group rollback, none failed or mixed");
    let last = &group_history(&daemon)[0];
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["trigger"], "rollback");
}

#[test]
fn api_never_healthy_fails_the_group_naming_api_and_both_keep_serving_v1() {
    let behaviours = tempfile::tempdir().unwrap();
    behave(behaviours.path(), "api", "v2", "--health-status 503");
    let daemon = shop(behaviours.path(), "", "");
    daemon.ok(&["deploy", "shop", "--version", "v1"]);

    let failed = daemon.cli(&["deploy", "shop", "--version", "v2"]);
    assert!(!failed.status.success());
    let last = &group_history(&daemon)[0];
    assert_eq!(last["state"], "failed", "{last}");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.starts_with("api: "), "{reason}");
    for member in last["members"].as_array().unwrap() {
        assert_eq!(member["state"], "failed", "{member}");
    }
    let web = &last["members"][0];
    assert!(web["reason"].as_str().unwrap().contains("api"), "{web}");
    assert_eq!(serving(&daemon), ("v1".into(), "v1".into()));
    wait_for("web v2 and api v2 to stop", Duration::from_secs(10), || {
        daemon.release_versions() == ["v1", "v1"]
    });
}

#[test]
fn a_failed_verification_of_web_after_the_switch_switches_both_back() {
    let behaviours = tempfile::tempdir().unwrap();
    let verify = r#"verify_for = "1s"
verify_command = ["sh", "-c", 'test "$CUTOVER_VERSION" != v2']"#;
    let daemon = shop(behaviours.path(), verify, "");
    daemon.ok(&["deploy", "shop", "--version", "v1"]);

    let failed = daemon.cli(&["deploy", "shop", "--version", "v2"]);
    assert!(!failed.status.success());
    let last = &group_history(&daemon)[0];
    assert_eq!(last["state"], "rolled_back", "{last}");
    assert!(
        last["reason"].as_str().unwrap().starts_with("web: "),
        "{last}"
    );
    for member in last["members"].as_array().unwrap() {
        assert_eq!(member["state"], "rolled_back", "{member}");
    }
    assert_eq!(serving(&daemon), ("v1".into(), "v1".into()));
    wait_for("both v2 releases to stop", Duration::from_secs(15), || {
        daemon.release_versions() == ["v1", "v1"]
    });
}

#[test]
fn a_single_app_deploy_during_a_group_deployment_waits_for_it_and_never_interleaves() {
    let behaviours = tempfile::tempdir().unwrap();
    behave(behaviours.path(), "api", "v2", "--healthy-after 1500");
    let daemon = shop(behaviours.path(), "", "");
    daemon.ok(&["deploy", "shop", "--version", "v1"]);

    let group = daemon.json(&["deploy", "shop", "--version", "v2", "--no-wait"]);
    let single = daemon.json(&["deploy", "web", "--version", "v3", "--no-wait"]);
    assert_eq!(single["state"], "queued", "{single}");
    let single_id = single["id"].as_i64().unwrap();
    let path = format!("/v1/groups/shop/deployments/{}", group["id"]);
    wait_for("the group deployment", Duration::from_secs(30), || {
        daemon.admin_get(&path)["state"] == "succeeded"
    });
    wait_for("the single deployment", Duration::from_secs(30), || {
        daemon.admin_get(&format!("/v1/deployments/{single_id}"))["state"] == "succeeded"
    });
    let detail = daemon.admin_get(&path);
    let web_member = &detail["members"][0];
    let single = daemon.admin_get(&format!("/v1/deployments/{single_id}"));
    let member_done = web_member["finished_at"].as_i64().unwrap();
    let single_began = single["started_at"].as_i64().unwrap();
    assert!(
        single_began >= member_done,
        "web v3 started before the group's web v2 ended: {single} {web_member}"
    );
    assert_eq!(serving(&daemon), ("v3".into(), "v2".into()));
}

#[test]
fn kill_9_during_a_group_deployment_leaves_every_app_old_or_every_app_new() {
    let behaviours = tempfile::tempdir().unwrap();
    behave(behaviours.path(), "api", "v2", "--healthy-after 3000");
    let verify = r#"verify_for = "4s""#;
    let mut daemon = shop(behaviours.path(), verify, "");
    daemon.ok(&["deploy", "shop", "--version", "v1"]);

    // Before the switch: api v2 is still being checked.
    let group = daemon.json(&["deploy", "shop", "--version", "v2", "--no-wait"]);
    let path = format!("/v1/groups/shop/deployments/{}", group["id"]);
    wait_for("web v2 to start", Duration::from_secs(10), || {
        daemon.release_versions().contains(&"v2".to_string())
    });
    daemon.kill9();
    daemon.spawn();
    let settled = daemon.admin_get(&path);
    assert_eq!(settled["state"], "failed", "{settled}");
    assert_eq!(serving(&daemon), ("v1".into(), "v1".into()));
    wait_for("the v2 releases to stop", Duration::from_secs(15), || {
        daemon.release_versions() == ["v1", "v1"]
    });

    // After the switch: web is being verified.
    let group = daemon.json(&["deploy", "shop", "--version", "v3", "--no-wait"]);
    let path = format!("/v1/groups/shop/deployments/{}", group["id"]);
    wait_for("the group's switch", Duration::from_secs(20), || {
        daemon.admin_get(&path)["state"] == "verifying"
    });
    daemon.kill9();
    daemon.spawn();
    let settled = daemon.admin_get(&path);
    assert_eq!(settled["state"], "succeeded", "{settled}");
    wait_for("v3 on both", Duration::from_secs(20), || {
        serving(&daemon) == ("v3".into(), "v3".into())
    });
    wait_for("the v1 releases to stop", Duration::from_secs(15), || {
        daemon.release_versions() == ["v3", "v3"]
    });
}

#[test]
fn abort_of_a_group_before_its_switch_stops_every_new_release_and_changes_nothing() {
    let behaviours = tempfile::tempdir().unwrap();
    behave(behaviours.path(), "api", "v2", "--healthy-after 5000");
    let daemon = shop(behaviours.path(), "", "");
    daemon.ok(&["deploy", "shop", "--version", "v1"]);
    let status = daemon.ok(&["status", "shop"]);
    assert!(status.contains("group shop: web, api"), "{status}");

    let group = daemon.json(&["deploy", "shop", "--version", "v2", "--no-wait"]);
    wait_for("both v2 releases to start", Duration::from_secs(10), || {
        daemon.release_versions() == ["v1", "v1", "v2", "v2"]
    });
    daemon.ok(&["abort", "shop"]);
    let path = format!("/v1/groups/shop/deployments/{}", group["id"]);
    let ended = daemon.admin_get(&path);
    assert_eq!(ended["state"], "aborted", "{ended}");
    for member in ended["members"].as_array().unwrap() {
        assert_eq!(member["state"], "aborted", "{member}");
    }
    assert_eq!(serving(&daemon), ("v1".into(), "v1".into()));
    wait_for("the v2 releases to stop", Duration::from_secs(10), || {
        daemon.release_versions() == ["v1", "v1"]
    });
}

#[test]
fn a_group_deploy_names_a_missing_version_and_refuses_an_app_outside_the_group() {
    let behaviours = tempfile::tempdir().unwrap();
    let daemon = shop(behaviours.path(), "", "");
    let missing = daemon.cli(&["deploy", "shop", "--set", "web=v1"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no version for `api`"), "{stderr}");
    let stranger = daemon.cli(&["deploy", "shop", "--version", "v1", "--set", "db=v1"]);
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("`db` is not an app of group `shop`")
    );
}

#[test]
fn a_group_of_a_docker_app_and_a_process_app_switches_as_one_under_load() {
    use cutover_test_support::docker::{
        build_image, container_versions, require_docker, unique, Cleanup,
    };
    require_docker();
    let web = unique("grp-web");
    let repository = format!("cutover-test/{web}");
    let daemon = Daemon::start_with_apps(&format!(
        r#"
[[app]]
name = "{web}"
drain_timeout = "5s"

[app.health]
path = "/health"
deploy_timeout = "20s"
interval = "1s"

[app.docker]
image = "{repository}:{{version}}"
port = 8080
stop_timeout = "2s"

[[app]]
name = "api"
paths = ["/api"]
drain_timeout = "5s"

[app.health]
path = "/health"
deploy_timeout = "6s"
interval = "1s"

[app.process]
command = ["{testapp}", "--port", "{{port}}", "--version", "{{version}}", "--mount", "/api"]
stop_timeout = "5s"

[[group]]
name = "shop"
apps = ["{web}", "api"]
"#,
        testapp = binaries::testapp().display(),
    ));
    let cleanup = Cleanup::new(&daemon.state_dir(), &[&repository]);
    let (v1, v2) = (format!("{repository}:v1"), format!("{repository}:v2"));
    build_image(&[&v1, &v2], "Dockerfile", &[]);
    daemon.ok(&["deploy", "shop", "--version", "v1"]);
    assert_eq!(serving(&daemon), ("v1".into(), "v1".into()));

    let clients = PairClients::start(daemon.proxy_port, 4);
    std::thread::sleep(Duration::from_millis(200));
    daemon.ok(&["deploy", "shop", "--version", "v2"]);
    std::thread::sleep(Duration::from_millis(300));
    let pairs = assert_switched_as_one(&clients.stop(), "v1", "v2");
    eprintln!("{pairs} pairs across the group switch (docker + process), none failed or mixed");
    wait_for("the v1 container to go", Duration::from_secs(15), || {
        container_versions(&cleanup.instance) == ["v2"]
    });
    // The daemon stops before its containers and images are removed.
    drop(daemon);
    drop(cleanup);
}
