//! A real receiver on a loopback port with a real SQLite store, and a
//! plain HTTP/1.1 client that sends exactly the bytes it is given.

#![allow(dead_code, clippy::unwrap_used)]

use cutover_config::Config;
use cutover_store::{DeliveryRecord, Store};
use cutover_test_support::http::{self, Reply};
use cutover_webhook::Receiver;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";
pub const GITHUB_NEXT_SECRET: &str = "the next github secret";
pub const GITLAB_TOKEN: &str = "gitlab-token-1234";
pub const GITEA_SECRET: &str = "gitea secret";
pub const BITBUCKET_SECRET: &str = "bitbucket secret";

/// An app `web` whose source is GitHub's example repository, deploying
/// tags matching `*cicd*` and `simple-*` and the branch `main`; an app
/// `api` on a GitLab-style repository deploying `main`.
pub const APPS: &str = r#"
[[app]]
name = "web"
[app.process]
command = ["true"]
[app.source]
repo = "https://github.com/Codertocat/Hello-World.git"
deploy_on = { branches = ["main"], tags = ["*cicd*", "simple-*"] }

[[app]]
name = "api"
hosts = ["api.local"]
[app.process]
command = ["true"]
[app.source]
repo = "git@gitlab.example.com:team/api.git"
deploy_on = { branches = ["main"], tags = ["*cicd*"] }
"#;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub store: Store,
    pub prefix: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Harness {
    /// The receiver with all four providers (GitHub with two secrets) and `extra` config lines in [webhook].
    pub fn start(extra: &str) -> Harness {
        Harness::start_with(extra, APPS)
    }

    pub fn start_with(extra: &str, apps: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("{value}\n")).unwrap();
            path
        };
        write("github.secret", GITHUB_SECRET);
        write("github.next", GITHUB_NEXT_SECRET);
        write("gitlab.token", GITLAB_TOKEN);
        write("gitea.secret", GITEA_SECRET);
        write("bitbucket.secret", BITBUCKET_SECRET);
        let text = format!(
            r#"
state_dir = "state"
[webhook]
listen = "127.0.0.1:0"
github_secret_file = ["github.secret", "github.next"]
gitlab_token_file = "gitlab.token"
gitea_secret_file = "gitea.secret"
bitbucket_secret_file = "bitbucket.secret"
{extra}
{apps}
"#
        );
        let config_path = dir.path().join("cutover.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::load(&config_path).unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let store = Store::open(&config.database_path()).unwrap();
        let prefix = config.webhook.as_ref().unwrap().path_prefix.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let receiver = runtime
            .block_on(Receiver::bind(Arc::new(config), store.clone()))
            .unwrap();
        let addr = receiver.local_addr().unwrap();
        runtime.spawn(receiver.serve(async {
            let _ = stopped.await;
        }));
        Harness {
            dir,
            addr,
            store,
            prefix,
            stop: Some(stop),
            runtime: Some(runtime),
        }
    }

    pub fn path(&self, provider: &str) -> String {
        format!("{}/{provider}", self.prefix)
    }

    pub fn post(&self, provider: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
        post(self.addr, &self.path(provider), headers, body)
    }

    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        let mut all = self.store.deliveries(10_000).unwrap();
        all.reverse();
        all
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// One POST on a fresh connection; `Content-Length` is added.
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    http::post(addr, path, &headers, body)
}

pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    cutover_webhook::signature::sign_sha256(secret.as_bytes(), body)
}

/// Headers of a signed GitHub delivery.
pub fn github(event: &str, delivery: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", event.to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(GITHUB_SECRET, body)),
        ),
        ("Content-Type", "application/json".to_string()),
    ]
}

/// A GitHub push payload.
pub fn github_push(full_ref: &str, commit: &str, repo: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": full_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": commit,
        "created": true,
        "deleted": false,
        "head_commit": { "id": commit },
        "repository": {
            "full_name": repo.trim_end_matches(".git").rsplit('/').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("/"),
            "clone_url": repo,
        }
    })
    .to_string()
    .into_bytes()
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}
