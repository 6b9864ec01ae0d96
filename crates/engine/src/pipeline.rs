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
//! 5. copy the artifact into `<state_dir>/artifacts/<app>/<version>/` and
//!    record the release (with its commit); the deployment goes on as usual.
//!
//! Bursts collapse in the app's actor queue like any deployment; a build
//! that finds its ref moved on ends without building (the newer push
//! deploys the newer commit).

mod git;
mod redact;

use crate::deployment::{note, until_cancelled, DeploymentJob, Stop};
use crate::engine::{blocking, DeployRequest, Engine};
use crate::error::EngineError;
use crate::events::EventBus;
use cutover_config::source::glob_match;
use cutover_config::{RefKind, SourceConfig};
use cutover_store::{DeploymentRecord, DeploymentSource, ReleaseRecord, Store};
use git::{Git, GitFailure};
use redact::Redactor;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Lines of build output recorded as events; the rest is in the build log.
const MAX_OUTPUT_EVENTS: usize = 200;
/// Lines of build output quoted in a failure reason.
const FAILURE_TAIL_LINES: usize = 20;
/// Longest line of build output kept as one (longer ones are split).
const MAX_LINE: usize = 4 * 1024;

/// A request to build a commit of an app's source and deploy it.
#[derive(Debug, Clone)]
pub struct SourceRequest {
    /// `github`, `gitlab`, `gitea`, `bitbucket`, or `cli`.
    pub provider: String,
    /// The provider's delivery id.
    pub delivery: Option<String>,
    /// The full ref: `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub git_ref: String,
    /// The commit (full sha) the ref pointed at when the push happened.
    pub commit: String,
    /// Deploy even a commit that is live already or older than the live one.
    pub force: bool,
    /// Recorded as the deployment's trigger (`webhook`, `cli`).
    pub trigger: String,
}

impl Engine {
    /// Queues a deployment that builds `request.commit` of the app's
    /// `[app.source]` and deploys the result. Returns at once.
    pub async fn deploy_source(
        &self,
        app: &str,
        request: SourceRequest,
    ) -> Result<DeploymentRecord, EngineError> {
        self.source_of(app)?;
        let (kind, name) = split_ref(&request.git_ref).map_err(EngineError::BadRequest)?;
        let commit = validate_commit(&request.commit).map_err(EngineError::BadRequest)?;
        let version = version_for(kind, name, &commit);
        let source = DeploymentSource {
            provider: request.provider,
            delivery: request.delivery,
            git_ref: request.git_ref,
            commit,
            build: Some("queued".to_string()),
        };
        self.deploy(
            app,
            DeployRequest {
                version,
                trigger: request.trigger,
                force: request.force,
                source: Some(source),
            },
        )
        .await
    }

    /// `cutover deploy APP --ref REF`: asks the repository where `reference`
    /// (a branch or tag name, or a full ref) points, then queues the same
    /// build and deployment a webhook would.
    pub async fn deploy_ref(
        &self,
        app: &str,
        reference: &str,
        force: bool,
        trigger: &str,
    ) -> Result<DeploymentRecord, EngineError> {
        let source = self.source_of(app)?.clone();
        let (git_ref, commit) = resolve(&source, reference).await?;
        self.deploy_source(
            app,
            SourceRequest {
                provider: "cli".to_string(),
                delivery: None,
                git_ref,
                commit,
                force,
                trigger: trigger.to_string(),
            },
        )
        .await
    }

    fn source_of(&self, app: &str) -> Result<&SourceConfig, EngineError> {
        let config = self
            .config()
            .app(app)
            .ok_or_else(|| EngineError::UnknownApp(app.to_string()))?;
        config.source.as_ref().ok_or_else(|| {
            EngineError::BadRequest(format!(
                "app `{app}` has no [app.source] (repo, build, artifact), so it cannot be deployed from a git ref; deploy a version with --version"
            ))
        })
    }
}

