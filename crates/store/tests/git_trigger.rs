//! The git trigger's state: trigger facts on deployments, commits of
//! releases, and the webhook inbox with its unique delivery ids — also in
//! a database written before the migration that added them.

#![allow(clippy::unwrap_used)]

use cutover_store::*;

fn delivery(id: &str, status: &str) -> NewDelivery {
    NewDelivery {
        provider: "github".into(),
        delivery_id: id.into(),
        event: "push".into(),
        repository: Some("team/web".into()),
        ref_kind: Some("tag".into()),
        ref_name: Some("v1-cicd".into()),
        commit: Some("1111111111111111111111111111111111111111".into()),
        apps: vec!["web".into(), "api".into()],
        status: status.into(),
        reason: None,
    }
}

#[test]
fn deliveries_are_unique_per_provider_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.db");
    {
        let store = Store::open(&path).unwrap();
        let first = store
            .insert_delivery(&delivery("d-1", "queued"))
            .unwrap()
            .unwrap();
        assert_eq!(first.apps, vec!["web", "api"]);
        assert!(store
            .insert_delivery(&delivery("d-1", "queued"))
            .unwrap()
            .is_none());
        let mut other = delivery("d-1", "queued");
        other.provider = "gitlab".into();
        assert!(store.insert_delivery(&other).unwrap().is_some());
        store.insert_delivery(&delivery("d-2", "ignored")).unwrap();
        assert_eq!(store.queued_deliveries().unwrap().len(), 2);
        store
            .finish_delivery(first.id, "dispatched", None, &[7, 8])
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let queued = store.queued_deliveries().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].provider, "gitlab");
    let first = store.delivery(1).unwrap().unwrap();
    assert_eq!(first.status, "dispatched");
    assert_eq!(first.deployments, vec![7, 8]);
    assert_eq!(store.deliveries(10).unwrap().len(), 3);
}

#[test]
fn deployments_keep_their_trigger_facts_and_releases_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cutover.db")).unwrap();
    store.ensure_app("web").unwrap();
    let source = DeploymentSource {
        provider: "github".into(),
        delivery: Some("72d3162e".into()),
        git_ref: "refs/tags/v1-cicd".into(),
        commit: "2222222222222222222222222222222222222222".into(),
        build: Some("queued".into()),
    };
    let record = store
        .insert_deployment(&NewDeployment {
            app: "web".into(),
            trigger: "webhook".into(),
            version: "v1-cicd-222222222222".into(),
            release_id: None,
            source: Some(source.clone()),
        })
        .unwrap();
    assert_eq!(record.source.as_ref(), Some(&source));
    store.set_source_build(record.id, "building").unwrap();
    store
        .set_source_commit(record.id, "3333333333333333333333333333333333333333")
        .unwrap();
    let read = store.deployment(record.id).unwrap().unwrap();
    let read_source = read.source.unwrap();
    assert_eq!(read_source.build.as_deref(), Some("building"));
    assert_eq!(
        read_source.commit,
        "3333333333333333333333333333333333333333"
    );
    // A build still marked in progress when its deployment ended reads as interrupted.
    store
        .transition(record.id, DeploymentState::Failed, "cutover was restarted")
        .unwrap();
    let ended = store.deployment(record.id).unwrap().unwrap();
    assert_eq!(ended.source.unwrap().build.as_deref(), Some("interrupted"));
    // JSON names the ref `ref`.
    let json = serde_json::to_value(store.deployment(record.id).unwrap().unwrap()).unwrap();
    assert_eq!(json["source"]["ref"], "refs/tags/v1-cicd");

    let release = store
        .insert_release("web", "v1-cicd-222222222222", "process", Some("/a/app.jar"))
        .unwrap();
    assert_eq!(store.release_commit(release.id).unwrap(), None);
    store
        .set_release_commit(release.id, &source.commit)
        .unwrap();
    assert_eq!(
        store.release_commit(release.id).unwrap().as_deref(),
        Some(source.commit.as_str())
    );
}

/// Schema 1 as the first release wrote it (a fixture: migrations are never edited).
const SCHEMA_1: &str = "CREATE TABLE apps (name TEXT PRIMARY KEY, live_slot TEXT, updated_at INTEGER NOT NULL);
    CREATE TABLE releases (id INTEGER PRIMARY KEY, app TEXT NOT NULL REFERENCES apps(name), version TEXT NOT NULL,
        driver TEXT NOT NULL, artifact TEXT, created_at INTEGER NOT NULL);
    CREATE TABLE slots (app TEXT NOT NULL, slot TEXT NOT NULL, state TEXT NOT NULL, release_id INTEGER,
        runtime_id TEXT, addr TEXT, log_path TEXT, updated_at INTEGER NOT NULL, PRIMARY KEY (app, slot));
    CREATE TABLE deployments (id INTEGER PRIMARY KEY, app TEXT NOT NULL, trigger TEXT NOT NULL, version TEXT NOT NULL,
        release_id INTEGER, target_slot TEXT, from_release_id INTEGER, from_slot TEXT, state TEXT NOT NULL,
        reason TEXT, created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER);
    CREATE INDEX deployments_by_app ON deployments (app, id);
    CREATE TABLE events (id INTEGER PRIMARY KEY, deployment_id INTEGER NOT NULL, at INTEGER NOT NULL,
        state TEXT NOT NULL, message TEXT NOT NULL);
    CREATE INDEX events_by_deployment ON events (deployment_id, id);
    INSERT INTO apps VALUES ('web', NULL, 1);
    INSERT INTO releases VALUES (1, 'web', 'v1', 'process', NULL, 1);
    INSERT INTO deployments (id, app, trigger, version, release_id, state, created_at)
        VALUES (1, 'web', 'cli', 'v1', 1, 'succeeded', 1);
    PRAGMA user_version = 1;";

#[test]
fn a_database_from_before_the_git_trigger_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(SCHEMA_1)
        .unwrap();
    let store = Store::open(&path).unwrap();
    let old = store.deployments("web", 10).unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].version, "v1");
    assert_eq!(old[0].source, None);
    assert_eq!(store.release_commit(1).unwrap(), None);
    assert!(store.queued_deliveries().unwrap().is_empty());
}
