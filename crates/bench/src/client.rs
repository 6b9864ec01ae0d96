//! `cutover-bench-client`, the two load shapes wrk does not give: `idle`
//! (hold N keep-alive connections, print `ready N …`) and `load` (N busy
//! keep-alive connections counting failed requests). Both run until their
//! standard input closes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::pin::Pin;
use crate::processes::{Proc, Processes};

/// A running client.
pub struct Client {
    proc: Proc,
    /// Closing it ends the run.
    stdin: Option<ChildStdin>,
    out: PathBuf,
}

/// What to start.
pub struct ClientSpec<'a> {
    pub binary: &'a Path,
    pub pin: &'a Pin,
    /// `idle` or `load`.
    pub mode: &'a str,
    pub port: u16,
    pub conns: u32,
    /// Its standard output and error.
    pub out: PathBuf,
}

impl Client {
    pub fn start(processes: &Processes, spec: ClientSpec<'_>) -> Result<Client> {
        let out = File::create(&spec.out)?;
        let mut command = spec.pin.command(spec.binary);
        command
            .arg(spec.mode)
            .arg(format!("127.0.0.1:{}", spec.port))
            .args(["--conns", &spec.conns.to_string()])
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out);
        let spawned = processes.spawn("cutover-bench-client", command)?;
        Ok(Client {
            proc: spawned.proc,
            stdin: spawned.stdin,
            out: spec.out,
        })
    }

    /// The first output line starting with `prefix`, once it is there;
    /// `None` if the client exits or `within` passes first.
    pub fn wait_for_line(
        &self,
        processes: &Processes,
        prefix: &str,
        within: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let output = std::fs::read_to_string(&self.out).unwrap_or_default();
            if let Some(line) = output.lines().find(|l| l.starts_with(prefix)) {
                return Some(line.to_string());
            }
            if Instant::now() >= deadline || !processes.is_running(&self.proc) {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Closes its standard input and waits for it to finish; its output.
    pub fn finish(mut self, processes: &Processes) -> String {
        drop(self.stdin.take());
        if !matches!(
            processes.wait(&self.proc, Duration::from_secs(30)),
            Ok(Some(_))
        ) {
            processes.stop(&self.proc);
        }
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

/// N of `ready N failed M` (the idle client's line).
pub fn ready_connections(line: &str) -> Option<u64> {
    line.strip_prefix("ready ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The load client's summary line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadSummary {
    pub requests: Option<u64>,
    pub failed: Option<u64>,
    /// `kind:n,…` or `none`.
    pub failure_kinds: Option<String>,
}

/// Reads `requests=… ok=… failed=… reconnects=… elapsed_s=… failures=…`
/// from the last line of the output.
pub fn load_summary(output: &str) -> LoadSummary {
    let line = output.lines().last().unwrap_or_default();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let count = |name: &str| field(name)?.parse().ok();
    LoadSummary {
        requests: count("requests"),
        failed: count("failed"),
        failure_kinds: line
            .split_once(" failures=")
            .map(|(_, kinds)| kinds.to_string())
            .filter(|kinds| !kinds.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_client_reports_how_many_connections_it_holds() {
        assert_eq!(ready_connections("ready 9998 failed 2"), Some(9998));
        assert_eq!(ready_connections("still open 10"), None);
    }

    #[test]
    fn the_load_summary_is_read_from_the_last_line() {
        let output = "warming up\nrequests=81234 ok=81230 failed=4 reconnects=4 elapsed_s=12.3 failures=closed-before-response:3,status:502:1\n";
        assert_eq!(
            load_summary(output),
            LoadSummary {
                requests: Some(81234),
                failed: Some(4),
                failure_kinds: Some("closed-before-response:3,status:502:1".into()),
            }
        );
        assert_eq!(load_summary("thread panicked\n"), LoadSummary::default());
    }
}
