//! git with a fixed identity and no user or system configuration; a bare
//! origin (reached by a `file://` URL) with a working clone to commit and
//! push from.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in `dir`; its trimmed stdout. Fails the test if git fails.
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

/// A bare repository `origin.git` and a clone `work` whose default branch
/// is `main`, both in a temporary directory; no commits yet.
pub struct Repo {
    pub dir: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("origin.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let bare_path = bare.to_str().expect("a UTF-8 temporary path");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "-b", "main", bare_path],
        );
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare_path]);
        Repo { dir, bare, work }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Commits everything in the working clone; the new commit's sha.
    pub fn commit(&self, message: &str) -> String {
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
}

impl Default for Repo {
    fn default() -> Self {
        Repo::new()
    }
}
