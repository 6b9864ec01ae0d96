//! Verification before parsing, over real HTTP: GitHub's published test
//! vector, every provider's header scheme good and bad, secret rotation,
//! and the size and time limits. A refused delivery leaves no trace in the
//! store.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use cutover_test_support::http::{exchange, reply_of};
use cutover_webhook::secrets::Secret;
use cutover_webhook::{signature, Provider};
use http::{HeaderMap, HeaderValue};
use std::io::Write;
use std::time::Duration;

/// A case: what it shows, the headers sent, and the expected status.
type Case = (&'static str, Vec<(&'static str, String)>, u16);

const TAG_COMMIT: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

fn tag_push() -> Vec<u8> {
    github_push(
        "refs/tags/v1-cicd",
        TAG_COMMIT,
        "https://github.com/Codertocat/Hello-World.git",
    )
}

#[test]
fn githubs_published_test_vector_verifies() {
    // From GitHub's "Validating webhook deliveries".
    let secret = [Secret::new("It's a Secret to Everybody")];
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-hub-signature-256",
        HeaderValue::from_static(
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ),
    );
    assert_eq!(
        signature::verify(Provider::GitHub, &headers, b"Hello, World!", &secret),
        Ok(())
    );
    assert!(signature::verify(Provider::GitHub, &headers, b"Hello, World?", &secret).is_err());

    // Over HTTP: the vector passes verification (then the body is not
    // JSON: 400), one changed byte does not (401).
    let harness = Harness::start("");
    let vector = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", "vector-1".to_string()),
        (
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_string(),
        ),
    ];
    let verified = harness.post("github", &vector, b"Hello, World!");
    assert_eq!(verified.status, 400, "{}", verified.body);
    assert!(
        verified.body.contains("not valid JSON"),
        "{}",
        verified.body
    );
    let changed = harness.post("github", &vector, b"Hello, World?");
    assert_eq!(changed.status, 401, "{}", changed.body);
    assert!(changed.body.contains("does not match"), "{}", changed.body);
}

#[test]
fn github_signatures_missing_wrong_algorithm_or_over_other_bytes_are_401() {
    let harness = Harness::start("");
    let body = tag_push();
    let good = github("push", "good-1", &body);
    let without = |name: &str| -> Vec<(&str, String)> {
        good.iter().filter(|(n, _)| *n != name).cloned().collect()
    };
    let with = |name: &'static str, value: String| -> Vec<(&str, String)> {
        let mut headers = without(name);
        headers.push((name, value));
        headers
    };

    let mut changed = body.clone();
    let last = changed.len() - 2;
    changed[last] ^= 0x01;
    let sha1 = format!(
        "sha1={}",
        "0123456789abcdef0123456789abcdef01234567" // any sha1-looking value
    );
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let reserialised = serde_json::to_vec_pretty(&value).unwrap();
    assert_ne!(reserialised, body);

    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<(&str, String)>, &[u8])> = vec![
        ("one changed byte", good.clone(), &changed),
        ("missing signature", without("X-Hub-Signature-256"), &body),
        (
            "empty signature",
            with("X-Hub-Signature-256", String::new()),
            &body,
        ),
        (
            "sha1= in X-Hub-Signature-256",
            with("X-Hub-Signature-256", sha1.clone()),
            &body,
        ),
        (
            "only the sha1 X-Hub-Signature",
            {
                let mut h = without("X-Hub-Signature-256");
                h.push(("X-Hub-Signature", sha1.clone()));
                h
            },
            &body,
        ),
        (
            "signature over re-serialised JSON",
            good.clone(),
            &reserialised,
        ),
        (
            "signature with another secret",
            with(
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex("not the secret", &body)),
            ),
            &body,
        ),
        (
            "not hex",
            with("X-Hub-Signature-256", "sha256=zz".to_string()),
            &body,
        ),
    ];
    for (what, headers, body) in cases {
        let reply = harness.post("github", &headers, body);
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{what}");
    }
    assert!(
        harness.deliveries().is_empty(),
        "refused deliveries must leave nothing behind"
    );

    let accepted = harness.post("github", &good, &body);
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    // Rotation: the second configured secret is accepted too.
    let next = with(
        "X-Hub-Signature-256",
        format!("sha256={}", hmac_hex(GITHUB_NEXT_SECRET, &body)),
    );
    let next: Vec<(&str, String)> = next
        .into_iter()
        .map(|(n, v)| {
            if n == "X-GitHub-Delivery" {
                (n, "good-2".to_string())
            } else {
                (n, v)
            }
        })
        .collect();
    let rotated = harness.post("github", &next, &body);
    assert_eq!(rotated.status, 202, "{}", rotated.body);
    assert_eq!(harness.deliveries().len(), 2);
}