/// Finds where a branch, tag or full ref points in the app's repository.
async fn resolve(source: &SourceConfig, reference: &str) -> Result<(String, String), EngineError> {
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

/// Checks a full ref (`refs/heads/…` or `refs/tags/…`) and splits it.
pub fn split_ref(full_ref: &str) -> Result<(RefKind, &str), String> {
    let (kind, name) = RefKind::split(full_ref).ok_or_else(|| {
        format!(
            "ref `{}` is neither a branch (refs/heads/…) nor a tag (refs/tags/…)",
            full_ref.escape_debug()
        )
    })?;
    check_ref_name(name)?;
    Ok((kind, name))
}

/// Git's rules for ref names (`git check-ref-format`), plus: never starting
/// with `-`, at most 255 bytes. Shell metacharacters that git allows (`$`,
/// `(`, backticks, `;`) are fine: a ref name is only ever passed as data.
pub fn check_ref_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "ref name `{}` is not accepted: {why}",
            name.escape_debug()
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if name.starts_with('-') {
        return bad("it starts with `-`");
    }
    if let Some(c) = name.chars().find(|c| {
        c.is_control() || c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return bad(&format!("it contains {c:?}"));
    }
    if name.contains("..") || name.contains("@{") || name == "@" {
        return bad("it contains `..` or `@{`");
    }
    if name.ends_with('.') || name.ends_with('/') || name.starts_with('/') {
        return bad("it starts or ends with `/` or ends with `.`");
    }
    for component in name.split('/') {
        if component.is_empty() || component.starts_with('.') || component.ends_with(".lock") {
            return bad("a component is empty, starts with `.` or ends with `.lock`");
        }
    }
    Ok(())
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits; lower-cased.
pub fn validate_commit(commit: &str) -> Result<String, String> {
    let commit = commit.trim().to_ascii_lowercase();
    if matches!(commit.len(), 40 | 64) && commit.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(commit)
    } else {
        Err(format!(
            "`{}` is not a full commit id (40 or 64 hex digits)",
            commit.escape_debug()
        ))
    }
}

/// The version of a release built from git: the ref's name in the version
/// alphabet, then the commit's first 12 digits (`v1.2-cicd-1a2b3c4d5e6f`).
pub fn version_for(kind: RefKind, name: &str, commit: &str) -> String {
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

/// Kills a child's whole process group when dropped (a timeout, an abort,
/// or leftovers such as daemons a build started).
pub(crate) struct GroupGuard(Option<i32>);

impl GroupGuard {
    pub(crate) fn new(pid: Option<u32>) -> GroupGuard {
        GroupGuard(pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The environment every command of the pipeline starts from: enough to
/// find programs and a home directory, nothing of cutover's own.
pub(crate) fn base_env() -> Vec<(String, String)> {
    let mut env = vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string()),
    )];
    for name in ["HOME", "USER", "LOGNAME", "LANG", "TMPDIR"] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.to_string(), value));
        }
    }
    env
}

fn url_redactor(repo: &str) -> Redactor {
    let mut redactor = Redactor::default();
    redactor.add_url_password(repo);
    redactor
}

/// Writes notes (events) of a deployment without holding the job.
#[derive(Clone)]
struct Notes {
    store: Store,
    events: EventBus,
    id: i64,
    app: String,
}

impl Notes {
    async fn note(&self, message: String) {
        let store = self.store.clone();
        let id = self.id;
        match blocking(move || store.note(id, &message)).await {
            Ok(event) => self.events.publish(event),
            Err(e) => {
                tracing::error!(app = %self.app, deployment = id, "cannot record build output: {e}")
            }
        }
    }

    async fn build_state(&self, state: &str) {
        let store = self.store.clone();
        let (id, state) = (self.id, state.to_string());
        if let Err(e) = blocking(move || store.set_source_build(id, &state)).await {
            tracing::error!(app = %self.app, deployment = id, "cannot record the build state: {e}");
        }
    }
}

/// The build, run in the deployment's `preparing` step: the release to
/// deploy, or why there is none.
pub(crate) async fn build(job: &mut DeploymentJob) -> Result<ReleaseRecord, Stop> {
    let notes = Notes {
        store: job.context.store.clone(),
        events: job.context.events.clone(),
        id: job.record.id,
        app: job.context.name().to_string(),
    };
    let result = build_release(job, &notes).await;
    notes
        .build_state(match &result {
            Ok(_) => "built",
            Err(Stop::Aborted(_)) => "skipped",
            Err(Stop::Failed(_)) => "failed",
        })
        .await;
    result
}

