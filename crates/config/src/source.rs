//! `[app.source]`: where an app's code lives, which pushes deploy it, and
//! how a commit becomes a release (the git trigger's build pipeline).
//!
//! The raw section ([`RawSource`]) is deserialised strictly like the rest of
//! the file; [`validate`] turns it into a [`SourceConfig`]. Build steps are
//! argv lists from this (trusted) file; values from a webhook never become
//! part of them. Secrets for the build are named by files and read when a
//! build runs, so they never sit in the configuration model.

use crate::docker::SecretSource;
use crate::error::{ConfigError, Located};
use crate::units::HumanDuration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub repo: Spanned<String>,
    pub repository: Option<Spanned<String>>,
    pub deploy_on: Option<Spanned<RawDeployOn>>,
    #[serde(default)]
    pub build: Vec<Vec<String>>,
    pub artifact: Option<Spanned<String>>,
    pub build_timeout: Option<HumanDuration>,
    pub fetch_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub secret_env_files: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployOn {
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An app's git source and build pipeline. See the README's "Git trigger".
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// What `git fetch` is given: a URL (`https://`, `ssh://`, `git://`,
    /// `file://`, `user@host:path`) or an absolute local path.
    pub repo: String,
    /// The repository's name as the git host spells it (`team/web`), when
    /// webhook payloads should be matched by name instead of by URL.
    pub repository: Option<String>,
    pub deploy_on: DeployOn,
    /// Build steps: argv lists run in the checkout, one after the other.
    pub build: Vec<Vec<String>>,
    /// A file glob, relative to the checkout, naming the one file the build
    /// produces; it becomes the release's `{artifact}`.
    pub artifact: Option<String>,
    /// The longest all build steps together may take.
    pub build_timeout: Duration,
    /// The longest one git command (fetch, ls-remote) may take.
    pub fetch_timeout: Duration,
    /// Extra environment of the build steps.
    pub env: BTreeMap<String, String>,
    /// Environment variables of the build steps read from files at build
    /// time; their values are redacted from the build output.
    pub secret_env: BTreeMap<String, SecretSource>,
    /// The app's git workspace: `<state_dir>/workspaces/<app>`.
    pub workspace: PathBuf,
    /// Where built artifacts are kept: `<state_dir>/artifacts/<app>`.
    pub artifacts_dir: PathBuf,
}

/// Which pushes deploy the app: glob patterns on the ref *name* (`main`,
/// `v1.2-cicd`), each list only for refs of its kind. `*` matches any run
/// of characters (`/` included), `?` any one character.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployOn {
    pub branches: Vec<String>,
    pub tags: Vec<String>,
}

/// Whether a ref is a branch or a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    Branch,
    Tag,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
        }
    }

    /// The full ref of a name of this kind (`refs/heads/main`).
    pub fn full_ref(self, name: &str) -> String {
        match self {
            RefKind::Branch => format!("refs/heads/{name}"),
            RefKind::Tag => format!("refs/tags/{name}"),
        }
    }

    /// Splits a full ref into kind and name; `None` for other refs.
    pub fn split(full_ref: &str) -> Option<(RefKind, &str)> {
        if let Some(name) = full_ref.strip_prefix("refs/heads/") {
            Some((RefKind::Branch, name))
        } else {
            full_ref
                .strip_prefix("refs/tags/")
                .map(|name| (RefKind::Tag, name))
        }
    }
}

impl DeployOn {
    /// Whether a push of a ref of `kind` named `name` deploys the app: only
    /// the patterns of that kind are consulted.
    pub fn matches(&self, kind: RefKind, name: &str) -> bool {
        let patterns = match kind {
            RefKind::Branch => &self.branches,
            RefKind::Tag => &self.tags,
        };
        patterns.iter().any(|pattern| glob_match(pattern, name))
    }

    pub fn is_empty(&self) -> bool {
        self.branches.is_empty() && self.tags.is_empty()
    }
}

