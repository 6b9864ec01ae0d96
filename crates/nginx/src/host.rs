//! Where nginx runs: this machine, or another one reached with the system
//! `ssh`. Every operation is an argv: local commands run without a shell;
//! remote ones go through `ssh` as one command line of single-quoted words
//! (see [`quote`]), and the only shell code in them is the fixed scripts
//! below, which read every value from their positional parameters.

use cutover_config::SshConfig;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Longest a single command (`nginx -t`, a reload, one ssh round trip) may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `$0` of the remote scripts (shows in `ps` on the nginx host).
const SCRIPT_NAME: &str = "cutover-nginx";

/// Prints the file `$1` if it exists; exits 3 if it does not.
const READ_SCRIPT: &str = r#"if [ -e "$1" ]; then exec cat -- "$1"; else exit 3; fi"#;

/// Replaces the file `$1` (in directory `$2`) with stdin atomically: a
/// temporary file next to it (never named `*.conf`), fsync, rename, fsync
/// of the directory.
const WRITE_SCRIPT: &str = r#"set -e
tmp=$(mktemp -- "$1.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod 644 -- "$tmp"
sync -- "$tmp"
mv -f -- "$tmp" "$1"
trap - EXIT
sync -- "$2""#;

/// Removes the file `$1` (in directory `$2`) and fsyncs the directory.
const REMOVE_SCRIPT: &str = r#"rm -f -- "$1" && sync -- "$2""#;

/// Quotes `word` for a POSIX shell: inside single quotes nothing is special
/// except the single quote itself, which is written as `'\''` (close the
/// quote, an escaped quote, open again). The result is always exactly one
/// word whose value is `word`, whatever it contains (`$`, backquotes, `;`,
/// newlines, quotes...).
pub fn quote(word: &str) -> String {
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str(r"'\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// The command line `ssh` hands to the remote user's shell for `argv`.
pub fn remote_command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|word| quote(word))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a finished command said.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// stderr (or stdout when stderr is empty), trimmed, for error messages.
    pub fn said(&self) -> String {
        let text = if self.stderr.iter().all(u8::is_ascii_whitespace) {
            &self.stdout
        } else {
            &self.stderr
        };
        String::from_utf8_lossy(text).trim().to_string()
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Host {
    Local,
    Ssh(SshConfig),
}

impl Host {
    pub fn is_remote(&self) -> bool {
        matches!(self, Host::Ssh(_))
    }

    /// Describes where commands run, for messages.
    pub fn describe(&self) -> String {
        match self {
            Host::Local => "this host".to_string(),
            Host::Ssh(ssh) => match &ssh.user {
                Some(user) => format!("{user}@{}:{}", ssh.host, ssh.port),
                None => format!("{}:{}", ssh.host, ssh.port),
            },
        }
    }

    /// The argv of `ssh` running `remote` (already one command line).
    pub fn ssh_argv(ssh: &SshConfig, remote: &str) -> Vec<String> {
        let mut argv = vec![
            "ssh".to_string(),
            "-o".to_string(),
            "BatchMode=yes".to_string(),
            "-o".to_string(),
            format!(
                "StrictHostKeyChecking={}",
                if ssh.strict_host_key_checking {
                    "yes"
                } else {
                    "accept-new"
                }
            ),
            "-o".to_string(),
            "ConnectTimeout=10".to_string(),
            "-p".to_string(),
            ssh.port.to_string(),
        ];
        if let Some(user) = &ssh.user {
            argv.extend(["-l".to_string(), user.clone()]);
        }
        if let Some(identity) = &ssh.identity_file {
            argv.extend([
                "-i".to_string(),
                identity.display().to_string(),
                "-o".to_string(),
                "IdentitiesOnly=yes".to_string(),
            ]);
        }
        if let Some(known_hosts) = &ssh.known_hosts_file {
            argv.extend([
                "-o".to_string(),
                format!("UserKnownHostsFile={}", known_hosts.display()),
            ]);
        }
        // `--`: the host is never read as an option.
        argv.extend(["--".to_string(), ssh.host.clone(), remote.to_string()]);
        argv
    }

    /// Runs `argv` on the nginx host, feeding `stdin` when given. Err only
    /// when it could not run (or timed out); a non-zero exit is an Ok.
    pub async fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<Output, String> {
        let full = match self {
            Host::Local => argv.to_vec(),
            Host::Ssh(ssh) => Host::ssh_argv(ssh, &remote_command_line(argv)),
        };
        let Some((program, args)) = full.split_first() else {
            return Err("empty command".to_string());
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run `{program}`: {e}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let input = input.to_vec();
            // Written concurrently with reading the output, so a large
            // input never deadlocks against a full output pipe.
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
                let _ = pipe.shutdown().await;
            });
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(Output {
                status: output.status,
                stdout: output.stdout,
                stderr: output.stderr,
            }),
            Ok(Err(e)) => Err(format!("running `{program}` failed: {e}")),
            Err(_) => Err(format!(
                "`{}` did not finish within {COMMAND_TIMEOUT:?}",
                display_argv(argv)
            )),
        }
    }

    /// Runs a remote operation and demands exit 0.
    async fn remote_ok(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<Output, String> {
        let output = self.run(argv, stdin).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(format!(
                "on {} ({}): {}",
                self.describe(),
                output.status,
                output.said()
            ))
        }
    }

    /// The file's content, `None` when it does not exist.
    pub async fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, String> {
        match self {
            Host::Local => {
                let path = path.to_path_buf();
                blocking(move || match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                })
                .await
            }
            Host::Ssh(_) => {
                let argv = script(READ_SCRIPT, &[path]);
                let output = self.run(&argv, None).await?;
                match output.status.code() {
                    Some(0) => Ok(Some(output.stdout)),
                    Some(3) => Ok(None),
                    _ => Err(format!(
                        "cannot read {} on {} ({}): {}",
                        path.display(),
                        self.describe(),
                        output.status,
                        output.said()
                    )),
                }
            }
        }
    }

    /// Replaces `path` with `content` atomically: a temporary file in the
    /// same directory, fsync, rename over `path`, fsync of the directory.
    /// On failure `path` is unchanged.
    pub async fn write_atomic(&self, path: &Path, content: &[u8]) -> Result<(), String> {
        let dir = parent(path)?;
        match self {
            Host::Local => {
                let (path, content) = (path.to_path_buf(), content.to_vec());
                blocking(move || {
                    write_local(&path, &dir, &content)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))
                })
                .await
            }
            Host::Ssh(_) => {
                let argv = script(WRITE_SCRIPT, &[path, &dir]);
                self.remote_ok(&argv, Some(content))
                    .await
                    .map(drop)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            }
        }
    }

    /// Removes `path` (absent is fine) and fsyncs its directory.
    pub async fn remove(&self, path: &Path) -> Result<(), String> {
        let dir = parent(path)?;
        match self {
            Host::Local => {
                let path = path.to_path_buf();
                blocking(move || {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
                    }
                    std::fs::File::open(&dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
                })
                .await
            }
            Host::Ssh(_) => {
                let argv = script(REMOVE_SCRIPT, &[path, &dir]);
                self.remote_ok(&argv, None)
                    .await
                    .map(drop)
                    .map_err(|e| format!("cannot remove {}: {e}", path.display()))
            }
        }
    }

    /// The pid written in nginx's pid file.
    pub async fn read_pid(&self, pid_file: &Path) -> Result<u32, String> {
        let text = match self {
            Host::Local => {
                let path = pid_file.to_path_buf();
                blocking(move || std::fs::read_to_string(&path).map_err(|e| e.to_string())).await?
            }
            Host::Ssh(_) => {
                let argv = vec![
                    "cat".to_string(),
                    "--".to_string(),
                    pid_file.display().to_string(),
                ];
                String::from_utf8_lossy(&self.remote_ok(&argv, None).await?.stdout).into_owned()
            }
        };
        match text.trim().parse::<u32>() {
            Ok(pid) if pid > 1 => Ok(pid),
            _ => Err(format!("it holds {:?}, not a process id", text.trim())),
        }
    }

    /// Live (not zombie) child processes of `parent`.
    pub async fn children(&self, parent: u32) -> Result<Vec<u32>, String> {
        match self {
            Host::Local => blocking(move || Ok(local_children(parent))).await,
            Host::Ssh(_) => {
                let argv = vec![
                    "ps".to_string(),
                    "-o".to_string(),
                    "pid=,stat=".to_string(),
                    "--ppid".to_string(),
                    parent.to_string(),
                ];
                let output = self.run(&argv, None).await?;
                // ps exits 1 when no process matched.
                if !output.status.success() && !output.stderr.is_empty() {
                    return Err(format!(
                        "`ps` on {} failed ({}): {}",
                        self.describe(),
                        output.status,
                        output.said()
                    ));
                }
                Ok(String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter_map(|line| {
                        let mut fields = line.split_whitespace();
                        let pid = fields.next()?.parse().ok()?;
                        let stat = fields.next().unwrap_or("");
                        (!stat.starts_with('Z')).then_some(pid)
                    })
                    .collect())
            }
        }
    }
}

