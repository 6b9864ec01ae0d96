//! Release groups in the store: a group deployment and its members written
//! together, the switch of every member in one transaction, and what a
//! restart finds.

#![allow(clippy::unwrap_used)]

use cutover_store::*;

fn member(app: &str, version: &str) -> NewDeployment {
    NewDeployment {
        app: app.into(),
        trigger: "cli".into(),
        version: version.into(),
        release_id: None,
        source: None,
    }
}

fn switch(app: &str, deployment_id: i64) -> SwitchRecord {
    SwitchRecord {
        app: app.into(),
        slot: Some("green".into()),
        previous_label: "draining".into(),
        deployment_id,
        state: DeploymentState::Draining,
        message: format!("{app} switched with its group"),
    }
}

#[test]
fn a_group_deployment_and_its_members_survive_a_reopen_and_end_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.db");
    let store = Store::open(&path).unwrap();
    for app in ["web", "api"] {
        store.ensure_app(app).unwrap();
    }
    let new = NewGroupDeployment {
        group: "shop".into(),
        trigger: "cli".into(),
        members: vec![member("web", "v2"), member("api", "v7")],
    };
    let (group, members) = store.insert_group_deployment(&new).unwrap();
    assert_eq!(group.state, "queued");
    assert!(members
        .iter()
        .all(|m| m.group_deployment_id == Some(group.id)));
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.unfinished_group_deployments().unwrap(),
        vec![group.clone()]
    );
    let read: Vec<(String, String)> = store
        .group_members(group.id)
        .unwrap()
        .into_iter()
        .map(|m| (m.app, m.version))
        .collect();
    assert_eq!(
        read,
        [("web".into(), "v2".into()), ("api".into(), "v7".into())]
    );
    let ids: Vec<(i64, String)> = members.iter().map(|m| (m.id, "done".to_string())).collect();
    store
        .transition_members(&ids, DeploymentState::Succeeded)
        .unwrap();
    let ended = store
        .transition_group(group.id, DeploymentState::Succeeded, "both live")
        .unwrap();
    assert_eq!(ended.reason.as_deref(), Some("both live"));
    assert!(ended.finished_at.is_some());
    assert!(store.unfinished_group_deployments().unwrap().is_empty());
    assert_eq!(
        store.last_succeeded_group("shop").unwrap().map(|g| g.id),
        Some(group.id)
    );
    assert_eq!(store.group_deployments("shop", 10).unwrap().len(), 1);
}

#[test]
fn the_switch_of_every_member_is_recorded_in_one_transaction_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cutover.db")).unwrap();
    for app in ["web", "api"] {
        store.ensure_app(app).unwrap();
    }
    let new = NewGroupDeployment {
        group: "shop".into(),
        trigger: "cli".into(),
        members: vec![member("web", "v2"), member("api", "v2")],
    };
    let (_, members) = store.insert_group_deployment(&new).unwrap();
    // The second record names a deployment that does not exist: its event
    // cannot be written, so the first app's switch must not stay either.
    let broken = [switch("web", members[0].id), switch("api", i64::MAX)];
    assert!(store.record_group_switch(&broken).is_err());
    assert_eq!(store.app("web").unwrap().unwrap().live_slot, None);

    let whole = [switch("web", members[0].id), switch("api", members[1].id)];
    let events = store.record_group_switch(&whole).unwrap();
    assert_eq!(events.len(), 2);
    for app in ["web", "api"] {
        assert_eq!(
            store.app(app).unwrap().unwrap().live_slot.as_deref(),
            Some("green")
        );
    }
    assert_eq!(
        store.deployment(members[1].id).unwrap().unwrap().state,
        "draining"
    );
}
