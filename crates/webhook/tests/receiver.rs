//! What the receiver does with verified deliveries: rules per app on the
//! ref name of the right kind, other repositories, deletions and unknown
//! events ignored with a reason (2xx), redeliveries recognised, hostile ref
//! names kept out, and every answer quick.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use cutover_test_support::http::Reply;
use std::time::Duration;

const WEB: &str = "https://github.com/Codertocat/Hello-World.git";
const C1: &str = "1111111111111111111111111111111111111111";

fn push(harness: &Harness, delivery: &str, full_ref: &str, repo: &str) -> Reply {
    let body = github_push(full_ref, C1, repo);
    harness.post("github", &github("push", delivery, &body), &body)
}

#[test]
fn a_redelivery_is_acknowledged_and_recorded_once() {
    let harness = Harness::start("");
    let first = push(&harness, "d-1", "refs/tags/v1-cicd", WEB);
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.json()["apps"], serde_json::json!(["web"]));
    let again = push(&harness, "d-1", "refs/tags/v1-cicd", WEB);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["status"], "duplicate");
    let recorded = harness.deliveries();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status, "queued");
    assert_eq!(recorded[0].ref_kind.as_deref(), Some("tag"));
    assert_eq!(recorded[0].ref_name.as_deref(), Some("v1-cicd"));
    assert_eq!(recorded[0].commit.as_deref(), Some(C1));
    assert_eq!(recorded[0].provider, "github");
}

#[test]
fn without_a_delivery_id_the_same_body_is_the_same_delivery() {
    let harness = Harness::start("");
    let body = github_push("refs/tags/v1-cicd", C1, WEB);
    let headers: Vec<(&str, String)> = github("push", "x", &body)
        .into_iter()
        .filter(|(n, _)| *n != "X-GitHub-Delivery")
        .collect();
    assert_eq!(harness.post("github", &headers, &body).status, 202);
    assert_eq!(harness.post("github", &headers, &body).status, 200);
    assert_eq!(harness.deliveries().len(), 1);
}

#[test]
fn rules_match_the_ref_name_of_the_right_kind_only() {
    let harness = Harness::start("");
    let cases = [
        ("tag matching *cicd*", "refs/tags/release-cicd-7", 202),
        ("branch main", "refs/heads/main", 202),
        ("a branch named like a tag rule", "refs/heads/v1-cicd", 200),
        ("a tag named like a branch rule", "refs/tags/main", 200),
        ("a branch no rule names", "refs/heads/feature/x", 200),
        ("a tag no rule names", "refs/tags/v1.0", 200),
        ("neither branch nor tag", "refs/notes/commits", 200),
    ];
    for (index, (what, full_ref, status)) in cases.iter().enumerate() {
        let reply = push(&harness, &format!("r-{index}"), full_ref, WEB);
        assert_eq!(reply.status, *status, "{what}: {}", reply.body);
        if *status == 200 {
            assert_eq!(reply.json()["status"], "ignored", "{what}");
            assert!(
                reply.json()["reason"].as_str().unwrap().len() > 10,
                "{what}"
            );
        }
    }
    let recorded = harness.deliveries();
    assert_eq!(recorded.len(), cases.len());
    let queued: Vec<&str> = recorded
        .iter()
        .filter(|d| d.status == "queued")
        .filter_map(|d| d.ref_name.as_deref())
        .collect();
    assert_eq!(queued, ["release-cicd-7", "main"]);
    for ignored in recorded.iter().filter(|d| d.status == "ignored") {
        assert!(ignored.reason.is_some(), "{ignored:?}");
    }
}

