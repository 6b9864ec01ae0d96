//! Lifecycle hooks (`[app.hooks]`) and the external verification command:
//! argv lists from the trusted config, run without a shell, with the
//! deployment's facts in the environment, a timeout, and their output kept
//! in the deployment's events.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Output kept per hook, from its end.
const MAX_OUTPUT: usize = 8 * 1024;

/// What a hook run produced.
pub(crate) struct HookRun {
    /// `Err` says why the hook failed.
    pub result: Result<(), String>,
    /// The end of its combined stdout and stderr.
    pub output: String,
}

/// Runs one command to completion (or `timeout`, then kills it).
pub(crate) async fn run(
    argv: &[String],
    work_dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> HookRun {
    let Some((program, args)) = argv.split_first() else {
        return HookRun {
            result: Err("empty command".to_string()),
            output: String::new(),
        };
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(work_dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return HookRun {
                result: Err(format!(
                    "cannot run `{program}` (in {}): {e}",
                    work_dir.display()
                )),
                output: String::new(),
            }
        }
    };
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return HookRun {
            result: Err("cannot capture the hook's output".to_string()),
            output: String::new(),
        };
    };
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        out.extend_from_slice(&err);
        out
    };
    let finished = tokio::time::timeout(timeout, async {
        let output = collect.await;
        (child.wait().await, output)
    })
    .await;
    match finished {
        Ok((Ok(status), output)) => HookRun {
            result: if status.success() {
                Ok(())
            } else {
                Err(format!("`{program}` {}", describe(status)))
            },
            output: tail(&output),
        },
        Ok((Err(e), output)) => HookRun {
            result: Err(format!("waiting for `{program}` failed: {e}")),
            output: tail(&output),
        },
        Err(_) => {
            // kill_on_drop ends the leader; the group may hold more.
            if let Some(pid) = child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p > 1)
            {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            HookRun {
                result: Err(format!(
                    "`{program}` did not finish within {timeout:?} and was killed"
                )),
                output: String::new(),
            }
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended abnormally".to_string(),
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_OUTPUT);
    String::from_utf8_lossy(&bytes[start..])
        .trim_end()
        .to_string()
}
