//! Bounded fuzzing of what the webhook receiver does with bytes from the
//! internet before any deployment is queued: signature checks and the four
//! providers' payload normalisers, on stable Rust.
//!
//! - Signatures: random and mutated signature headers over random bodies
//!   are never accepted; the right signature always is.
//! - Payloads: push payloads of every provider, mutated as JSON values
//!   (fields dropped, retyped, replaced by hostile strings) and as bytes,
//!   never panic and normalise the same way twice; every push they yield
//!   that the receiver would route to a deployment names a valid ref and
//!   a full commit id and is no deletion.
//!
//! `CUTOVER_FUZZ_CASES` sets the inputs per harness (default 100,000, the
//! CI budget); `CUTOVER_FUZZ_SEED` the seed.

use std::path::Path;

use cutover_config::git_ref::{check_ref_name, validate_commit};
use cutover_config::Config;
use cutover_test_support::fuzz::{cases, rng};
use cutover_webhook::provider::Provider;
use cutover_webhook::receiver::route;
use cutover_webhook::secrets::Secret;
use cutover_webhook::signature::{sign_sha256, verify};
use cutover_webhook::{normalize, Normalized};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

const COMMIT: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

/// One push as each provider sends it, and the event name it comes with.
fn seeds() -> Vec<(Provider, &'static str, Value)> {
    let repository = json!({
        "full_name": "acme/shop", "clone_url": "https://git.example/acme/shop.git",
        "html_url": "https://git.example/acme/shop", "ssh_url": "git@git.example:acme/shop.git"
    });
    vec![
        (
            Provider::GitHub,
            "push",
            json!({"ref": "refs/heads/main", "before": "0".repeat(40), "after": COMMIT,
                   "deleted": false, "repository": repository, "head_commit": {"id": COMMIT}}),
        ),
        (
            Provider::Gitea,
            "push",
            json!({"ref": "refs/tags/v1.2", "after": COMMIT, "repository": repository}),
        ),
        (
            Provider::GitLab,
            "Push Hook",
            json!({"object_kind": "push", "ref": "refs/heads/main", "checkout_sha": COMMIT,
                   "after": COMMIT, "project": {"path_with_namespace": "acme/shop",
                   "git_http_url": "https://git.example/acme/shop.git"}}),
        ),
        (
            Provider::Bitbucket,
            "repo:push",
            json!({"repository": {"full_name": "acme/shop"}, "push": {"changes": [
                {"new": {"type": "branch", "name": "main", "target": {"hash": COMMIT}}},
                {"new": null, "old": {"type": "tag", "name": "v1"}}]}}),
        ),
        (
            Provider::Bitbucket,
            "repo:refs_changed",
            json!({"repository": {"slug": "shop", "project": {"key": "ACME"}}, "changes": [
                {"ref": {"id": "refs/heads/main", "type": "BRANCH"}, "refId": "refs/heads/main",
                 "toHash": COMMIT, "type": "UPDATE"}]}),
        ),
    ]
}

/// Strings a hostile sender would try in any field.
const HOSTILE: &[&str] = &[
    "",
    "refs/heads/",
    "refs/heads/../../etc",
    "refs/heads/main\n",
    "refs/heads/\u{202e}niam",
    "refs/tags/v1;rm -rf /",
    "$(reboot)",
    "-oProxyCommand=x",
    "\u{0}",
    "0000000000000000000000000000000000000000",
    "zzzz",
];

fn random_value(rng: &mut fastrand::Rng, depth: usize) -> Value {
    match rng.u8(..8) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64()),
        4 if depth < 3 => Value::Array(
            (0..rng.usize(..3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        5 if depth < 3 => {
            json!({"ref": random_value(rng, depth + 1), "name": HOSTILE[rng.usize(..HOSTILE.len())]})
        }
        _ => json!(HOSTILE[rng.usize(..HOSTILE.len())]),
    }
}

/// Drops, retypes or replaces one field somewhere in `value`.
fn mutate_value(rng: &mut fastrand::Rng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.usize(..keys.len())];
            match rng.u8(..4) {
                0 => {
                    map.remove(key);
                }
                1 => {
                    map.insert(key.clone(), random_value(rng, 0));
                }
                _ => mutate_value(rng, map.get_mut(key).expect("a key just listed")),
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let at = rng.usize(..items.len());
            if rng.bool() {
                mutate_value(rng, &mut items[at]);
            } else {
                items[at] = random_value(rng, 0);
            }
        }
        other => *other = random_value(rng, 0),
    }
}