fn gitlab_push() -> Vec<u8> {
    serde_json::json!({
        "object_kind": "tag_push",
        "ref": "refs/tags/v2-cicd",
        "before": "0000000000000000000000000000000000000000",
        "after": "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
        "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "project": {
            "path_with_namespace": "team/api",
            "git_ssh_url": "git@gitlab.example.com:team/api.git",
            "git_http_url": "https://gitlab.example.com/team/api.git"
        }
    })
    .to_string()
    .into_bytes()
}

#[test]
fn gitlab_token_good_and_bad() {
    let harness = Harness::start("");
    let body = gitlab_push();
    let headers = |token: Option<&str>, id: &str| {
        let mut h = vec![
            ("X-Gitlab-Event", "Tag Push Hook".to_string()),
            ("X-Gitlab-Event-UUID", id.to_string()),
        ];
        if let Some(token) = token {
            h.push(("X-Gitlab-Token", token.to_string()));
        }
        h
    };
    for (what, token) in [
        ("wrong token", Some("gitlab-token-123")),
        ("longer token", Some("gitlab-token-12345")),
        ("empty token", Some("")),
        ("missing token", None),
    ] {
        let reply = harness.post("gitlab", &headers(token, "gl-bad"), &body);
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
    }
    let reply = harness.post("gitlab", &headers(Some(GITLAB_TOKEN), "gl-1"), &body);
    assert_eq!(reply.status, 202, "{}", reply.body);
    let recorded = harness.deliveries();
    assert_eq!(recorded.len(), 1);
    // The annotated tag's commit (checkout_sha), not the tag object (after).
    assert_eq!(
        recorded[0].commit.as_deref(),
        Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    );
    assert_eq!(recorded[0].apps, vec!["api"]);
}

fn gitea_push() -> Vec<u8> {
    serde_json::json!({
        "ref": "refs/tags/v3-cicd",
        "before": "0000000000000000000000000000000000000000",
        "after": TAG_COMMIT,
        "head_commit": { "id": TAG_COMMIT },
        "repository": {
            "full_name": "Codertocat/Hello-World",
            "clone_url": "https://github.com/Codertocat/Hello-World.git"
        }
    })
    .to_string()
    .into_bytes()
}

#[test]
fn gitea_and_forgejo_signatures_good_and_bad() {
    let harness = Harness::start("");
    let body = gitea_push();
    let good = hmac_hex(GITEA_SECRET, &body);
    let cases: Vec<Case> = vec![
        (
            "gitea good",
            vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", "g1".into()),
                ("X-Gitea-Signature", good.clone()),
            ],
            202,
        ),
        (
            "forgejo good",
            vec![
                ("X-Forgejo-Event", "push".into()),
                ("X-Forgejo-Delivery", "f1".into()),
                ("X-Forgejo-Signature", good.clone()),
            ],
            202,
        ),
        (
            "hub-style good",
            vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", "g2".into()),
                ("X-Hub-Signature-256", format!("sha256={good}")),
            ],
            202,
        ),
        (
            "gitea bad",
            vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", "g3".into()),
                ("X-Gitea-Signature", hmac_hex("wrong", &body)),
            ],
            401,
        ),
        (
            "gitea prefixed",
            vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", "g4".into()),
                ("X-Gitea-Signature", format!("sha1={good}")),
            ],
            401,
        ),
        (
            "gitea missing",
            vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", "g5".into()),
            ],
            401,
        ),
        (
            "github secret on gitea",
            vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", "g6".into()),
                ("X-Gitea-Signature", hmac_hex(GITHUB_SECRET, &body)),
            ],
            401,
        ),
    ];
    for (what, headers, status) in cases {
        let reply = harness.post("gitea", &headers, &body);
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
    }
    assert_eq!(harness.deliveries().len(), 3);
}

fn bitbucket_cloud_push() -> Vec<u8> {
    serde_json::json!({
        "push": { "changes": [{
            "new": { "type": "tag", "name": "v4-cicd", "target": { "type": "commit", "hash": TAG_COMMIT } },
            "old": null,
            "created": true, "closed": false
        }]},
        "repository": {
            "full_name": "Codertocat/Hello-World",
            "links": { "html": { "href": "https://bitbucket.org/Codertocat/Hello-World" } }
        }
    })
    .to_string()
    .into_bytes()
}

