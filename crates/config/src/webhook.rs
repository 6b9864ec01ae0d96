//! `[webhook]`: the git webhook receiver (GitHub, GitLab, Gitea/Forgejo,
//! Bitbucket). Secrets are named by files or environment variables and
//! read by the receiver when it starts; they never sit in the model.

use crate::docker::SecretSource;
use crate::error::{ConfigError, Located};
use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// One value or a list of them (two secrets at once, for rotation).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub listen: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub max_body: Option<ByteSize>,
    pub read_timeout: Option<HumanDuration>,
    pub github_secret_file: Option<Spanned<OneOrMany>>,
    pub github_secret_env: Option<Spanned<OneOrMany>>,
    pub gitlab_token_file: Option<Spanned<OneOrMany>>,
    pub gitlab_token_env: Option<Spanned<OneOrMany>>,
    pub gitea_secret_file: Option<Spanned<OneOrMany>>,
    pub gitea_secret_env: Option<Spanned<OneOrMany>>,
    pub bitbucket_secret_file: Option<Spanned<OneOrMany>>,
    pub bitbucket_secret_env: Option<Spanned<OneOrMany>>,
}

/// The webhook receiver. See the README's "Git trigger".
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receiver's own listener; `None` (the default): the proxy's
    /// listeners take the requests under `path_prefix` and hand them to
    /// the receiver.
    pub listen: Option<SocketAddr>,
    /// Endpoints are `POST {path_prefix}/github|gitlab|gitea|bitbucket`.
    pub path_prefix: String,
    /// Bodies beyond are refused with 413.
    pub max_body: u64,
    /// The longest a client may take to send headers and body.
    pub read_timeout: Duration,
    /// Accepted secrets per provider (one or two); no secret: that
    /// provider's endpoint is off.
    pub github: Vec<SecretSource>,
    pub gitlab: Vec<SecretSource>,
    pub gitea: Vec<SecretSource>,
    pub bitbucket: Vec<SecretSource>,
}

pub(crate) fn validate(
    spanned: &Spanned<RawWebhook>,
    base: &Path,
    file: &Path,
    text: &str,
    check_files: bool,
) -> Result<WebhookConfig, ConfigError> {
    webhook_config(spanned, base, check_files)
        .map_err(|located| ConfigError::located(file, text, located))
}

fn webhook_config(
    spanned: &Spanned<RawWebhook>,
    base: &Path,
    check_files: bool,
) -> Result<WebhookConfig, Located> {
    let raw = spanned.get_ref();
    let secrets = |provider: &str,
                   files: &Option<Spanned<OneOrMany>>,
                   envs: &Option<Spanned<OneOrMany>>| {
        let found = secrets(files.as_ref(), envs.as_ref(), base, check_files)?;
        if found.len() > 2 {
            let span = files.as_ref().map_or_else(|| spanned.span(), Spanned::span);
            return Err((
                span,
                format!("{provider} has {} secrets; at most two are accepted at once (the current and the next, while rotating)", found.len()),
            ));
        }
        Ok(found)
    };
    let config = WebhookConfig {
        listen: listen(spanned)?,
        path_prefix: raw
            .path_prefix
            .as_ref()
            .map_or_else(|| Ok("/_cutover/hooks".to_string()), path_prefix)?,
        max_body: raw.max_body.map_or(25 << 20, |s| s.0),
        read_timeout: raw.read_timeout.map_or(Duration::from_secs(10), |d| d.0),
        github: secrets("github", &raw.github_secret_file, &raw.github_secret_env)?,
        gitlab: secrets("gitlab", &raw.gitlab_token_file, &raw.gitlab_token_env)?,
        gitea: secrets("gitea", &raw.gitea_secret_file, &raw.gitea_secret_env)?,
        bitbucket: secrets(
            "bitbucket",
            &raw.bitbucket_secret_file,
            &raw.bitbucket_secret_env,
        )?,
    };
    if config.github.is_empty()
        && config.gitlab.is_empty()
        && config.gitea.is_empty()
        && config.bitbucket.is_empty()
    {
        return Err((
            spanned.span(),
            "[webhook] has no secret: a webhook is accepted only when signed, so set at least one of github_secret_file, gitlab_token_file, gitea_secret_file, bitbucket_secret_file (or their *_env forms)".to_string(),
        ));
    }
    if config.listen.is_none() && config.path_prefix.is_empty() {
        return Err((
            spanned.span(),
            "[webhook] path_prefix is empty, so webhooks on the proxy's listeners would take every path from the apps: give a prefix (the default is \"/_cutover/hooks\") or a `listen` address of the receiver's own".to_string(),
        ));
    }
    if config.read_timeout.is_zero() || config.max_body == 0 {
        return Err((
            spanned.span(),
            "read_timeout and max_body must be larger than 0".to_string(),
        ));
    }
    Ok(config)
}

fn listen(spanned: &Spanned<RawWebhook>) -> Result<Option<SocketAddr>, Located> {
    let Some(addr) = &spanned.get_ref().listen else {
        return Ok(None);
    };
    addr.get_ref().parse::<SocketAddr>().map(Some).map_err(|_| {
        (
            addr.span(),
            format!(
                "`{}` is not a listen address; write it like \"127.0.0.1:9000\"",
                addr.get_ref()
            ),
        )
    })
}

fn path_prefix(raw: &Spanned<String>) -> Result<String, Located> {
    let value = raw.get_ref().trim().trim_end_matches('/').to_string();
    let ok = value.starts_with('/')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if !ok && !value.is_empty() {
        return Err((
            raw.span(),
            format!("path_prefix `{}` must be a path like \"/_cutover/hooks\" (letters, digits, `/`, `-`, `_`, `.`)", raw.get_ref()),
        ));
    }
    Ok(value)
}

/// One provider's secrets: files (resolved against `base`), then variables.
fn secrets(
    files: Option<&Spanned<OneOrMany>>,
    envs: Option<&Spanned<OneOrMany>>,
    base: &Path,
    check_files: bool,
) -> Result<Vec<SecretSource>, Located> {
    let mut found = Vec::new();
    if let Some(files) = files {
        for path in files.get_ref().values() {
            if path.trim().is_empty() {
                return Err((
                    files.span(),
                    "a secret file path must not be empty".to_string(),
                ));
            }
            let resolved = base.join(path.trim());
            if check_files && !resolved.is_file() {
                return Err((
                    files.span(),
                    format!(
                        "secret file `{}` does not exist (resolved to {}); create it holding the secret, or fix the path",
                        path.trim(),
                        resolved.display()
                    ),
                ));
            }
            found.push(SecretSource::File(resolved));
        }
    }
    if let Some(envs) = envs {
        for name in envs.get_ref().values() {
            let ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err((
                    envs.span(),
                    format!("`{name}` is not an environment variable name"),
                ));
            }
            found.push(SecretSource::Env(name));
        }
    }
    Ok(found)
}