#[test]
fn other_repositories_deletions_and_unknown_events_are_ignored_with_a_reason() {
    let harness = Harness::start("");
    let other = push(
        &harness,
        "o-1",
        "refs/tags/v1-cicd",
        "https://github.com/someone/else.git",
    );
    assert_eq!(other.status, 200, "{}", other.body);
    assert!(other.json()["reason"]
        .as_str()
        .unwrap()
        .contains("someone/else"));

    let deleted = serde_json::json!({
        "ref": "refs/tags/v1-cicd", "before": C1,
        "after": "0000000000000000000000000000000000000000", "deleted": true,
        "head_commit": null,
        "repository": { "full_name": "Codertocat/Hello-World", "clone_url": WEB }
    })
    .to_string()
    .into_bytes();
    let reply = harness.post("github", &github("push", "del-1", &deleted), &deleted);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.json()["reason"].as_str().unwrap().contains("deleted"));

    let issue = br#"{"action": "opened"}"#;
    let reply = harness.post("github", &github("issues", "iss-1", issue), issue);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.json()["reason"].as_str().unwrap().contains("issues"));

    let ping = br#"{"zen": "Keep it logically awesome."}"#;
    let reply = harness.post("github", &github("ping", "ping-1", ping), ping);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["status"], "pong");

    let missing_event: Vec<(&str, String)> = github("push", "ne-1", ping)
        .into_iter()
        .filter(|(n, _)| *n != "X-GitHub-Event")
        .collect();
    let reply = harness.post("github", &missing_event, ping);
    assert_eq!(reply.status, 400, "{}", reply.body);

    let statuses: Vec<String> = harness
        .deliveries()
        .iter()
        .map(|d| d.status.clone())
        .collect();
    assert_eq!(statuses, ["ignored", "ignored", "ignored"]);
}

#[test]
fn hostile_ref_names_are_refused_or_kept_as_data() {
    let harness = Harness::start_with(
        "",
        r#"
[[app]]
name = "web"
[app.process]
command = ["true"]
[app.source]
repo = "https://github.com/Codertocat/Hello-World.git"
deploy_on = { branches = ["*"], tags = ["*"] }
"#,
    );
    // Names git itself refuses, or that could be read as an option.
    for (index, name) in [
        "-x",
        "--upload-pack=touch /tmp/pwned",
        "a b",
        "x..y",
        "x\u{1b}[31m",
        "x:y",
        "@{-1}",
    ]
    .iter()
    .enumerate()
    {
        let reply = push(
            &harness,
            &format!("bad-{index}"),
            &format!("refs/heads/{name}"),
            WEB,
        );
        assert_eq!(reply.status, 200, "{name:?}: {}", reply.body);
        assert!(
            reply.json()["reason"]
                .as_str()
                .unwrap()
                .contains("not accepted"),
            "{name:?}: {}",
            reply.body
        );
    }
    // Names git accepts: queued, kept exactly (they are only ever data).
    let allowed = ["$(touch${IFS}pwned)", "`id`", "a;b", "x|y&z"];
    for (index, name) in allowed.iter().enumerate() {
        let reply = push(
            &harness,
            &format!("ok-{index}"),
            &format!("refs/heads/{name}"),
            WEB,
        );
        assert_eq!(reply.status, 202, "{name:?}: {}", reply.body);
    }
    let queued: Vec<String> = harness
        .deliveries()
        .into_iter()
        .filter(|d| d.status == "queued")
        .filter_map(|d| d.ref_name)
        .collect();
    assert_eq!(queued, allowed);
}

#[test]
fn form_encoded_github_deliveries_are_accepted() {
    let harness = Harness::start("");
    let json = String::from_utf8(github_push("refs/tags/v1-cicd", C1, WEB)).unwrap();
    let mut encoded = String::from("payload=");
    for byte in json.bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    let body = encoded.into_bytes();
    let mut headers = github("push", "form-1", &body);
    headers.retain(|(n, _)| *n != "Content-Type");
    headers.push(("Content-Type", "application/x-www-form-urlencoded".into()));
    let reply = harness.post("github", &headers, &body);
    assert_eq!(reply.status, 202, "{}", reply.body);
}

#[test]
fn answers_are_quick() {
    let harness = Harness::start("");
    for index in 0..20 {
        let reply = push(&harness, &format!("fast-{index}"), "refs/heads/main", WEB);
        assert_eq!(reply.status, 202);
        assert!(reply.took < Duration::from_secs(1), "{:?}", reply.took);
    }
}
