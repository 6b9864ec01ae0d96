//! Getting a release's image ready: use it if present, else pull it, else
//! build it from the configured Dockerfile (and push it when asked).
//!
//! A version's image is made once: when it is present locally (or, with
//! `push`, in the registry) it is used as it is, so a rollback runs exactly
//! the image that ran before rather than a rebuild of today's sources.

use super::client::{self, Client};
use super::{DockerError, LABEL_APP, LABEL_INSTANCE};
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptions, CreateImageOptions, PushImageOptions};
use cutover_config::docker::{check_tag, DockerBuild, RegistryAuth, SecretSource};
use cutover_config::DockerConfig;
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use tracing::{debug, info};

/// Lines of build output quoted when a build fails.
const BUILD_TAIL_LINES: usize = 25;

/// How an image came to be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// It was there already (built or pulled by someone else, or by us earlier).
    Present,
    Pulled,
    Built,
}

/// Where a release's image comes from: the keys `[app.docker]` and
/// `[app.swarm]` share.
pub(crate) struct ImageSource<'a> {
    /// The reference template, with `{version}`.
    pub image: &'a str,
    pub build: Option<&'a DockerBuild>,
    pub push: bool,
    pub registry: Option<&'a RegistryAuth>,
}

impl<'a> From<&'a DockerConfig> for ImageSource<'a> {
    fn from(config: &'a DockerConfig) -> ImageSource<'a> {
        ImageSource {
            image: &config.image,
            build: config.build.as_ref(),
            push: config.push,
            registry: config.registry.as_ref(),
        }
    }
}

/// The image reference of `version`: the configured template expanded.
pub(crate) fn reference(config: &ImageSource<'_>, version: &str) -> Result<String, DockerError> {
    check_tag(version).map_err(|problem| DockerError::BadVersion {
        version: version.to_string(),
        problem,
    })?;
    let reference = config.image.replace("{version}", version);
    cutover_config::docker::check_reference(&reference).map_err(|problem| {
        DockerError::BadVersion {
            version: version.to_string(),
            problem: format!("`{reference}` is not a valid image reference: {problem}"),
        }
    })?;
    Ok(reference)
}

/// `registry.local:5000/web:v1` → (`registry.local:5000/web`, `v1`).
pub(crate) fn split_tag(reference: &str) -> (&str, &str) {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (
            &reference[..last_slash + i],
            &reference[last_slash + i + 1..],
        ),
        None => (reference, "latest"),
    }
}

/// The registry host of a reference (`docker.io` when it names none).
fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Makes sure the image of `reference` is present locally.
pub(crate) async fn ensure(
    client: &Client,
    config: &ImageSource<'_>,
    app: &str,
    instance: &str,
    version: &str,
    reference: &str,
) -> Result<Origin, DockerError> {
    let docker = client.get().await?;
    match docker.inspect_image(reference).await {
        Ok(_) => {
            debug!(app, "image {reference} is present");
            return Ok(Origin::Present);
        }
        Err(e) if client::is_not_found(&e) => {}
        Err(e) => return Err(client.error(format!("inspecting image {reference}"), e)),
    }
    let credentials = credentials(config.registry, reference)?;
    match config.build {
        None => {
            pull(client, reference, credentials).await?;
            Ok(Origin::Pulled)
        }
        Some(build) => {
            if config.push {
                // The registry is where built images live: an earlier build
                // of this version (a rollback) comes back from there.
                match pull(client, reference, credentials.clone()).await {
                    Ok(()) => return Ok(Origin::Pulled),
                    Err(e) => info!(app, "{reference} is not in the registry ({e}); building it"),
                }
            }
            build_image(
                client,
                build,
                app,
                instance,
                version,
                reference,
                credentials.clone(),
            )
            .await?;
            if config.push {
                push(client, reference, credentials).await?;
            }
            Ok(Origin::Built)
        }
    }
}

