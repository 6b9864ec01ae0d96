//! Normalisation of every provider's events into one shape, including the
//! community's GitHub example payloads of the npm package
//! `@octokit/webhooks-examples` (installed by `scripts/test`, never copied
//! into this repository).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use cutover_config::RefKind;
use cutover_webhook::{normalize, Normalized, Provider};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Where `scripts/test` installs the examples; `CUTOVER_OCTOKIT_EXAMPLES`
/// overrides it (the package directory, holding `api.github.com/index.json`).
fn octokit_examples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CUTOVER_OCTOKIT_EXAMPLES") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-deps/node_modules/@octokit/webhooks-examples")
}

/// Every `index.json` of the package: `[{ "name": event, "examples": [...] }]`.
fn octokit_example_files() -> Vec<(String, Vec<Value>)> {
    let dir = octokit_examples_dir();
    let index = dir.join("api.github.com/index.json");
    assert!(
        index.exists(),
        "the npm package @octokit/webhooks-examples is missing: expected {} — run scripts/test, \
         or `npm install --prefix target/test-deps --no-save --no-package-lock @octokit/webhooks-examples@7`, \
         or point CUTOVER_OCTOKIT_EXAMPLES at the package directory",
        index.display()
    );
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path().join("index.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path).unwrap();
            let groups: Vec<Value> = serde_json::from_str(&text).unwrap();
            files.push((entry.file_name().to_string_lossy().into_owned(), groups));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

fn is_zero(sha: &str) -> bool {
    sha.chars().all(|c| c == '0')
}

#[test]
fn octokit_example_payloads_all_parse_and_pushes_normalise() {
    let mut examples = 0;
    let mut pushes = 0;
    for (file, groups) in octokit_example_files() {
        for group in &groups {
            let event = group["name"].as_str().unwrap();
            for example in group["examples"].as_array().unwrap() {
                examples += 1;
                let normalized = normalize(Provider::GitHub, event, example)
                    .unwrap_or_else(|e| panic!("{file} {event}: {e}"));
                match event {
                    "ping" => assert_eq!(normalized, Normalized::Ping, "{file}"),
                    "push" => {
                        pushes += 1;
                        let Normalized::Pushes(list) = normalized else {
                            panic!("{file}: a push normalised to {normalized:?}")
                        };
                        assert_eq!(list.len(), 1);
                        let push = &list[0];
                        let full_ref = example["ref"].as_str().unwrap();
                        let (kind, name) = RefKind::split(full_ref).unwrap();
                        assert_eq!(push.kind, Some(kind), "{file} {full_ref}");
                        assert_eq!(push.name, name);
                        assert_eq!(push.full_ref(), full_ref);
                        let deleted = example["deleted"].as_bool().unwrap();
                        assert_eq!(push.deleted, deleted, "{file} {full_ref}");
                        let after = example["after"].as_str().unwrap();
                        assert_eq!(deleted, is_zero(after));
                        let expected = if deleted {
                            None
                        } else {
                            Some(
                                example["head_commit"]["id"]
                                    .as_str()
                                    .unwrap_or(after)
                                    .to_string(),
                            )
                        };
                        assert_eq!(push.commit, expected, "{file} {full_ref}");
                        assert_eq!(
                            push.repository.full_name.as_deref(),
                            example["repository"]["full_name"].as_str()
                        );
                        let clone_url = example["repository"]["clone_url"].as_str().unwrap();
                        assert!(push.repository.urls.iter().any(|u| u == clone_url));
                    }
                    _ => assert!(
                        matches!(normalized, Normalized::Ignored(_)),
                        "{file} {event}: {normalized:?}"
                    ),
                }
            }
        }
    }
    assert!(examples > 300, "only {examples} examples found");
    assert!(pushes >= 7, "only {pushes} push examples found");
}

/// The push examples over HTTP, signed: a created tag matching a rule is
/// accepted, deletions and refs no rule names are answered 200 and
/// recorded as ignored with the reason.
#[test]
fn octokit_push_examples_over_http() {
    let harness = Harness::start("");
    let mut sent = 0;
    for (file, groups) in octokit_example_files() {
        let Some(group) = groups.iter().find(|g| g["name"] == "push") else {
            continue;
        };
        for (index, example) in group["examples"].as_array().unwrap().iter().enumerate() {
            let body = serde_json::to_vec(example).unwrap();
            let delivery = format!("{file}-{index}");
            let reply = harness.post("github", &github("push", &delivery, &body), &body);
            sent += 1;
            let deleted = example["deleted"].as_bool().unwrap();
            let tag = example["ref"]
                .as_str()
                .unwrap()
                .starts_with("refs/tags/simple-");
            let expected = if !deleted && tag { 202 } else { 200 };
            assert_eq!(reply.status, expected, "{delivery}: {}", reply.body);
            if deleted {
                assert!(reply.body.contains("deleted"), "{}", reply.body);
            }
        }
    }
    assert_eq!(harness.deliveries().len(), sent);
}

#[test]
fn gitlab_pushes_and_tag_pushes() {
    let push = json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "project": { "path_with_namespace": "team/api", "git_ssh_url": "git@gitlab.example.com:team/api.git" },
    });
    let Normalized::Pushes(list) = normalize(Provider::GitLab, "Push Hook", &push).unwrap() else {
        panic!()
    };
    assert_eq!(list[0].kind, Some(RefKind::Branch));
    assert_eq!(list[0].name, "main");
    assert_eq!(list[0].repository.full_name.as_deref(), Some("team/api"));
    assert!(!list[0].deleted);

    let deleted = json!({
        "object_kind": "tag_push",
        "ref": "refs/tags/v1-cicd",
        "before": "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
        "after": "0000000000000000000000000000000000000000",
        "checkout_sha": null,
        "project": { "path_with_namespace": "team/api" },
    });
    let Normalized::Pushes(list) = normalize(Provider::GitLab, "Tag Push Hook", &deleted).unwrap()
    else {
        panic!()
    };
    assert!(list[0].deleted);
    assert_eq!(list[0].commit, None);

    let issue = json!({ "object_kind": "issue" });
    assert!(matches!(
        normalize(Provider::GitLab, "Issue Hook", &issue).unwrap(),
        Normalized::Ignored(_)
    ));
    // A push event without a ref is not a push payload.
    assert!(normalize(
        Provider::GitLab,
        "Push Hook",
        &json!({"object_kind": "push"})
    )
    .is_err());
}

