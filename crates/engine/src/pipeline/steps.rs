//! Running the build steps: one after the other, each in its own process
//! group with a minimal environment, until one fails or `build_timeout`
//! passes. Output (secrets redacted) goes to the build log, the first lines
//! also to the deployment's journal; a failure quotes the last lines.

use super::child::GroupGuard;
use super::redact::Redactor;
use crate::journal::Journal;
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

/// Runs the build steps one after the other until one fails or the
/// deadline passes. Output goes to the build log, the first lines also to
/// the deployment's events; a failure quotes the last lines.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_steps(
    steps: &[Vec<String>],
    dir: &Path,
    env: &[(String, String)],
    deadline: Instant,
    budget: Duration,
    log_path: &Path,
    journal: &Journal,
    redactor: &Redactor,
) -> Result<(), String> {
    if let Some(parent) = log_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    // Build output may hold secrets a step printed: the owner's alone.
    let mut log = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(log_path)
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
        journal.output(&header).await;
        let result = run_step(
            argv,
            dir,
            env,
            deadline,
            budget,
            &mut log,
            journal,
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
    journal: &Journal,
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
                Some(line) => output.line(line, log, journal, redactor).await,
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
        output.line(line, log, journal, redactor).await;
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
        journal: &Journal,
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
            journal.output(&format!("| {line}")).await;
        } else if self.emitted == MAX_OUTPUT_EVENTS {
            journal
                .output(&format!(
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
