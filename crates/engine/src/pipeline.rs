//! The git trigger's build pipeline: a deployment that carries source facts
//! (provider, delivery, ref, commit) builds its release in its `preparing`
//! step, before anything starts in a slot:
//!
//! 1. fetch the ref into the app's workspace (`<state_dir>/workspaces/<app>`)
//!    with the `git` CLI — no shell, the ref validated and passed after `--`;
//! 2. resolve the commit (an annotated tag's object to its commit); unless
//!    forced, refuse a commit that is live already or older than the live
//!    one (`git merge-base --is-ancestor`);
//! 3. check out exactly that commit (a clean tree), then ask the repository
//!    again that the ref still points at it;
//! 4. run the build steps (argv lists from the config) with a timeout and a
//!    minimal environment plus `CUTOVER_COMMIT`, `CUTOVER_REF`, `CUTOVER_APP`,
//!    their output (secrets redacted) in the deployment's events and build log;
//! 5. copy the artifact into `<state_dir>/artifacts/<app>/<version>/`; the
//!    deployment records the release (with its commit) and goes on as usual.
//!
//! Bursts collapse in the app's actor queue like any deployment; a build
//! that finds its ref moved on ends without building (the newer push
//! deploys the newer commit).

mod artifact;
mod child;
mod git;
mod redact;
mod steps;

use crate::cancel::{CancelSignal, Interrupt};
use crate::error::EngineError;
use crate::journal::{BuildState, Journal};
use cutover_config::git_ref::{check_ref_name, split_ref, validate_commit};
use cutover_config::{RefKind, SourceConfig};
use cutover_store::DeploymentSource;
use git::{Git, GitFailure};
use redact::Redactor;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a build needs, as plain facts: the pipeline knows nothing of the
/// deployment that runs it beyond these and its journal.
pub(crate) struct BuildInput<'a> {
    pub app: &'a str,
    pub source: &'a SourceConfig,
    /// The trigger facts: ref and commit.
    pub facts: &'a DeploymentSource,
    pub version: &'a str,
    pub deployment_id: i64,
    /// Where the build log goes.
    pub logs_dir: &'a Path,
    /// The live release's commit, when it was built from git: unless
    /// `force`, that commit and older ones are not built again.
    pub live: Option<LiveCommit>,
    pub force: bool,
}

pub(crate) struct LiveCommit {
    pub commit: String,
    pub version: String,
}

/// What a build produced.
pub(crate) struct Built {
    /// The commit built (an annotated tag peeled).
    pub commit: String,
    /// The kept artifact, when the source names one.
    pub artifact: Option<PathBuf>,
}

/// Why a build produced nothing.
pub(crate) enum BuildError {
    Failed(String),
    /// Not built on purpose: the commit is live or older, or the ref moved on.
    Skipped(String),
    Interrupted(Interrupt),
}

impl From<Interrupt> for BuildError {
    fn from(why: Interrupt) -> BuildError {
        BuildError::Interrupted(why)
    }
}

/// The build, run in a deployment's `preparing` step; its progress (and
/// the build state) goes to `journal`.
pub(crate) async fn build(
    input: &BuildInput<'_>,
    journal: &Journal,
    cancel: &mut CancelSignal,
) -> Result<Built, BuildError> {
    let result = build_release(input, journal, cancel).await;
    journal
        .build_state(match &result {
            Ok(_) => BuildState::Built,
            Err(BuildError::Failed(_)) => BuildState::Failed,
            Err(BuildError::Skipped(_) | BuildError::Interrupted(_)) => BuildState::Skipped,
        })
        .await;
    result
}

async fn build_release(
    input: &BuildInput<'_>,
    journal: &Journal,
    cancel: &mut CancelSignal,
) -> Result<Built, BuildError> {
    let (kind, ref_name) = split_ref(&input.facts.git_ref).map_err(BuildError::Failed)?;
    let requested = validate_commit(&input.facts.commit).map_err(BuildError::Failed)?;
    let (redactor, secret_env) = read_secrets(input.source)?;
    let workspace = Workspace {
        git: Git {
            dir: &input.source.workspace,
            timeout: input.source.fetch_timeout,
            redactor: &redactor,
        },
        input,
        journal,
        repo_shown: redactor.apply(&input.source.repo),
    };
    journal.build_state(BuildState::Fetching).await;
    workspace.fetch(cancel).await?;
    let commit = workspace.resolve_commit(&requested, cancel).await?;
    if let (false, Some(live)) = (input.force, &input.live) {
        workspace
            .refuse_live_or_older(&commit, live, cancel)
            .await?;
    }
    workspace.checkout(&commit, cancel).await?;
    workspace.recheck_ref(&commit, cancel).await?;
    workspace.keep_reachable(&commit).await;
    journal.build_state(BuildState::Building).await;
    let mut env = secret_env;
    env.extend([
        ("CUTOVER_REF_NAME".to_string(), ref_name.to_string()),
        ("CUTOVER_REF_KIND".to_string(), kind.as_str().to_string()),
    ]);
    let artifact = workspace.run_build(&commit, env, cancel).await?;
    Ok(Built { commit, artifact })
}

