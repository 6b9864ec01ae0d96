//! Lifecycle hooks (`[app.hooks]`) and the external verification command:
//! argv lists from the trusted config, run without a shell, with the
//! deployment's facts in the environment, a timeout, and their output kept
//! in the deployment's events.

use crate::journal::Journal;
use cutover_config::Slot;
use std::net::SocketAddr;
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

/// The deployment's facts a hook gets: argv stays as configured, values
/// arrive only through the environment.
pub(crate) struct HookFacts<'a> {
    pub app: &'a str,
    pub deployment: i64,
    pub trigger: &'a str,
    pub version: &'a str,
    /// The slot of the new release.
    pub slot: Option<Slot>,
    /// Where the new release listens.
    pub addr: Option<SocketAddr>,
    /// The release live before this deployment: its slot and version.
    pub previous: Option<(Slot, &'a str)>,
    /// Why the deployment failed (`on_failure`).
    pub reason: Option<&'a str>,
}

impl HookFacts<'_> {
    /// The environment of the hook named `hook`.
    pub(crate) fn env(&self, hook: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("CUTOVER_HOOK".to_string(), hook.to_string()),
            ("CUTOVER_APP".to_string(), self.app.to_string()),
            (
                "CUTOVER_DEPLOYMENT".to_string(),
                self.deployment.to_string(),
            ),
            ("CUTOVER_TRIGGER".to_string(), self.trigger.to_string()),
            ("CUTOVER_VERSION".to_string(), self.version.to_string()),
        ];
        if let Some(slot) = self.slot {
            env.push(("CUTOVER_SLOT".to_string(), slot.as_str().to_string()));
        }
        if let Some(addr) = self.addr {
            env.push(("CUTOVER_ADDR".to_string(), addr.to_string()));
            env.push(("CUTOVER_URL".to_string(), format!("http://{addr}")));
        }
        if let Some((slot, version)) = self.previous {
            env.push(("CUTOVER_PREVIOUS_VERSION".to_string(), version.to_string()));
            env.push((
                "CUTOVER_PREVIOUS_SLOT".to_string(),
                slot.as_str().to_string(),
            ));
        }
        if let Some(reason) = self.reason {
            env.push(("CUTOVER_REASON".to_string(), reason.to_string()));
        }
        env
    }
}

/// Runs a hook list in order, each announced and its output kept in the
/// deployment's journal; the first failure stops the list.
pub(crate) async fn run_list(
    journal: &Journal,
    work_dir: &Path,
    timeout: Duration,
    name: &str,
    commands: &[Vec<String>],
    env: &[(String, String)],
) -> Result<(), String> {
    for argv in commands {
        journal
            .note(&format!("running the {name} hook {argv:?}"))
            .await;
        let run = run(argv, work_dir, env, timeout).await;
        if !run.output.is_empty() {
            journal
                .note(&format!("{name} hook output:\n{}", run.output))
                .await;
        }
        run.result?;
    }
    Ok(())
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
        Ok((waited, output)) => finished_run(program, waited, &output),
        Err(_) => {
            kill_group(child.id());
            HookRun {
                result: Err(format!(
                    "`{program}` did not finish within {timeout:?} and was killed"
                )),
                output: String::new(),
            }
        }
    }
}

fn finished_run(
    program: &str,
    waited: std::io::Result<std::process::ExitStatus>,
    output: &[u8],
) -> HookRun {
    let result = match waited {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{program}` {}", describe(status))),
        Err(e) => Err(format!("waiting for `{program}` failed: {e}")),
    };
    HookRun {
        result,
        output: tail(output),
    }
}

/// kill_on_drop ends the leader; the group may hold more.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
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
