//! Running the `git` CLI: no shell, a minimal environment, a timeout that
//! kills the whole process group, helper transports (`ext::`) off, no hooks,
//! no prompts. Values that came from outside (refs, commits) are validated
//! before they get here and are always passed after `--` or as a checked
//! object id, never where git would read an option.

use super::redact::Redactor;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Output of a git command kept for error messages.
const MAX_ERROR_OUTPUT: usize = 4 * 1024;

/// One ref as `git ls-remote` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteRef {
    pub name: String,
    /// What the ref points at (a tag object for an annotated tag).
    pub object: String,
    /// The commit an annotated tag points at (`<ref>^{}`).
    pub peeled: Option<String>,
}

impl RemoteRef {
    /// The commit this ref stands for.
    pub fn commit(&self) -> &str {
        self.peeled.as_deref().unwrap_or(&self.object)
    }
}

pub(crate) struct Git<'a> {
    /// Where git runs (the workspace; `/` for commands that need none).
    pub dir: &'a Path,
    pub timeout: Duration,
    pub redactor: &'a Redactor,
}

pub(crate) enum GitFailure {
    /// git ran and exited non-zero (its exit code and redacted stderr).
    Exit(Option<i32>, String),
    /// git could not run or did not finish.
    Other(String),
}

impl GitFailure {
    pub fn describe(&self, what: &str) -> String {
        match self {
            GitFailure::Exit(code, stderr) => {
                let code = code.map_or("a signal".to_string(), |c| format!("code {c}"));
                if stderr.is_empty() {
                    format!("{what} failed (git exited with {code})")
                } else {
                    format!("{what} failed (git exited with {code}): {stderr}")
                }
            }
            GitFailure::Other(why) => format!("{what} failed: {why}"),
        }
    }
}

impl Git<'_> {
    /// Runs `git <args>`; its stdout on success.
    pub async fn run(&self, args: &[&str]) -> Result<String, GitFailure> {
        let mut command = Command::new("git");
        command
            .args([
                "-c",
                "protocol.ext.allow=never",
                "-c",
                "protocol.fd.allow=never",
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "advice.detachedHead=false",
                "-c",
                "core.fsmonitor=false",
                "-c",
                "submodule.recurse=false",
            ])
            .args(args)
            .current_dir(self.dir)
            .env_clear()
            .envs(git_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| GitFailure::Other(format!("cannot run git: {e}")))?;
        let guard = super::child::GroupGuard::new(child.id());
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            return Err(GitFailure::Other("cannot capture git's output".to_string()));
        };
        let finished = tokio::time::timeout(self.timeout, async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            (child.wait().await, out, err)
        })
        .await;
        drop(guard);
        match finished {
            Err(_) => Err(GitFailure::Other(format!(
                "git did not finish within {:?} (fetch_timeout) and was killed",
                self.timeout
            ))),
            Ok((Err(e), _, _)) => Err(GitFailure::Other(format!("waiting for git failed: {e}"))),
            Ok((Ok(status), out, err)) => {
                if status.success() {
                    Ok(String::from_utf8_lossy(&out).into_owned())
                } else {
                    let start = err.len().saturating_sub(MAX_ERROR_OUTPUT);
                    let text = String::from_utf8_lossy(&err[start..]).trim().to_string();
                    Err(GitFailure::Exit(status.code(), self.redactor.apply(&text)))
                }
            }
        }
    }

    /// `git ls-remote -- <repo> <patterns>`: the refs named exactly so.
    pub async fn ls_remote(
        &self,
        repo: &str,
        refs: &[String],
    ) -> Result<Vec<RemoteRef>, GitFailure> {
        // `<ref>^{}` too: without it an annotated tag's peeled line is left out.
        let peeled: Vec<String> = refs.iter().map(|r| format!("{r}^{{}}")).collect();
        let mut args = vec!["ls-remote", "--", repo];
        args.extend(refs.iter().map(String::as_str));
        args.extend(peeled.iter().map(String::as_str));
        let listing = self.run(&args).await?;
        Ok(parse_ls_remote(&listing)
            .into_iter()
            .filter(|r| refs.contains(&r.name))
            .collect())
    }
}

/// The environment of git commands: enough to find git, credentials and
/// ssh keys, and never a prompt.
fn git_env() -> Vec<(String, String)> {
    let mut env = super::child::base_env();
    env.push(("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()));
    env.push(("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()));
    env.push(("LC_ALL".to_string(), "C".to_string()));
    for name in [
        "SSH_AUTH_SOCK",
        "GIT_SSH_COMMAND",
        "GIT_SSL_CAINFO",
        "SSL_CERT_FILE",
    ] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.to_string(), value));
        }
    }
    env
}

/// Parses `<object>\t<ref>` lines, folding `<ref>^{}` into its ref.
pub(crate) fn parse_ls_remote(listing: &str) -> Vec<RemoteRef> {
    let mut refs: Vec<RemoteRef> = Vec::new();
    for line in listing.lines() {
        let Some((object, name)) = line.split_once('\t') else {
            continue;
        };
        let object = object.trim().to_ascii_lowercase();
        if let Some(base) = name.strip_suffix("^{}") {
            match refs.iter_mut().find(|r| r.name == base) {
                Some(found) => found.peeled = Some(object),
                None => refs.push(RemoteRef {
                    name: base.to_string(),
                    object: object.clone(),
                    peeled: Some(object),
                }),
            }
        } else {
            refs.push(RemoteRef {
                name: name.to_string(),
                object,
                peeled: None,
            });
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_output_is_folded() {
        let listing = "aaa\trefs/heads/main\nbbb\trefs/tags/v1\nccc\trefs/tags/v1^{}\n";
        let refs = parse_ls_remote(listing);
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].commit(), "aaa");
        assert_eq!(refs[1].object, "bbb");
        assert_eq!(refs[1].commit(), "ccc");
    }
}
