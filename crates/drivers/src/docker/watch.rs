//! The exit watch of a container: Docker's wait endpoint, re-armed if the
//! connection to the engine drops (dockerd restarting), and the container's
//! final state read back to describe how it ended.

use super::logs::short;
use crate::ExitWatch;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::WaitContainerOptions;
use bollard::Docker;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// How long the exit description waits for the last lines of output to
/// reach the log file (so a failure reason can quote them).
const LOG_FLUSH_WAIT: Duration = Duration::from_secs(3);
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Watches container `id`; the watch resolves once it stopped running.
pub(super) fn spawn(docker: Docker, id: String, label: String, logs: JoinHandle<()>) -> ExitWatch {
    let (sender, receiver) = watch::channel(None);
    tokio::spawn(async move {
        let description = tokio::select! {
            () = sender.closed() => return,
            description = wait_for_end(&docker, &id) => description,
        };
        // The output stream ends when the container does: let it write the
        // last lines before the end is announced.
        let _ = tokio::time::timeout(LOG_FLUSH_WAIT, logs).await;
        info!(container = %short(&id), "{label} {description}");
        sender.send_replace(Some(description));
    });
    ExitWatch::new(receiver)
}

async fn wait_for_end(docker: &Docker, id: &str) -> String {
    let mut delay = RETRY_FIRST;
    loop {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let waited = docker.wait_container(id, Some(options)).next().await;
        match waited {
            Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => {
                return describe_end(docker, id).await;
            }
            Some(Err(e)) if super::client::is_not_found(&e) => {
                return "was removed".to_string();
            }
            Some(Err(e)) => {
                debug!(container = %short(id), "waiting for the container failed ({e}); checking its state");
            }
            None => {
                debug!(container = %short(id), "the wait for the container ended without an answer; checking its state");
            }
        }
        // The engine went away (restarting?) or answered oddly: look at
        // the container once it answers again.
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
        match docker.inspect_container(id, None).await {
            Ok(inspect) => {
                let running = inspect
                    .state
                    .as_ref()
                    .and_then(|s| s.running)
                    .unwrap_or(false);
                if !running {
                    return describe_end(docker, id).await;
                }
            }
            Err(e) if super::client::is_not_found(&e) => return "was removed".to_string(),
            Err(_) => {}
        }
    }
}

/// "exited with code 3", "was killed by the kernel: out of memory (exit code 137)".
async fn describe_end(docker: &Docker, id: &str) -> String {
    let inspect = match docker.inspect_container(id, None).await {
        Ok(inspect) => inspect,
        Err(e) if super::client::is_not_found(&e) => return "was removed".to_string(),
        Err(e) => return format!("stopped (its final state cannot be read: {e})"),
    };
    let Some(state) = inspect.state else {
        return "stopped".to_string();
    };
    let code = state.exit_code.unwrap_or_default();
    let restarts = inspect.restart_count.unwrap_or(0);
    let mut description = if state.oom_killed == Some(true) {
        format!(
            "was killed for running out of memory (exit code {code}); raise [app.docker] memory"
        )
    } else if matches!(state.status, Some(ContainerStateStatusEnum::RESTARTING)) {
        format!("exited with code {code} and is restarting")
    } else if code > 128 && code < 160 {
        format!("exited with code {code} (killed by signal {})", code - 128)
    } else {
        format!("exited with code {code}")
    };
    if let Some(error) = state.error.filter(|e| !e.is_empty()) {
        description.push_str(&format!(" ({error})"));
    }
    if restarts > 0 {
        description.push_str(&format!(" after {restarts} restart(s)"));
    }
    description
}