async fn pull(
    client: &Client,
    reference: &str,
    credentials: Option<DockerCredentials>,
) -> Result<(), DockerError> {
    let docker = client.get().await?;
    let (repository, tag) = split_tag(reference);
    let options = CreateImageOptions {
        from_image: Some(repository.to_string()),
        tag: Some(tag.to_string()),
        ..CreateImageOptions::default()
    };
    info!("pulling image {reference}");
    let stream = docker.create_image(Some(options), None, credentials);
    if let Some(e) = first_error(stream).await {
        let detail = client::message(&e);
        let lower = detail.to_ascii_lowercase();
        let not_found = client::is_not_found(&e)
            || lower.contains("not found")
            || lower.contains("manifest unknown")
            || lower.contains("does not exist");
        if !client::is_engine_refusal(&e) {
            return Err(client.error(format!("pulling image {reference}"), e));
        }
        return Err(if not_found {
            DockerError::ImageNotFound {
                image: reference.to_string(),
                detail,
            }
        } else {
            DockerError::PullFailed {
                image: reference.to_string(),
                detail,
            }
        });
    }
    info!("pulled image {reference}");
    Ok(())
}

async fn push(
    client: &Client,
    reference: &str,
    credentials: Option<DockerCredentials>,
) -> Result<(), DockerError> {
    let docker = client.get().await?;
    let (repository, tag) = split_tag(reference);
    let options = PushImageOptions {
        tag: Some(tag.to_string()),
        ..PushImageOptions::default()
    };
    info!("pushing image {reference}");
    let stream = docker.push_image(repository, Some(options), credentials);
    if let Some(e) = first_error(stream).await {
        if !client::is_engine_refusal(&e) {
            return Err(client.error(format!("pushing image {reference}"), e));
        }
        return Err(DockerError::PushFailed {
            image: reference.to_string(),
            detail: client::message(&e),
        });
    }
    info!("pushed image {reference}");
    Ok(())
}

/// Reads a progress stream to its end; the error that ended it early.
async fn first_error<T>(
    stream: impl futures_util::Stream<Item = Result<T, bollard::errors::Error>>,
) -> Option<bollard::errors::Error> {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            return Some(e);
        }
    }
    None
}

/// Packs the context, streams the build (its output at debug level, the
/// last lines kept for the error) and cleans up after a failed one.
async fn build_image(
    client: &Client,
    build: &DockerBuild,
    app: &str,
    instance: &str,
    version: &str,
    reference: &str,
    credentials: Option<DockerCredentials>,
) -> Result<(), DockerError> {
    let docker = client.get().await?;
    let expand = |text: &str| text.replace("{version}", version).replace("{app}", app);
    let context = PathBuf::from(expand(&build.context));
    let dockerfile = expand(&build.dockerfile);
    let archive = {
        let (context, dockerfile) = (context.clone(), dockerfile.clone());
        tokio::task::spawn_blocking(move || pack_context(&context, &dockerfile))
            .await
            .map_err(|e| DockerError::BuildContext {
                path: build.context.clone().into(),
                problem: e.to_string(),
            })??
    };
    let options = BuildImageOptions {
        dockerfile,
        t: Some(reference.to_string()),
        rm: true,
        forcerm: true,
        buildargs: Some(
            build
                .args
                .iter()
                .map(|(name, value)| (name.clone(), expand(value)))
                .collect(),
        ),
        labels: Some(HashMap::from([
            (LABEL_APP.to_string(), app.to_string()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
        ])),
        ..BuildImageOptions::default()
    };
    let registry_config =
        credentials.map(|c| HashMap::from([(c.serveraddress.clone().unwrap_or_default(), c)]));
    info!(app, "building image {reference} from {}", context.display());
    let mut progress = BuildProgress::default();
    let mut stream = docker.build_image(
        options,
        registry_config,
        Some(bollard::body_full(archive.into())),
    );
    while let Some(item) = stream.next().await {
        let e = match item {
            Ok(info) => {
                for line in info
                    .stream
                    .iter()
                    .chain(info.status.iter())
                    .flat_map(|t| t.lines())
                {
                    progress.note(app, reference, line);
                }
                continue;
            }
            Err(e) => e,
        };
        if !client::is_engine_refusal(&e) {
            return Err(client.error(format!("building image {reference}"), e));
        }
        progress.remove_made(docker).await;
        return Err(DockerError::BuildFailed {
            image: reference.to_string(),
            reason: client::message(&e).trim().to_string(),
            tail: Vec::from(progress.tail).join("\n"),
        });
    }
    info!(app, "built image {reference}");
    Ok(())
}

/// What a running build has said so far.
#[derive(Default)]
struct BuildProgress {
    /// The last [`BUILD_TAIL_LINES`] lines of output.
    tail: VecDeque<String>,
    /// Images of the steps this build made (not those it took from the
    /// cache): a failed build leaves them dangling, without our labels.
    made: Vec<String>,
    /// The step being read was taken from the cache.
    cached: bool,
}

impl BuildProgress {
    fn note(&mut self, app: &str, reference: &str, line: &str) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        debug!(app, "build {reference}: {line}");
        match line.trim().strip_prefix("---> ") {
            Some("Using cache") => self.cached = true,
            Some(id) if id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                if !self.cached {
                    self.made.push(id.to_string());
                }
                self.cached = false;
            }
            _ => {}
        }
        if self.tail.len() == BUILD_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    /// Best effort: Docker refuses (409) if anything depends on them.
    async fn remove_made(&self, docker: &bollard::Docker) {
        for id in self.made.iter().rev() {
            let _ = docker
                .remove_image(
                    id,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        }
    }
}

/// The build context as a tar archive (symlinks kept as links).
fn pack_context(context: &Path, dockerfile: &str) -> Result<Vec<u8>, DockerError> {
    let problem = |problem: String| DockerError::BuildContext {
        path: context.to_path_buf(),
        problem,
    };
    if !context.is_dir() {
        return Err(problem("it is not a directory".to_string()));
    }
    if !context.join(dockerfile).is_file() {
        return Err(problem(format!("it has no Dockerfile `{dockerfile}`")));
    }
    let mut archive = tar::Builder::new(Vec::new());
    archive.follow_symlinks(false);
    archive
        .append_dir_all(".", context)
        .map_err(|e| problem(e.to_string()))?;
    archive.into_inner().map_err(|e| problem(e.to_string()))
}

/// Registry credentials for the registry of `reference`, read now from the
/// configured file or variable. The password is never logged.
fn credentials(
    auth: Option<&RegistryAuth>,
    reference: &str,
) -> Result<Option<DockerCredentials>, DockerError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let password = read_secret(&auth.password)?;
    Ok(Some(DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(password),
        serveraddress: Some(registry_of(reference).to_string()),
        ..DockerCredentials::default()
    }))
}