/// The build's secrets from `secret_env`, and a redactor that hides them
/// (and the repository URL's password) in everything the build records.
fn read_secrets(source: &SourceConfig) -> Result<(Redactor, Vec<(String, String)>), BuildError> {
    let mut redactor = url_redactor(&source.repo);
    let mut secret_env = Vec::new();
    for (name, secret) in &source.secret_env {
        let value = read_secret(secret).map_err(|why| {
            BuildError::Failed(format!("cannot read the build secret {name}: {why}"))
        })?;
        redactor.add(&value);
        secret_env.push((name.clone(), value));
    }
    Ok((redactor, secret_env))
}

/// The app's git workspace during one build.
struct Workspace<'a> {
    git: Git<'a>,
    input: &'a BuildInput<'a>,
    journal: &'a Journal,
    /// The repository URL as it may be shown (password redacted).
    repo_shown: String,
}

impl Workspace<'_> {
    fn git_ref(&self) -> &str {
        &self.input.facts.git_ref
    }

    /// Fetches the ref into one scratch ref (no clash between `a` and
    /// `a/b`); built commits stay reachable under refs/cutover/built/.
    async fn fetch(&self, cancel: &mut CancelSignal) -> Result<(), BuildError> {
        let (git_ref, repo) = (self.git_ref(), &self.input.source.repo);
        self.journal
            .note(&format!("fetching {git_ref} from {}", self.repo_shown))
            .await;
        let workspace = self.git.dir;
        let fetch = async {
            artifact::private_dir(workspace)
                .map_err(|e| format!("cannot create the workspace {}: {e}", workspace.display()))?;
            if !workspace.join(".git").exists() {
                self.git
                    .run(&["init", "--quiet"])
                    .await
                    .map_err(|e| e.describe("creating the workspace"))?;
            }
            let refspec = format!("+{git_ref}:refs/cutover/fetched");
            let args = [
                "fetch",
                "--quiet",
                "--force",
                "--no-tags",
                "--no-recurse-submodules",
                "--",
                repo,
                &refspec,
            ];
            self.git
                .run(&args)
                .await
                .map_err(|e| e.describe(&format!("fetching {git_ref} from {}", self.repo_shown)))?;
            Ok::<_, String>(())
        };
        cancel.until(fetch).await?.map_err(BuildError::Failed)
    }

    /// The object named in the push, as a commit (an annotated tag peeled).
    async fn resolve_commit(
        &self,
        requested: &str,
        cancel: &mut CancelSignal,
    ) -> Result<String, BuildError> {
        let object = format!("{requested}^{{commit}}");
        let args = ["rev-parse", "--verify", "--quiet", &object];
        let peeled = self.git.run(&args);
        let commit = match cancel.until(peeled).await? {
            Ok(out) => validate_commit(out.trim()).map_err(BuildError::Failed)?,
            Err(_) => {
                return Err(BuildError::Skipped(format!(
                    "commit {} is not on {} of {} (the ref was moved or rewritten since); not deploying it",
                    short(requested),
                    self.git_ref(),
                    self.repo_shown
                )))
            }
        };
        if commit != requested {
            let message = format!(
                "tag object {} points at commit {}",
                short(requested),
                short(&commit)
            );
            self.journal.note(&message).await;
            self.journal.source_commit(&commit).await;
        }
        Ok(commit)
    }

    /// Unless forced: a commit that is live already, or older than the
    /// live one (`git merge-base --is-ancestor`), is not built.
    async fn refuse_live_or_older(
        &self,
        commit: &str,
        live: &LiveCommit,
        cancel: &mut CancelSignal,
    ) -> Result<(), BuildError> {
        let app = self.input.app;
        if live.commit == commit {
            return Err(BuildError::Skipped(format!(
                "commit {} is already live ({app} {}); pass --force to build and deploy it again",
                short(commit),
                live.version
            )));
        }
        let args = ["merge-base", "--is-ancestor", commit, &live.commit];
        let ancestry = self.git.run(&args);
        match cancel.until(ancestry).await? {
            Ok(_) => Err(BuildError::Skipped(format!(
                "commit {} is older than the live commit {} ({app} {}); not deploying it (pass --force to deploy it anyway)",
                short(commit),
                short(&live.commit),
                live.version
            ))),
            Err(GitFailure::Exit(Some(1), _)) => Ok(()),
            Err(failure) => {
                let message = format!(
                    "cannot tell whether {} is older than the live commit {} ({}); building it",
                    short(commit),
                    short(&live.commit),
                    failure.describe("git merge-base")
                );
                self.journal.note(&message).await;
                Ok(())
            }
        }
    }

    /// Checks out exactly `commit` in a clean tree.
    async fn checkout(&self, commit: &str, cancel: &mut CancelSignal) -> Result<(), BuildError> {
        let checkout = async {
            self.git
                .run(&["checkout", "--quiet", "--force", "--detach", commit])
                .await
                .map_err(|e| e.describe(&format!("checking out {}", short(commit))))?;
            self.git
                .run(&["clean", "--quiet", "-ffdx"])
                .await
                .map_err(|e| e.describe("cleaning the workspace"))?;
            Ok::<_, String>(())
        };
        cancel.until(checkout).await?.map_err(BuildError::Failed)
    }

    /// Asks the repository again: the ref must still point at the commit
    /// checked out (else the newer push deploys the newer commit).
    async fn recheck_ref(&self, commit: &str, cancel: &mut CancelSignal) -> Result<(), BuildError> {
        let git_ref = self.git_ref();
        let refs = [git_ref.to_string()];
        let listing = self.git.ls_remote(&self.input.source.repo, &refs);
        let remote = cancel.until(listing).await?.map_err(|e| {
            BuildError::Failed(e.describe(&format!("re-checking {git_ref} at {}", self.repo_shown)))
        })?;
        let now = match remote.first() {
            None => {
                return Err(BuildError::Skipped(format!(
                    "{git_ref} no longer exists in {}; not deploying {}",
                    self.repo_shown,
                    short(commit)
                )))
            }
            Some(now) if now.commit() != commit => now,
            Some(_) => return Ok(()),
        };
        // A server that did not say what the tag peels to: peel it here
        // (the fetch brought the tag object).
        let peeled_here = match (&now.peeled, validate_commit(&now.object)) {
            (None, Ok(object)) => self.peel(&object).await,
            _ => None,
        };
        if peeled_here.as_deref() == Some(commit) {
            return Ok(());
        }
        Err(BuildError::Skipped(format!(
            "{git_ref} moved from {} to {} since; not deploying an outdated commit (the newer push deploys the newer one)",
            short(commit),
            short(now.commit())
        )))
    }

    async fn peel(&self, object: &str) -> Option<String> {
        let object = format!("{object}^{{commit}}");
        self.git
            .run(&["rev-parse", "--verify", "--quiet", &object])
            .await
            .ok()
            .map(|out| out.trim().to_string())
    }

    /// Keeps the commit reachable: a later build compares against it.
    async fn keep_reachable(&self, commit: &str) {
        let keep = format!("refs/cutover/built/{commit}");
        if let Err(e) = self.git.run(&["update-ref", &keep, commit]).await {
            self.journal
                .note(&e.describe("keeping a ref to the commit"))
                .await;
        }
    }

    /// Runs the build steps with `extra_env` (secrets, ref facts) on top of
    /// the minimal environment, then keeps the artifact.
    async fn run_build(
        &self,
        commit: &str,
        extra_env: Vec<(String, String)>,
        cancel: &mut CancelSignal,
    ) -> Result<Option<PathBuf>, BuildError> {
        let (input, source) = (self.input, self.input.source);
        let (app, version, git_ref) = (input.app, input.version, self.git_ref());
        let started = Instant::now();
        let env = self.build_env(commit, extra_env);
        let log_path = input
            .logs_dir
            .join(format!("{}-build.log", input.deployment_id));
        let announce = format!(
            "building {app} {version} from {} ({git_ref}): {} step(s), output in {}",
            short(commit),
            source.build.len(),
            log_path.display()
        );
        self.journal.note(&announce).await;
        let build = steps::run_steps(
            &source.build,
            self.git.dir,
            &env,
            started + source.build_timeout,
            source.build_timeout,
            &log_path,
            self.journal,
            self.git.redactor,
        );
        cancel.until(build).await?.map_err(BuildError::Failed)?;
        let artifact = match &source.artifact {
            None => None,
            Some(pattern) => Some(
                artifact::keep_artifact(self.git.dir, pattern, &source.artifacts_dir.join(version))
                    .map_err(BuildError::Failed)?,
            ),
        };
        let kept = artifact
            .as_ref()
            .map(|p| format!("; artifact {}", p.display()))
            .unwrap_or_default();
        let built = format!(
            "built {version} from {} in {:.1}s{kept}",
            short(commit),
            started.elapsed().as_secs_f64()
        );
        self.journal.note(&built).await;
        Ok(artifact)
    }

    fn build_env(&self, commit: &str, extra_env: Vec<(String, String)>) -> Vec<(String, String)> {
        let input = self.input;
        let mut env = child::base_env();
        env.extend(input.source.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(extra_env);
        env.extend([
            ("CUTOVER_APP".to_string(), input.app.to_string()),
            ("CUTOVER_COMMIT".to_string(), commit.to_string()),
            ("CUTOVER_REF".to_string(), self.git_ref().to_string()),
            ("CUTOVER_VERSION".to_string(), input.version.to_string()),
            (
                "CUTOVER_DEPLOYMENT".to_string(),
                input.deployment_id.to_string(),
            ),
        ]);
        env
    }
}

