//! The git trigger's test bench: a real bare repository (reached by a
//! `file://` URL) holding a small app whose build step writes the artifact,
//! a working clone to commit and push from, a daemon configured to build
//! from it, and a client that posts signed GitHub-style webhooks.

use super::{free_port, testapp_bin, Daemon};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

pub struct Repo {
    pub dir: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
}

/// Runs git with a fixed identity and no user or system configuration.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl Repo {
    /// A bare repository with one commit on `main` (MESSAGE `r0`).
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("origin.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(
            dir.path(),
            &[
                "init",
                "--quiet",
                "--bare",
                "-b",
                "main",
                bare.to_str().unwrap(),
            ],
        );
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        std::fs::write(work.join("build.sh"), BUILD_SH).unwrap();
        let repo = Repo { dir, bare, work };
        repo.commit("r0");
        repo.push("main");
        repo
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Commits MESSAGE = `message`; the new commit's sha.
    pub fn commit(&self, message: &str) -> String {
        std::fs::write(self.work.join("MESSAGE"), message).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        self.rev("HEAD")
    }

    pub fn rev(&self, rev: &str) -> String {
        git(&self.work, &["rev-parse", rev])
    }

    /// Pushes HEAD to the branch `branch` (any name git accepts).
    pub fn push(&self, branch: &str) {
        git(
            &self.work,
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
    }

    /// Tags HEAD (annotated with a message, or lightweight) and pushes the
    /// tag; the sha the tag ref points at (the tag object when annotated).
    pub fn tag(&self, name: &str, annotated: bool) -> String {
        if annotated {
            git(&self.work, &["tag", "-a", "-m", name, name]);
        } else {
            git(&self.work, &["tag", name]);
        }
        git(
            &self.work,
            &["push", "--quiet", "origin", &format!("refs/tags/{name}")],
        );
        git(&self.work, &["rev-parse", &format!("refs/tags/{name}")])
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
            testapp = testapp_bin().display(),
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

#[derive(Debug)]
pub struct HookReply {
    pub status: u16,
    pub body: String,
    pub took: Duration,
}

impl Hooks {
    /// A GitHub push of `full_ref` at `after` (with `head_commit` when given).
    pub fn push(
        &self,
        delivery: &str,
        full_ref: &str,
        after: &str,
        head_commit: Option<&str>,
    ) -> HookReply {
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

    pub fn post(&self, headers: &[(&str, &str)], body: &[u8]) -> HookReply {
        let signature = format!(
            "sha256={}",
            cutover_webhook::signature::sign_sha256(WEBHOOK_SECRET.as_bytes(), body)
        );
        let mut request = format!(
            "POST /_cutover/hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Hub-Signature-256: {signature}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let started = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer from the webhook receiver: {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        HookReply { status, body, took }
    }
}