/// Every app deploys pushes of any branch or tag of the seeds' repository.
fn config() -> Config {
    let text = r#"
[proxy]
listen = ["127.0.0.1:0"]
[[app]]
name = "web"
[app.process]
command = ["sleep", "60"]
[app.source]
repo = "https://git.example/acme/shop.git"
deploy_on = { branches = ["*"], tags = ["*"] }
"#;
    Config::parse(Path::new("/etc/cutover/cutover.toml"), text).expect("a valid config")
}

/// Normalises twice (the same answer) and routes every push: a push that
/// would deploy names a valid ref and a full commit id.
fn check_normalized(config: &Config, provider: Provider, event: &str, body: &Value) -> usize {
    let first = normalize(provider, event, body);
    assert_eq!(first, normalize(provider, event, body), "not deterministic");
    let Ok(Normalized::Pushes(pushes)) = first else {
        return 0;
    };
    let mut deploying = 0;
    for push in pushes {
        if let Ok(apps) = route(config, &push) {
            if apps.is_empty() {
                continue;
            }
            deploying += 1;
            assert!(!push.deleted, "a deletion deploys: {body}");
            assert!(
                check_ref_name(&push.name).is_ok(),
                "a bad ref deploys: {body}"
            );
            let commit = push.commit.as_deref().unwrap_or_default();
            assert!(
                validate_commit(commit).is_ok(),
                "a bad commit deploys: {body}"
            );
        }
    }
    deploying
}

#[test]
fn mutated_push_payloads_of_every_provider_never_panic_and_pushes_name_ref_and_commit() {
    let seeds = seeds();
    for (provider, event, body) in &seeds {
        match normalize(*provider, event, body) {
            Ok(Normalized::Pushes(pushes)) if !pushes.is_empty() => {}
            other => panic!("the {provider:?} seed is not a push: {other:?}"),
        }
    }
    let config = config();
    let (mut rng, mut deploying) = (rng(1), 0usize);
    for case in 0..cases() {
        let (provider, event, seed) = &seeds[rng.usize(..seeds.len())];
        let mut body = seed.clone();
        for _ in 0..rng.usize(1..=3) {
            mutate_value(&mut rng, &mut body);
        }
        deploying += check_normalized(&config, *provider, event, &body);
        // The same payload as bytes, damaged: what serde accepts goes on.
        if case % 4 == 0 {
            let mut bytes = serde_json::to_vec(&body).expect("a value serialises");
            let at = rng.usize(..=bytes.len());
            bytes.insert(at, b"\"{}[],:\\0x"[rng.usize(..10)]);
            if let Ok(body) = serde_json::from_slice::<Value>(&bytes) {
                check_normalized(&config, *provider, event, &body);
            }
        }
    }
    assert!(
        deploying > 0,
        "no mutated payload ever routed to a deployment"
    );
}

fn random_header_value(rng: &mut fastrand::Rng, right: &str) -> Vec<u8> {
    let mut value = match rng.u8(..4) {
        0 => right.as_bytes().to_vec(),
        1 => format!("sha256={}", "0".repeat(64)).into_bytes(),
        2 => (0..rng.usize(..80)).map(|_| rng.u8(0x20..0x7f)).collect(),
        _ => b"sha1=0123".to_vec(),
    };
    // Every case but an untouched right signature is damaged somewhere.
    if !value.is_empty() && (value != right.as_bytes() || rng.bool()) {
        let at = rng.usize(..value.len());
        value[at] = if value[at] == b'a' { b'b' } else { b'a' };
    }
    value
}

#[test]
fn only_the_right_signature_over_the_same_bytes_is_ever_accepted() {
    let secret = Secret::new(b"fuzz-secret".to_vec());
    let mut rng = rng(2);
    let headers_for = [
        (Provider::GitHub, "x-hub-signature-256"),
        (Provider::Gitea, "x-gitea-signature"),
        (Provider::Bitbucket, "x-hub-signature"),
        (Provider::GitLab, "x-gitlab-token"),
    ];
    let mut accepted = 0usize;
    for _ in 0..cases() {
        let body: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
        let (provider, name) = headers_for[rng.usize(..headers_for.len())];
        let signature = sign_sha256(secret.bytes(), &body);
        let right = match provider {
            Provider::GitHub | Provider::Bitbucket => format!("sha256={signature}"),
            Provider::Gitea => signature,
            Provider::GitLab => "fuzz-secret".to_string(),
        };
        let value = random_header_value(&mut rng, &right);
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
        let expected = value == right.as_bytes();
        let got = verify(provider, &headers, &body, std::slice::from_ref(&secret)).is_ok();
        assert_eq!(
            got,
            expected,
            "{provider:?} {name}: {:?}",
            String::from_utf8_lossy(&value)
        );
        accepted += usize::from(got);
    }
    assert!(accepted > 0, "the right signature was never generated");
}