fn url_redactor(repo: &str) -> Redactor {
    let mut redactor = Redactor::default();
    redactor.add_url_password(repo);
    redactor
}

/// Finds where a branch, tag or full ref points in the app's repository.
pub(crate) async fn resolve_ref(
    source: &SourceConfig,
    reference: &str,
) -> Result<(String, String), EngineError> {
    let reference = reference.trim();
    let candidates: Vec<String> = if reference.starts_with("refs/") {
        split_ref(reference).map_err(EngineError::BadRequest)?;
        vec![reference.to_string()]
    } else {
        check_ref_name(reference).map_err(EngineError::BadRequest)?;
        vec![
            RefKind::Branch.full_ref(reference),
            RefKind::Tag.full_ref(reference),
        ]
    };
    let redactor = url_redactor(&source.repo);
    let git = Git {
        dir: Path::new("/"),
        timeout: source.fetch_timeout,
        redactor: &redactor,
    };
    let found = git
        .ls_remote(&source.repo, &candidates)
        .await
        .map_err(|e| {
            EngineError::Conflict(e.describe(&format!(
                "asking {} for {}",
                redactor.apply(&source.repo),
                reference.escape_debug()
            )))
        })?;
    match found.as_slice() {
        [] => Err(EngineError::BadRequest(format!(
            "{} has no branch or tag `{}`",
            redactor.apply(&source.repo),
            reference.escape_debug()
        ))),
        [one] => Ok((
            one.name.clone(),
            validate_commit(one.commit()).map_err(EngineError::Conflict)?,
        )),
        _ => Err(EngineError::BadRequest(format!(
            "`{}` names both a branch and a tag; pass refs/heads/{0} or refs/tags/{0}",
            reference.escape_debug()
        ))),
    }
}

