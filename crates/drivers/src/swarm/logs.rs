//! A task's output, each line prefixed with the task (`web-green.1.abc@node
//! | …`, as `docker service logs` shows it), appended to the release log.
//! As for containers, the timestamp of the last line written is kept in a
//! cursor file per task, so a stream attached again after a restart of
//! cutover skips what was written already.

use crate::docker::logs::{follow_from, open, split_timestamp};
use bollard::container::LogOutput;
use bollard::Docker;
use futures_util::StreamExt;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How stale the cursor may get while output flows.
const CURSOR_EVERY: Duration = Duration::from_millis(200);

pub(crate) fn spawn(
    docker: Docker,
    task: String,
    label: String,
    path: PathBuf,
    cursor: PathBuf,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut file = match open(&path) {
            Ok(file) => file,
            Err(e) => {
                warn!(task = %label, "cannot open the release log {}: {e}; the task's output is not recorded", path.display());
                return;
            }
        };
        let (cutoff, options) = follow_from(&cursor);
        let mut stream = docker.task_logs(&task, Some(options));
        let prefix = format!("{label} | ");
        let mut last: Option<String> = None;
        let mut saved = Instant::now();
        while let Some(item) = stream.next().await {
            let bytes = match item {
                Ok(
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message },
                ) => message,
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => {
                    debug!(task = %label, "the log stream ended: {e}");
                    break;
                }
            };
            let (stamp, line) = split_timestamp(&bytes);
            if let (Some(cutoff), Some((time, _))) = (cutoff, stamp) {
                if time <= cutoff {
                    continue;
                }
            }
            let mut out = Vec::with_capacity(prefix.len() + line.len() + 1);
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(line);
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            if let Err(e) = file.write_all(&out) {
                warn!(task = %label, "cannot write to the release log {}: {e}", path.display());
                return;
            }
            if let Some((_, text)) = stamp {
                last = Some(text.to_string());
                if saved.elapsed() >= CURSOR_EVERY {
                    save(&cursor, last.as_deref());
                    saved = Instant::now();
                }
            }
        }
        save(&cursor, last.as_deref());
    })
}

fn save(cursor: &std::path::Path, last: Option<&str>) {
    let Some(last) = last else { return };
    let written = cursor
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(cursor, last));
    if let Err(e) = written {
        debug!("cannot save the log position {}: {e}", cursor.display());
    }
}