/// `*` matches any run of characters, `?` one character, the rest itself.
/// Linear-time (no backtracking blow-up on hostile names).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) && pattern[p] != '*' {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Whether `repo` names a transport git may use here: network URLs, local
/// `file://` URLs, scp-like `user@host:path` and absolute paths — never
/// `ext::` or other helper transports, never something like an option.
pub fn repo_is_acceptable(repo: &str) -> bool {
    if repo.is_empty() || repo.starts_with('-') || repo.chars().any(|c| c.is_control()) {
        return false;
    }
    if let Some((scheme, rest)) = repo.split_once("://") {
        return matches!(scheme, "https" | "http" | "ssh" | "git" | "file") && !rest.is_empty();
    }
    if repo.contains("::") {
        return false;
    }
    if repo.starts_with('/') {
        return true;
    }
    // scp-like: user@host:path (a colon before any slash).
    match repo.split_once(':') {
        Some((host, path)) => !host.contains('/') && !host.is_empty() && !path.is_empty(),
        None => false,
    }
}

/// Validates `[app.source]`.
pub(crate) fn validate(
    spanned: &Spanned<RawSource>,
    app: &str,
    base: &Path,
    state_dir: &Path,
    file: &Path,
    text: &str,
) -> Result<SourceConfig, ConfigError> {
    source_config(spanned, app, base, state_dir)
        .map_err(|located| ConfigError::located(file, text, located))
}

/// The section's checks, one field group each, in the order problems are
/// reported.
fn source_config(
    spanned: &Spanned<RawSource>,
    app: &str,
    base: &Path,
    state_dir: &Path,
) -> Result<SourceConfig, Located> {
    let raw = spanned.get_ref();
    let repo = repo(&raw.repo, base)?;
    let repository = raw.repository.as_ref().map(repository).transpose()?;
    let deploy_on = raw
        .deploy_on
        .as_ref()
        .map_or(Ok(DeployOn::default()), deploy_on)?;
    if raw
        .build
        .iter()
        .any(|step| step.first().is_none_or(|program| program.trim().is_empty()))
    {
        return Err((
            spanned.span(),
            format!("every build step of app `{app}` must be an argv list naming a program, e.g. [\"./gradlew\", \"bootJar\"]"),
        ));
    }
    let artifact = raw.artifact.as_ref().map(artifact).transpose()?;
    check_build_env(spanned)?;
    let secret_env = raw
        .secret_env_files
        .iter()
        .map(|(name, path)| (name.clone(), SecretSource::File(base.join(path))))
        .collect();
    let (build_timeout, fetch_timeout) = timeouts(spanned)?;
    Ok(SourceConfig {
        repo,
        repository,
        deploy_on,
        build: raw.build.clone(),
        artifact,
        build_timeout,
        fetch_timeout,
        env: raw.env.clone(),
        secret_env,
        workspace: state_dir.join("workspaces").join(app),
        artifacts_dir: state_dir.join("artifacts").join(app),
    })
}

fn repo(raw: &Spanned<String>, base: &Path) -> Result<String, Located> {
    let mut repo = raw.get_ref().trim().to_string();
    if !repo.contains("://") && !repo.starts_with('/') && !repo.contains(':') {
        // A relative local path: relative to the config file, like every path.
        repo = base.join(&repo).display().to_string();
    }
    if !repo_is_acceptable(&repo) {
        return Err((
            raw.span(),
            format!("repo `{}` is not a repository git may fetch from here: use an https://, ssh://, git:// or file:// URL, user@host:path, or a path", raw.get_ref().escape_debug()),
        ));
    }
    Ok(repo)
}

fn repository(raw: &Spanned<String>) -> Result<String, Located> {
    let value = raw.get_ref().trim().trim_matches('/').to_string();
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            raw.span(),
            "repository must be the repository's name as the git host spells it, e.g. \"team/web\""
                .to_string(),
        ));
    }
    Ok(value)
}