async fn build_release(job: &mut DeploymentJob, notes: &Notes) -> Result<ReleaseRecord, Stop> {
    let context = job.context.clone();
    let app = context.name().to_string();
    let Some(source) = context.app.source.clone() else {
        return Err(Stop::Failed(format!(
            "app `{app}` has no [app.source] any more; cannot build"
        )));
    };
    let Some(facts) = job.record.source.clone() else {
        return Err(Stop::Failed(
            "internal error: a build without source facts".to_string(),
        ));
    };
    let version = job.record.version.clone();
    let (kind, ref_name) = split_ref(&facts.git_ref).map_err(Stop::Failed)?;
    let requested = validate_commit(&facts.commit).map_err(Stop::Failed)?;
    let git_ref = facts.git_ref.clone();

    let mut redactor = url_redactor(&source.repo);
    let mut secret_env = Vec::new();
    for (name, secret) in &source.secret_env {
        let value = read_secret(secret)
            .map_err(|why| Stop::Failed(format!("cannot read the build secret {name}: {why}")))?;
        redactor.add(&value);
        secret_env.push((name.clone(), value));
    }
    let repo_shown = redactor.apply(&source.repo);

    notes.build_state("fetching").await;
    note(job, &format!("fetching {git_ref} from {repo_shown}")).await;
    let workspace = source.workspace.clone();
    let git = Git {
        dir: &workspace,
        timeout: source.fetch_timeout,
        redactor: &redactor,
    };
    let fetch = async {
        std::fs::create_dir_all(&workspace)
            .map_err(|e| format!("cannot create the workspace {}: {e}", workspace.display()))?;
        if !workspace.join(".git").exists() {
            git.run(&["init", "--quiet"])
                .await
                .map_err(|e| e.describe("creating the workspace"))?;
        }
        // One scratch ref for every fetch (no clash between `a` and `a/b`);
        // built commits stay reachable under refs/cutover/built/.
        let refspec = format!("+{git_ref}:refs/cutover/fetched");
        git.run(&[
            "fetch",
            "--quiet",
            "--force",
            "--no-tags",
            "--no-recurse-submodules",
            "--",
            &source.repo,
            &refspec,
        ])
        .await
        .map_err(|e| e.describe(&format!("fetching {git_ref} from {repo_shown}")))?;
        Ok::<_, String>(())
    };
    until_cancelled(job, fetch).await?.map_err(Stop::Failed)?;

    // The object named in the push, as a commit (an annotated tag peeled).
    let commit = match until_cancelled(
        job,
        git.run(&["rev-parse", "--verify", "--quiet", &format!("{requested}^{{commit}}")]),
    )
    .await?
    {
        Ok(out) => validate_commit(out.trim()).map_err(Stop::Failed)?,
        Err(_) => {
            return Err(Stop::Aborted(format!(
                "commit {} is not on {git_ref} of {repo_shown} (the ref was moved or rewritten since); not deploying it",
                short(&requested)
            )))
        }
    };
    if commit != requested {
        note(
            job,
            &format!(
                "tag object {} points at commit {}",
                short(&requested),
                short(&commit)
            ),
        )
        .await;
        let store = context.store.clone();
        let (id, c) = (job.record.id, commit.clone());
        let _ = blocking(move || store.set_source_commit(id, &c)).await;
    }

    let live = job
        .live
        .as_ref()
        .map(|live| (live.release.id, live.release.version.clone()));
    if !job.force {
        if let Some((release_id, live_version)) = live {
            let store = context.store.clone();
            let live_commit = blocking(move || store.release_commit(release_id))
                .await
                .ok()
                .flatten();
            if let Some(live_commit) = live_commit {
                if live_commit == commit {
                    return Err(Stop::Aborted(format!(
                        "commit {} is already live ({} {}); pass --force to build and deploy it again",
                        short(&commit),
                        app,
                        live_version
                    )));
                }
                match until_cancelled(
                    job,
                    git.run(&["merge-base", "--is-ancestor", &commit, &live_commit]),
                )
                .await?
                {
                    Ok(_) => {
                        return Err(Stop::Aborted(format!(
                            "commit {} is older than the live commit {} ({} {}); not deploying it (pass --force to deploy it anyway)",
                            short(&commit),
                            short(&live_commit),
                            app,
                            live_version
                        )))
                    }
                    Err(GitFailure::Exit(Some(1), _)) => {}
                    Err(failure) => {
                        note(job, &format!(
                            "cannot tell whether {} is older than the live commit {} ({}); building it",
                            short(&commit),
                            short(&live_commit),
                            failure.describe("git merge-base")
                        ))
                        .await;
                    }
                }
            }
        }
    }

    let checkout = async {
        git.run(&["checkout", "--quiet", "--force", "--detach", &commit])
            .await
            .map_err(|e| e.describe(&format!("checking out {}", short(&commit))))?;
        git.run(&["clean", "--quiet", "-ffdx"])
            .await
            .map_err(|e| e.describe("cleaning the workspace"))?;
        Ok::<_, String>(())
    };
    until_cancelled(job, checkout)
        .await?
        .map_err(Stop::Failed)?;

    // Ask again: the ref must still point at the commit checked out.
    let remote = until_cancelled(
        job,
        git.ls_remote(&source.repo, std::slice::from_ref(&git_ref)),
    )
    .await?
    .map_err(|e| Stop::Failed(e.describe(&format!("re-checking {git_ref} at {repo_shown}"))))?;
    match remote.first() {
        None => {
            return Err(Stop::Aborted(format!(
                "{git_ref} no longer exists in {repo_shown}; not deploying {}",
                short(&commit)
            )))
        }
        Some(now) if now.commit() != commit => {
            // A server that did not say what the tag peels to: peel it here
            // (the fetch brought the tag object).
            let peeled_here = match (&now.peeled, validate_commit(&now.object)) {
                (None, Ok(object)) => git
                    .run(&[
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        &format!("{object}^{{commit}}"),
                    ])
                    .await
                    .ok()
                    .map(|out| out.trim().to_string()),
                _ => None,
            };
            if peeled_here.as_deref() != Some(commit.as_str()) {
                return Err(Stop::Aborted(format!(
                    "{git_ref} moved from {} to {} since; not deploying an outdated commit (the newer push deploys the newer one)",
                    short(&commit),
                    short(now.commit())
                )));
            }
        }
        Some(_) => {}
    }

    // Keep the commit reachable: a later build compares against it.
    let keep = format!("refs/cutover/built/{commit}");
    if let Err(e) = git.run(&["update-ref", &keep, &commit]).await {
        note(job, &e.describe("keeping a ref to the commit")).await;
    }

    notes.build_state("building").await;
    let started = Instant::now();
    let mut env = base_env();
    env.extend(source.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(secret_env);
    env.extend([
        ("CUTOVER_APP".to_string(), app.clone()),
        ("CUTOVER_COMMIT".to_string(), commit.clone()),
        ("CUTOVER_REF".to_string(), git_ref.clone()),
        ("CUTOVER_REF_NAME".to_string(), ref_name.to_string()),
        ("CUTOVER_REF_KIND".to_string(), kind.as_str().to_string()),
        ("CUTOVER_VERSION".to_string(), version.clone()),
        ("CUTOVER_DEPLOYMENT".to_string(), job.record.id.to_string()),
    ]);
    let log_path = context
        .logs_dir
        .join(format!("{}-build.log", job.record.id));
    note(
        job,
        &format!(
            "building {app} {version} from {} ({git_ref}): {} step(s), output in {}",
            short(&commit),
            source.build.len(),
            log_path.display()
        ),
    )
    .await;
    let steps = run_steps(
        &source.build,
        &workspace,
        &env,
        started + source.build_timeout,
        source.build_timeout,
        &log_path,
        notes,
        &redactor,
    );
    until_cancelled(job, steps).await?.map_err(Stop::Failed)?;

    let artifact = match &source.artifact {
        None => None,
        Some(pattern) => {
            let kept = keep_artifact(&workspace, pattern, &source.artifacts_dir.join(&version))
                .map_err(Stop::Failed)?;
            Some(kept)
        }
    };
    let store = context.store.clone();
    let driver = context.driver.name();
    let (name, v, a, c) = (
        app.clone(),
        version.clone(),
        artifact.as_ref().map(|p| p.display().to_string()),
        commit.clone(),
    );
    let release = blocking(move || {
        let release = store.insert_release(&name, &v, driver, a.as_deref())?;
        store.set_release_commit(release.id, &c)?;
        Ok(release)
    })
    .await
    .map_err(|e| Stop::Failed(format!("cannot record the release: {e}")))?;
    note(
        job,
        &format!(
            "built {version} from {} in {:.1}s{}",
            short(&commit),
            started.elapsed().as_secs_f64(),
            artifact
                .as_ref()
                .map(|p| format!("; artifact {}", p.display()))
                .unwrap_or_default()
        ),
    )
    .await;
    Ok(release)
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

/// Runs the build steps one after the other until one fails or the
/// deadline passes. Output goes to the build log, the first lines also to
/// the deployment's events; a failure quotes the last lines.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    steps: &[Vec<String>],
    dir: &Path,
    env: &[(String, String)],
    deadline: Instant,
    budget: Duration,
    log_path: &Path,
    notes: &Notes,
    redactor: &Redactor,
) -> Result<(), String> {
    if let Some(parent) = log_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let mut log = tokio::fs::File::create(log_path)
        .await
        .map_err(|e| format!("cannot create the build log {}: {e}", log_path.display()))?;
    let mut output = Output {
        emitted: 0,
        tail: VecDeque::new(),
        log_path: log_path.to_path_buf(),
    };
    for (index, argv) in steps.iter().enumerate() {
        let shown = argv.join(" ");
        let header = format!("step {}/{}: {shown}", index + 1, steps.len());
        let _ = log.write_all(format!("$ {shown}\n").as_bytes()).await;
        notes.note(header).await;
        let result = run_step(
            argv,
            dir,
            env,
            deadline,
            budget,
            &mut log,
            notes,
            redactor,
            &mut output,
        )
        .await;
        let _ = log.flush().await;
        if let Err(why) = result {
            let tail: Vec<&str> = output.tail.iter().map(String::as_str).collect();
            return Err(if tail.is_empty() {
                format!("the build failed: {why} (no output)")
            } else {
                format!(
                    "the build failed: {why}\n--- last lines of {} ---\n{}",
                    log_path.display(),
                    tail.join("\n")
                )
            });
        }
    }
    Ok(())
}

struct Output {
    emitted: usize,
    tail: VecDeque<String>,
    log_path: PathBuf,
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
    deadline: Instant,
    budget: Duration,
    log: &mut tokio::fs::File,
    notes: &Notes,
    redactor: &Redactor,
    output: &mut Output,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("an empty build step".to_string());
    };
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{program}` (in {}): {e}", dir.display()))?;
    let _guard = GroupGuard::new(child.id());
    let (lines_in, mut lines) = mpsc::channel::<String>(256);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, lines_in.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, lines_in.clone()));
    }
    drop(lines_in);
    let deadline = tokio::time::Instant::from_std(deadline);
    let status = loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => output.line(line, log, notes, redactor).await,
                None => match tokio::time::timeout_at(deadline, child.wait()).await {
                    Ok(status) => break status,
                    Err(_) => return Err(format!("`{program}` did not finish within build_timeout ({budget:?}) and was killed")),
                },
            },
            status = child.wait() => break status,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("`{program}` did not finish within build_timeout ({budget:?}) and was killed"));
            }
        }
    };
    // What the step printed last; a daemon it left behind may hold the
    // pipes open, so wait only briefly (it dies with the group guard).
    let grace = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(line)) = tokio::time::timeout_at(grace, lines.recv()).await {
        output.line(line, log, notes, redactor).await;
    }
    let status = status.map_err(|e| format!("waiting for `{program}` failed: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        use std::os::unix::process::ExitStatusExt;
        Err(match (status.code(), status.signal()) {
            (Some(code), _) => format!("`{program}` exited with code {code}"),
            (None, Some(signal)) => format!("`{program}` was killed by signal {signal}"),
            _ => format!("`{program}` ended abnormally"),
        })
    }
}

impl Output {
    async fn line(
        &mut self,
        line: String,
        log: &mut tokio::fs::File,
        notes: &Notes,
        redactor: &Redactor,
    ) {
        let line = redactor.apply(&line);
        let _ = log.write_all(line.as_bytes()).await;
        let _ = log.write_all(b"\n").await;
        if self.tail.len() == FAILURE_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        if self.emitted < MAX_OUTPUT_EVENTS {
            notes.note(format!("| {line}")).await;
        } else if self.emitted == MAX_OUTPUT_EVENTS {
            notes
                .note(format!(
                    "(more build output in {})",
                    self.log_path.display()
                ))
                .await;
        }
        self.emitted += 1;
    }
}

/// Sends a stream's lines (long ones split) until it ends.
async fn pump(mut reader: impl AsyncRead + Unpin, lines: mpsc::Sender<String>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..read]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            if lines.send(text).await.is_err() {
                return;
            }
        }
        if pending.len() > MAX_LINE {
            let text = String::from_utf8_lossy(&pending).into_owned();
            pending.clear();
            if lines.send(text).await.is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let _ = lines
            .send(String::from_utf8_lossy(&pending).trim_end().to_string())
            .await;
    }
}

/// Finds the one file the artifact glob names in the checkout and copies it
/// to `into/<file name>`, so the release stays runnable after the next
/// build cleans the workspace.
fn keep_artifact(workspace: &Path, pattern: &str, into: &Path) -> Result<PathBuf, String> {
    let found = find_files(workspace, pattern);
    let file = match found.as_slice() {
        [] => {
            return Err(format!(
                "the build produced no file matching artifact = \"{pattern}\" (in {})",
                workspace.display()
            ))
        }
        [one] => one.clone(),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|p| p.strip_prefix(workspace).unwrap_or(p).display().to_string())
                .collect();
            return Err(format!(
                "artifact = \"{pattern}\" matches {} files ({}); make the glob name exactly one",
                many.len(),
                names.join(", ")
            ));
        }
    };
    let root = std::fs::canonicalize(workspace).map_err(|e| e.to_string())?;
    let real = std::fs::canonicalize(&file).map_err(|e| e.to_string())?;
    if !real.starts_with(&root) {
        return Err(format!(
            "the artifact {} leads outside the workspace; refusing it",
            file.display()
        ));
    }
    let name = file
        .file_name()
        .ok_or_else(|| "the artifact has no file name".to_string())?;
    std::fs::create_dir_all(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    let target = into.join(name);
    let partial = into.join(format!(".{}.partial", name.to_string_lossy()));
    std::fs::copy(&real, &partial)
        .and_then(|_| std::fs::rename(&partial, &target))
        .map_err(|e| format!("cannot copy the artifact to {}: {e}", target.display()))?;
    Ok(target)
}

/// Files matching a relative glob (`*` and `?` within one path component).
fn find_files(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut current = vec![root.to_path_buf()];
    for component in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let mut next = Vec::new();
        for dir in &current {
            if component.contains(['*', '?']) {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if let Some(text) = name.to_str() {
                        if text != ".git" && glob_match(component, text) {
                            next.push(dir.join(text));
                        }
                    }
                }
            } else {
                let path = dir.join(component);
                if path.symlink_metadata().is_ok() {
                    next.push(path);
                }
            }
        }
        current = next;
    }
    current.retain(|p| p.is_file());
    current.sort();
    current
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_git_and_refuse_options() {
        for ok in [
            "main",
            "v1.0-cicd",
            "feature/x",
            "$(touch${IFS}x)",
            "a;b",
            "`id`",
            "ü",
        ] {
            assert!(check_ref_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=evil",
            "a b",
            "a..b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "@",
            "a@{1}",
            ".hidden",
            "a/.b",
            "a.lock",
            "a/",
            "/a",
            "a//b",
            "a.",
            "a\nb",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad:?}");
        }
        assert!(split_ref("refs/heads/main").is_ok());
        assert!(split_ref("refs/remotes/x").is_err());
        assert!(split_ref("refs/tags/-x").is_err());
    }

    #[test]
    fn commits_are_full_hex_ids() {
        let sha = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(validate_commit(sha).unwrap(), sha.to_ascii_lowercase());
        assert!(validate_commit("0123456").is_err());
        assert!(validate_commit(&"g".repeat(40)).is_err());
        assert!(validate_commit(&"a".repeat(64)).is_ok());
    }

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