/// The version of a release built from git: the ref's name in the version
/// alphabet, then the commit's first 12 digits (`v1.2-cicd-1a2b3c4d5e6f`).
pub(crate) fn version_for(kind: RefKind, name: &str, commit: &str) -> String {
    let _ = kind;
    let mut label = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '-'
        };
        // Runs of replaced characters collapse to one `-`.
        if !(c == '-' && label.ends_with('-')) {
            label.push(c);
        }
    }
    let mut label = label
        .trim_start_matches(['-', '.'])
        .trim_end_matches('-')
        .to_string();
    label.truncate(96);
    if label.is_empty() {
        label = "git".to_string();
    }
    format!("{label}-{}", &commit[..12.min(commit.len())])
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

fn read_secret(secret: &cutover_config::docker::SecretSource) -> Result<String, String> {
    use cutover_config::docker::SecretSource;
    let value = match secret {
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        SecretSource::Env(name) => std::env::var(name)
            .map_err(|_| format!("the environment variable {name} is not set"))?,
    };
    let value = value.trim_end_matches(['\r', '\n']).to_string();
    if value.is_empty() {
        return Err("it is empty".to_string());
    }
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_derive_from_ref_and_commit() {
        let sha = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d";
        assert_eq!(
            version_for(RefKind::Tag, "v1.2-cicd", sha),
            "v1.2-cicd-1a2b3c4d5e6f"
        );
        assert_eq!(
            version_for(RefKind::Branch, "feature/$(x)", sha),
            "feature-x-1a2b3c4d5e6f"
        );
        assert_eq!(version_for(RefKind::Branch, "..", sha), "git-1a2b3c4d5e6f");
    }
}