fn deploy_on(raw: &Spanned<RawDeployOn>) -> Result<DeployOn, Located> {
    let value = raw.get_ref();
    for pattern in value.branches.iter().chain(&value.tags) {
        if pattern.trim().is_empty() || pattern.chars().any(|c| c.is_control()) {
            return Err((
                raw.span(),
                "deploy_on patterns must not be empty, e.g. { branches = [\"main\"], tags = [\"*cicd*\"] }".to_string(),
            ));
        }
    }
    Ok(DeployOn {
        branches: value.branches.clone(),
        tags: value.tags.clone(),
    })
}

fn artifact(raw: &Spanned<String>) -> Result<String, Located> {
    let value = raw.get_ref().trim();
    let escapes = Path::new(value)
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if value.is_empty() || value.starts_with('/') || escapes {
        return Err((
            raw.span(),
            format!("artifact `{value}` must be a file glob inside the checkout, e.g. \"build/libs/*.jar\""),
        ));
    }
    Ok(value.to_string())
}

/// Names of `env` and `secret_env_files`: plain names, never `CUTOVER_*`
/// (cutover's own variables of the build).
fn check_build_env(spanned: &Spanned<RawSource>) -> Result<(), Located> {
    let raw = spanned.get_ref();
    for name in raw.env.keys().chain(raw.secret_env_files.keys()) {
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || name.starts_with("CUTOVER_") {
            return Err((
                spanned.span(),
                format!("build environment variable `{name}` is not allowed: use letters, digits and `_`, not starting with a digit or CUTOVER_"),
            ));
        }
    }
    Ok(())
}

/// `build_timeout` (30 minutes) and `fetch_timeout` (5 minutes).
fn timeouts(spanned: &Spanned<RawSource>) -> Result<(Duration, Duration), Located> {
    let raw = spanned.get_ref();
    let build_timeout = raw
        .build_timeout
        .map_or(Duration::from_secs(30 * 60), |d| d.0);
    let fetch_timeout = raw
        .fetch_timeout
        .map_or(Duration::from_secs(5 * 60), |d| d.0);
    if build_timeout.is_zero() || fetch_timeout.is_zero() {
        return Err((
            spanned.span(),
            "build_timeout and fetch_timeout must be longer than 0s".to_string(),
        ));
    }
    Ok((build_timeout, fetch_timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*cicd*", "v1.0-cicd"));
        assert!(glob_match("*cicd*", "cicd"));
        assert!(glob_match("*cicd*", "release/x-cicd-2"));
        assert!(!glob_match("*cicd*", "v1.0-cid"));
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "main2"));
        assert!(glob_match("release/*", "release/1.2"));
        assert!(glob_match("v?.*", "v1.2"));
        assert!(!glob_match("v?.*", "v12.2"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b*c*d*e*f*g*h*z", &"a".repeat(200)));
    }

    #[test]
    fn rules_only_consult_their_kind() {
        let on = DeployOn {
            branches: vec!["main".into()],
            tags: vec!["*cicd*".into()],
        };
        assert!(on.matches(RefKind::Tag, "v1-cicd"));
        assert!(!on.matches(RefKind::Branch, "v1-cicd"));
        assert!(on.matches(RefKind::Branch, "main"));
        assert!(!on.matches(RefKind::Tag, "main"));
    }

    #[test]
    fn repos() {
        for ok in [
            "https://github.com/team/web.git",
            "file:///srv/git/web.git",
            "git@github.com:team/web.git",
            "/srv/git/web.git",
            "ssh://git@host:22/web.git",
        ] {
            assert!(repo_is_acceptable(ok), "{ok}");
        }
        for bad in [
            "ext::sh -c touch% /tmp/pwned",
            "-uhttps://x",
            "",
            "fd::17",
            "relative/path",
            "ftp://x/y",
            "https://x/\ny",
        ] {
            assert!(!repo_is_acceptable(bad), "{bad}");
        }
    }
}