#[test]
fn bitbucket_signatures_good_and_bad() {
    let harness = Harness::start("");
    let body = bitbucket_cloud_push();
    let good = hmac_hex(BITBUCKET_SECRET, &body);
    let cases: Vec<Case> = vec![
        (
            "good",
            vec![
                ("X-Event-Key", "repo:push".into()),
                ("X-Request-UUID", "b1".into()),
                ("X-Hub-Signature", format!("sha256={good}")),
            ],
            202,
        ),
        (
            "sha1",
            vec![
                ("X-Event-Key", "repo:push".into()),
                ("X-Request-UUID", "b2".into()),
                ("X-Hub-Signature", format!("sha1={good}")),
            ],
            401,
        ),
        (
            "bare hex",
            vec![
                ("X-Event-Key", "repo:push".into()),
                ("X-Request-UUID", "b3".into()),
                ("X-Hub-Signature", good.clone()),
            ],
            401,
        ),
        (
            "wrong",
            vec![
                ("X-Event-Key", "repo:push".into()),
                ("X-Request-UUID", "b4".into()),
                (
                    "X-Hub-Signature",
                    format!("sha256={}", hmac_hex("x", &body)),
                ),
            ],
            401,
        ),
        (
            "missing",
            vec![
                ("X-Event-Key", "repo:push".into()),
                ("X-Request-UUID", "b5".into()),
            ],
            401,
        ),
    ];
    for (what, headers, status) in cases {
        let reply = harness.post("bitbucket", &headers, &body);
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
    }
    // Data Center's ping is answered 200 once signed.
    let ping = br#"{"test": true}"#;
    let headers = vec![
        ("X-Event-Key", "diagnostics:ping".to_string()),
        ("X-Request-Id", "dc-ping".to_string()),
        (
            "X-Hub-Signature",
            format!("sha256={}", hmac_hex(BITBUCKET_SECRET, ping)),
        ),
    ];
    let reply = harness.post("bitbucket", &headers, ping);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["status"], "pong");
}

#[test]
fn unknown_endpoints_are_404_and_other_methods_405() {
    let harness = Harness::start("");
    let reply = harness.post("gitlab", &[], b"{}");
    assert_eq!(reply.status, 401, "{}", reply.body);
    let unknown = harness.post("svn", &[], b"{}");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let get = exchange(
        harness.addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            harness.path("github")
        )
        .as_bytes(),
    );
    assert_eq!(get.status, 405, "{}", get.body);
}

#[test]
fn an_unconfigured_provider_answers_404() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gh"), "secret-value\n").unwrap();
    let text = r#"
[webhook]
listen = "127.0.0.1:0"
github_secret_file = "gh"
"#;
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    let config = cutover_config::Config::load(&path).unwrap();
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let store = cutover_store::Store::open(&config.database_path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = runtime
        .block_on(cutover_webhook::Receiver::bind(
            std::sync::Arc::new(config),
            store,
        ))
        .unwrap();
    let addr = receiver.local_addr().unwrap();
    runtime.spawn(receiver.serve(std::future::pending()));
    let reply = post(
        addr,
        "/_cutover/hooks/gitlab",
        &[("X-Gitlab-Token", "x".into())],
        b"{}",
    );
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(reply.body.contains("no gitlab secret"), "{}", reply.body);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn secrets_must_exist_and_not_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    for (key, expect) in [
        (
            "github_secret_file = \"missing\"",
            "cannot read github_secret",
        ),
        ("github_secret_file = \"empty\"", "is empty"),
        (
            "github_secret_env = \"CUTOVER_TEST_SURELY_UNSET_VAR\"",
            "is not set",
        ),
    ] {
        let path = dir.path().join("cutover.toml");
        std::fs::write(
            &path,
            format!("[webhook]\nlisten = \"127.0.0.1:0\"\n{key}\n"),
        )
        .unwrap();
        let config = cutover_config::Config::load(&path).unwrap();
        let store = cutover_store::Store::open(&dir.path().join("db")).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let error = runtime
            .block_on(cutover_webhook::Receiver::bind(
                std::sync::Arc::new(config),
                store,
            ))
            .err()
            .expect("a bad secret stops the receiver from starting")
            .to_string();
        assert!(error.contains(expect), "{key}: {error}");
    }
}

#[test]
fn bodies_beyond_max_body_are_413_and_slow_bodies_time_out() {
    let harness = Harness::start("max_body = \"1KB\"\nread_timeout = \"500ms\"");
    let big = vec![b'x'; 2048];
    let headers = github("push", "big-1", &big);
    let reply = harness.post("github", &headers, &big);
    assert_eq!(reply.status, 413, "{}", reply.body);

    // Chunked, without a length: refused once past the cap.
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-GitHub-Event: push\r\nConnection: close\r\n\r\n",
        harness.path("github")
    )
    .into_bytes();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = exchange(harness.addr, &request);
    assert_eq!(reply.status, 413, "{}", reply.body);

    // A body that never arrives: answered after read_timeout, not held open.
    let mut stream = std::net::TcpStream::connect(harness.addr).unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
        harness.path("github")
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    let reply = reply_of(&answer, started.elapsed());
    assert_eq!(reply.status, 408, "{}", reply.body);
    assert!(reply.took < Duration::from_secs(5), "{:?}", reply.took);
    assert!(harness.deliveries().is_empty());
}