pub(crate) fn read_secret(source: &SecretSource) -> Result<String, DockerError> {
    let (source_name, value) = match source {
        SecretSource::File(path) => (
            format!("the file {}", path.display()),
            std::fs::read_to_string(path).map_err(|e| e.to_string()),
        ),
        SecretSource::Env(name) => (
            format!("the environment variable {name}"),
            std::env::var(name).map_err(|e| match e {
                std::env::VarError::NotPresent => "it is not set".to_string(),
                std::env::VarError::NotUnicode(_) => "it is not valid UTF-8".to_string(),
            }),
        ),
    };
    let secret = value.map_err(|problem| DockerError::Secret {
        source_name: source_name.clone(),
        problem,
    })?;
    let secret = secret.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(DockerError::Secret {
            source_name,
            problem: "it is empty".to_string(),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_tag("web:v1"), ("web", "v1"));
        assert_eq!(
            split_tag("127.0.0.1:5000/team/web:v2"),
            ("127.0.0.1:5000/team/web", "v2")
        );
        assert_eq!(
            split_tag("localhost:5000/web"),
            ("localhost:5000/web", "latest")
        );
        assert_eq!(registry_of("127.0.0.1:5000/web:v1"), "127.0.0.1:5000");
        assert_eq!(registry_of("team/web:v1"), "docker.io");
    }

    #[test]
    fn secrets_are_read_from_files_and_never_echoed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(
            read_secret(&SecretSource::File(path.clone()))
                .ok()
                .as_deref(),
            Some("s3cret")
        );
        std::fs::write(&path, "\n").expect("write");
        let error = read_secret(&SecretSource::File(path)).map(|_| ()).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("is empty"), "{message}");
        let missing = read_secret(&SecretSource::Env("CUTOVER_TEST_SURELY_UNSET".into()))
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            missing.contains("CUTOVER_TEST_SURELY_UNSET") && missing.contains("not set"),
            "{missing}"
        );
    }
}