#[test]
fn gitea_pushes() {
    let body = json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": "1111111111111111111111111111111111111111",
        "repository": { "full_name": "team/web", "clone_url": "https://gitea.local/team/web.git", "ssh_url": "git@gitea.local:team/web.git" }
    });
    let Normalized::Pushes(list) = normalize(Provider::Gitea, "push", &body).unwrap() else {
        panic!()
    };
    assert_eq!(
        list[0].commit.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );
    assert_eq!(list[0].repository.urls.len(), 2);
    assert!(matches!(
        normalize(Provider::Gitea, "create", &body).unwrap(),
        Normalized::Ignored(_)
    ));
}

#[test]
fn bitbucket_cloud_and_data_center_pushes() {
    let cloud = json!({
        "push": { "changes": [
            { "new": { "type": "branch", "name": "main", "target": { "hash": "2222222222222222222222222222222222222222" } }, "old": null, "closed": false },
            { "new": null, "old": { "type": "tag", "name": "old-cicd", "target": { "hash": "3333333333333333333333333333333333333333" } }, "closed": true }
        ]},
        "repository": { "full_name": "team/web", "links": { "html": { "href": "https://bitbucket.org/team/web" } } }
    });
    let Normalized::Pushes(list) = normalize(Provider::Bitbucket, "repo:push", &cloud).unwrap()
    else {
        panic!()
    };
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].kind, Some(RefKind::Branch));
    assert!(!list[0].deleted);
    assert_eq!(list[1].kind, Some(RefKind::Tag));
    assert_eq!(list[1].name, "old-cicd");
    assert!(list[1].deleted);

    let dc = json!({
        "eventKey": "repo:refs_changed",
        "repository": {
            "slug": "web", "project": { "key": "TEAM" },
            "links": { "clone": [ { "href": "ssh://git@bitbucket.local:7999/team/web.git", "name": "ssh" } ] }
        },
        "changes": [
            { "ref": { "id": "refs/tags/v9-cicd", "displayId": "v9-cicd", "type": "TAG" },
              "refId": "refs/tags/v9-cicd", "fromHash": "0000000000000000000000000000000000000000",
              "toHash": "4444444444444444444444444444444444444444", "type": "ADD" },
            { "ref": { "id": "refs/heads/gone", "type": "BRANCH" }, "refId": "refs/heads/gone",
              "fromHash": "5555555555555555555555555555555555555555", "toHash": "0000000000000000000000000000000000000000", "type": "DELETE" }
        ]
    });
    let Normalized::Pushes(list) =
        normalize(Provider::Bitbucket, "repo:refs_changed", &dc).unwrap()
    else {
        panic!()
    };
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].kind, Some(RefKind::Tag));
    assert_eq!(list[0].repository.full_name.as_deref(), Some("TEAM/web"));
    assert!(list[1].deleted);
    assert_eq!(
        normalize(Provider::Bitbucket, "diagnostics:ping", &json!({})).unwrap(),
        Normalized::Ping
    );
}

/// Payloads that are JSON but nothing like a push never panic.
#[test]
fn odd_payloads_never_panic() {
    let odd = [
        json!(null),
        json!([]),
        json!("push"),
        json!({"ref": 5}),
        json!({"ref": "refs/heads/x", "after": ["a"], "head_commit": "x"}),
        json!({"push": {"changes": [null, 1, {"new": {"name": 7}}]}}),
        json!({"changes": [{"ref": {"id": null}}, {"refId": "refs/tags/t", "toHash": 12}]}),
    ];
    for body in &odd {
        for provider in Provider::ALL {
            for event in [
                "push",
                "Push Hook",
                "Tag Push Hook",
                "repo:push",
                "repo:refs_changed",
                "ping",
            ] {
                let _ = normalize(provider, event, body);
            }
        }
    }
}
