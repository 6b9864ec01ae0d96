//! The store against real SQLite files: durability across reopen, the
//! switch recorded atomically, interrupted deployments found again.

#![allow(clippy::unwrap_used)]

use cutover_store::*;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("cutover.db")).expect("open store")
}

fn deploy(store: &Store, version: &str) -> DeploymentRecord {
    store.ensure_app("web").unwrap();
    store
        .insert_deployment(&NewDeployment {
            app: "web".into(),
            trigger: "cli".into(),
            version: version.into(),
            release_id: None,
            source: None,
        })
        .unwrap()
}

#[test]
fn state_written_before_a_crash_is_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let deployment = deploy(&store, "v1");
    let release = store.insert_release("web", "v1", "process", None).unwrap();
    store
        .set_deployment_plan(
            deployment.id,
            &DeploymentPlan {
                release_id: release.id,
                target_slot: "blue".into(),
                from_release_id: None,
                from_slot: None,
            },
        )
        .unwrap();
    store
        .transition(
            deployment.id,
            DeploymentState::Starting,
            "starting v1 in blue",
        )
        .unwrap();
    store
        .set_slot(
            "web",
            "blue",
            &SlotUpdate {
                state: "checking".into(),
                release_id: Some(release.id),
                runtime_id: Some("pid=1".into()),
                addr: Some("127.0.0.1:1".into()),
                endpoints: Vec::new(),
                log_path: None,
            },
        )
        .unwrap();
    store
        .record_switch(
            "web",
            Some("blue"),
            "draining",
            deployment.id,
            DeploymentState::Draining,
            "blue is live",
        )
        .unwrap();
    drop(store);

    let store = open(&dir);
    let app = store.app("web").unwrap().expect("app exists");
    assert_eq!(app.live_slot.as_deref(), Some("blue"));
    let live = app.live().expect("live slot");
    assert_eq!(live.state, "live");
    assert_eq!(
        live.release.as_ref().map(|r| r.version.as_str()),
        Some("v1")
    );
    assert_eq!(live.runtime_id.as_deref(), Some("pid=1"));
    let unfinished = store.unfinished_deployments().unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].state, "draining");
    let events = store.events(deployment.id, 0).unwrap();
    let states: Vec<_> = events.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, ["queued", "starting", "draining"]);
}

#[test]
fn terminal_transition_sets_reason_and_finish_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let deployment = deploy(&store, "v2");
    store
        .transition(
            deployment.id,
            DeploymentState::Failed,
            "health check never passed",
        )
        .unwrap();
    let read = store.deployment(deployment.id).unwrap().unwrap();
    assert_eq!(read.state, "failed");
    assert_eq!(read.reason.as_deref(), Some("health check never passed"));
    assert!(read.finished_at.is_some());
    assert!(store.unfinished_deployments().unwrap().is_empty());
}

#[test]
fn switch_moves_the_previous_live_slot_to_draining() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let first = deploy(&store, "v1");
    store
        .record_switch(
            "web",
            Some("blue"),
            "draining",
            first.id,
            DeploymentState::Draining,
            "blue live",
        )
        .unwrap();
    let second = deploy(&store, "v2");
    store
        .record_switch(
            "web",
            Some("green"),
            "draining",
            second.id,
            DeploymentState::Draining,
            "green live",
        )
        .unwrap();
    let app = store.app("web").unwrap().unwrap();
    assert_eq!(app.live_slot.as_deref(), Some("green"));
    assert_eq!(app.slot("blue").unwrap().state, "draining");
}

#[test]
fn history_is_newest_first_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for v in ["v1", "v2", "v3"] {
        deploy(&store, v);
    }
    let history = store.deployments("web", 2).unwrap();
    let versions: Vec<_> = history.iter().map(|d| d.version.as_str()).collect();
    assert_eq!(versions, ["v3", "v2"]);
}

#[test]
fn transition_of_an_unknown_deployment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(matches!(
        store.transition(42, DeploymentState::Failed, "x"),
        Err(StoreError::NoDeployment(42))
    ));
}

#[test]
fn reopening_applies_no_migration_twice() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    drop(open(&dir));
    let store = open(&dir);
    store.ensure_app("web").unwrap();
    assert!(store.app("web").unwrap().is_some());
}

/// A release's endpoints survive a reopen; a slot written with only an
/// address (as before endpoints existed) reads as that one endpoint.
#[test]
fn slot_endpoints_are_recorded_and_old_rows_read_as_one_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.ensure_app("web").unwrap();
    let endpoints = vec![
        EndpointRecord {
            addr: "10.0.0.1:30001".into(),
            label: "web-green.1.abc@node-1".into(),
        },
        EndpointRecord {
            addr: "10.0.0.2:30002".into(),
            label: "web-green.2.def@node-2".into(),
        },
    ];
    let update = |slot_endpoints: Vec<EndpointRecord>| SlotUpdate {
        state: "live".into(),
        release_id: None,
        runtime_id: Some("svc".into()),
        addr: Some("10.0.0.1:30001".into()),
        endpoints: slot_endpoints,
        log_path: None,
    };
    store
        .set_slot("web", "green", &update(endpoints.clone()))
        .unwrap();
    store.set_slot("web", "blue", &update(Vec::new())).unwrap();
    drop(store);
    let app = open(&dir).app("web").unwrap().expect("app exists");
    assert_eq!(
        app.slot("green").map(|s| s.endpoints.clone()),
        Some(endpoints)
    );
    let old_style = app
        .slot("blue")
        .map(|s| s.endpoints.clone())
        .unwrap_or_default();
    assert_eq!(old_style.len(), 1);
    assert_eq!(old_style[0].addr, "10.0.0.1:30001");
}
