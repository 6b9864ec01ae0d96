//! The git trigger's test bench: a real bare repository (reached by a
//! `file://` URL) holding a small app whose build step writes the artifact,
//! a working clone to commit and push from, a daemon configured to build
//! from it, and a client that posts signed GitHub-style webhooks.

use super::Daemon;
use cutover_test_support::http::{self, Reply};
use cutover_test_support::ports::free_port;
use cutover_test_support::{binaries, git};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;

pub const WEBHOOK_SECRET: &str = "webhook secret for tests";
pub const BUILD_TOKEN: &str = "build-token-s3cr3t";

/// The app's build: writes `dist/app.sh`, which runs the test app answering
/// `version=<MESSAGE>`. It prints its inputs (quoted: they are data), counts
/// its runs in `$COUNTER`, prints the build secret (which must show up
/// redacted), and with a `WAIT` file waits for `$GATE` to exist.
const BUILD_SH: &str = r#"#!/bin/sh
set -eu
echo "building $CUTOVER_APP $CUTOVER_VERSION at $CUTOVER_COMMIT from $CUTOVER_REF"
echo "$CUTOVER_COMMIT" >> "$COUNTER"
echo "token: $BUILD_TOKEN"
if [ -f WAIT ]; then
  echo "waiting for $GATE"
  i=0
  while [ ! -e "$GATE" ] && [ "$i" -lt 900 ]; do sleep 0.1; i=$((i+1)); done
fi
mkdir -p dist
printf '#!/bin/sh\nexec "%s" --port "$1" --version "%s"\n' "$TESTAPP" "$(cat MESSAGE)" > dist/app.sh
echo "built dist/app.sh"
"#;

/// The app's repository: [`git::Repo`] whose commits set `MESSAGE`, the
/// version the built app answers with.
pub struct Repo {
    pub git: git::Repo,
}

impl Deref for Repo {
    type Target = git::Repo;

    fn deref(&self) -> &git::Repo {
        &self.git
    }
}

impl Repo {
    /// A bare repository with one commit on `main` (MESSAGE `r0`).
    pub fn new() -> Repo {
        let repo = Repo {
            git: git::Repo::new(),
        };
        std::fs::write(repo.work.join("build.sh"), BUILD_SH).unwrap();
        repo.commit("r0");
        repo.push("main");
        repo
    }

    /// Commits MESSAGE = `message`; the new commit's sha.
    pub fn commit(&self, message: &str) -> String {
        std::fs::write(self.work.join("MESSAGE"), message).unwrap();
        self.git.commit(message)
    }

    /// Files that count builds and hold the gate of slow builds.
    pub fn counter(&self) -> PathBuf {
        self.dir.path().join("builds.count")
    }

    pub fn gate(&self) -> PathBuf {
        self.dir.path().join("gate")
    }

    /// How many builds ran their build step.
    pub fn builds(&self) -> usize {
        std::fs::read_to_string(self.counter())
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The `[[app]]` `web` built from this repository plus `[webhook]`
    /// (GitHub secret, its own port), for [`Daemon::start_with_apps`].
    pub fn config(&self, webhook_port: u16, deploy_on: &str) -> String {
        let secret = self.dir.path().join("github.secret");
        std::fs::write(&secret, format!("{WEBHOOK_SECRET}\n")).unwrap();
        let token = self.dir.path().join("build.token");
        std::fs::write(&token, BUILD_TOKEN).unwrap();
        format!(
            r#"
[[app]]
name = "web"
drain_timeout = "5s"

[app.health]
path = "/health"
deploy_timeout = "20s"
interval = "1s"

[app.process]
command = ["sh", "{{artifact}}", "{{port}}"]
stop_timeout = "5s"

[app.source]
repo = "{url}"
deploy_on = {deploy_on}
build = [["sh", "build.sh"]]
artifact = "dist/*.sh"
build_timeout = "2m"
fetch_timeout = "30s"
env = {{ TESTAPP = "{testapp}", COUNTER = "{counter}", GATE = "{gate}" }}
secret_env_files = {{ BUILD_TOKEN = "{token}" }}

[webhook]
listen = "127.0.0.1:{webhook_port}"
github_secret_file = "{secret}"
"#,
            url = self.url(),
            testapp = binaries::testapp().display(),
            counter = self.counter().display(),
            gate = self.gate().display(),
            token = token.display(),
            secret = secret.display(),
        )
    }
}

/// A daemon building `web` from `repo`, and its webhook port.
pub fn daemon_for(repo: &Repo, deploy_on: &str) -> (Daemon, Hooks) {
    let port = free_port();
    let daemon = Daemon::start_with_apps(&repo.config(port, deploy_on));
    (
        daemon,
        Hooks {
            port,
            repo_url: repo.url(),
        },
    )
}

/// Posts signed GitHub webhooks to a daemon.
pub struct Hooks {
    pub port: u16,
    pub repo_url: String,
}

impl Hooks {
    /// A GitHub push of `full_ref` at `after` (with `head_commit` when given).
    pub fn push(
        &self,
        delivery: &str,
        full_ref: &str,
        after: &str,
        head_commit: Option<&str>,
    ) -> Reply {
        let body = serde_json::json!({
            "ref": full_ref,
            "before": "0000000000000000000000000000000000000000",
            "after": after,
            "created": false,
            "deleted": false,
            "head_commit": head_commit.map(|id| serde_json::json!({ "id": id })),
            "repository": { "full_name": "team/web", "clone_url": self.repo_url },
        })
        .to_string();
        self.post(
            &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", delivery)],
            body.as_bytes(),
        )
    }

    pub fn post(&self, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let signature = format!(
            "sha256={}",
            cutover_webhook::signature::sign_sha256(WEBHOOK_SECRET.as_bytes(), body)
        );
        let mut signed = vec![
            ("Content-Type", "application/json"),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        signed.extend_from_slice(headers);
        http::post(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            "/_cutover/hooks/github",
            &signed,
            body,
        )
    }
}