/// `sh -c SCRIPT cutover-nginx ARG...`: the script is a constant; values
/// arrive only as its positional parameters.
fn script(script: &str, args: &[&Path]) -> Vec<String> {
    let mut argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        SCRIPT_NAME.to_string(),
    ];
    argv.extend(args.iter().map(|a| a.display().to_string()));
    argv
}

fn parent(path: &Path) -> Result<PathBuf, String> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no directory", path.display()))
}

fn write_local(path: &Path, dir: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `.web.upstream.conf.XXXXXX.tmp`: hidden, and never `*.conf`, so an
    // `include dir/*.conf` can not pick up a half-written file.
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(content)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Scans /proc for live children of `parent`.
fn local_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != "Z" && state != "X" {
            children.push(pid);
        }
    }
    children.sort_unstable();
    children
}

pub(crate) fn display_argv(argv: &[String]) -> String {
    argv.join(" ")
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quoting_gives_one_word_with_the_exact_value() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(x) `y` ;z"), "'$(x) `y` ;z'");
    }

    #[test]
    fn ssh_argv_keeps_every_value_one_argument_and_the_host_after_double_dash() {
        let ssh = SshConfig {
            host: "nginx.internal".to_string(),
            user: Some("deploy".to_string()),
            port: 2222,
            identity_file: Some(PathBuf::from("/keys/id_ed25519")),
            known_hosts_file: Some(PathBuf::from("/keys/known_hosts")),
            strict_host_key_checking: true,
        };
        let argv = Host::ssh_argv(&ssh, "'nginx' '-t'");
        assert_eq!(argv[0], "ssh");
        assert!(argv.windows(2).any(|w| w == ["-o", "BatchMode=yes"]));
        assert!(argv
            .windows(2)
            .any(|w| w == ["-o", "StrictHostKeyChecking=yes"]));
        assert!(argv.windows(2).any(|w| w == ["-p", "2222"]));
        assert!(argv.windows(2).any(|w| w == ["-l", "deploy"]));
        assert!(argv.windows(2).any(|w| w == ["-i", "/keys/id_ed25519"]));
        assert!(argv
            .windows(2)
            .any(|w| w == ["-o", "UserKnownHostsFile=/keys/known_hosts"]));
        let n = argv.len();
        assert_eq!(&argv[n - 3..], ["--", "nginx.internal", "'nginx' '-t'"]);
        let relaxed = Host::ssh_argv(
            &SshConfig {
                strict_host_key_checking: false,
                ..ssh
            },
            "true",
        );
        assert!(relaxed
            .windows(2)
            .any(|w| w == ["-o", "StrictHostKeyChecking=accept-new"]));
    }
}
