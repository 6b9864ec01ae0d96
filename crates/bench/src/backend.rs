//! The backend every target sits in front of: `cutover-testapp`.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::net;
use crate::pin::Pin;
use crate::processes::{Proc, Processes};

/// A running testapp.
pub struct Backend {
    pub proc: Proc,
    pub port: u16,
}

/// How to start one testapp.
pub struct TestApp<'a> {
    pub binary: &'a Path,
    pub pin: &'a Pin,
    /// `None`: a free port of its choosing, read from its first line.
    pub port: Option<u16>,
    pub version: &'a str,
    pub threads: u32,
    /// `<log>.out` and `<log>.err` get its output.
    pub log: &'a Path,
}

impl TestApp<'_> {
    /// Starts it and waits until it reported its port (`port: None`) or
    /// answers `/health` (a given port).
    pub fn start(&self, processes: &Processes) -> Result<Backend> {
        let out = self.log.with_extension("out");
        let err = self.log.with_extension("err");
        let port = self.port.unwrap_or(0);
        let mut command = self.pin.command(self.binary);
        command
            .args(["--port", &port.to_string(), "--version", self.version])
            .args(["--threads", &self.threads.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?);
        let proc = processes.spawn("cutover-testapp", command)?.proc;
        let reported = match self.port {
            Some(port) => wait_healthy(processes, &proc, port).map(|()| port),
            None => wait_reported_port(processes, &proc, &out, &err),
        };
        match reported {
            Ok(port) => Ok(Backend { proc, port }),
            Err(e) => {
                processes.stop(&proc);
                Err(e)
            }
        }
    }
}

fn wait_reported_port(processes: &Processes, proc: &Proc, out: &Path, err: &Path) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(port) = listening_port(&text) {
            return Ok(port);
        }
        if !processes.is_running(proc) {
            let err = std::fs::read_to_string(err).unwrap_or_default();
            bail!("testapp exited: {}", err.trim());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("testapp did not report its port")
}

/// The port of `… listening on 127.0.0.1:PORT`.
fn listening_port(output: &str) -> Option<u16> {
    output.lines().find_map(|line| {
        let rest = &line[line.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Polled fast (the seed's deploy polls every 10 s; the bench measures the
/// switch, not the poll interval).
fn wait_healthy(processes: &Processes, proc: &Proc, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if net::get(port, "/health", Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        if !processes.is_running(proc) {
            bail!("testapp on port {port} exited before it was healthy");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow::anyhow!(
        "testapp on port {port} not healthy within 10 s"
    ))
    .context("starting the next version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_read_from_the_listening_line() {
        let out = "cutover-testapp direct listening on 127.0.0.1:43121 (1 threads)\n";
        assert_eq!(listening_port(out), Some(43121));
        assert_eq!(listening_port("starting\n"), None);
        assert_eq!(listening_port("listening on 127.0.0.1:\n"), None);
    }
}
