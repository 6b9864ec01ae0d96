//! Helpers for the testapp integration tests: spawn the built binary, find
//! its port from the "listening" line, and talk raw HTTP/1.1 to it with the
//! shared client (so framing and keep-alive behaviour are visible).

#![allow(dead_code, clippy::unwrap_used)]

use cutover_test_support::http::{Connection, Response};
use cutover_test_support::process::{signal, wait_exit};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_cutover-testapp");
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running testapp; killed on drop if still running.
pub struct App {
    pub child: Child,
    pub port: u16,
    pub listening_line: String,
    stderr: Option<std::process::ChildStderr>,
}

impl App {
    /// Starts the binary with `args` (add `--port 0` yourself, or set PORT
    /// via `envs`) and waits for its "listening" line.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> App {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn cutover-testapp");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(l) if !l.is_empty() => l.trim_end().to_string(),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "testapp did not print its listening line; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad listening line {line:?}"));
        let stderr = child.stderr.take();
        App {
            child,
            port,
            listening_line: line,
            stderr,
        }
    }

    pub fn start(args: &[&str]) -> App {
        Self::start_with_env(args, &[])
    }

    pub fn connect(&self) -> Connection {
        connect(self.port)
    }

    pub fn get(&self, path: &str) -> Response {
        self.connect().request("GET", path, &[], b"").unwrap()
    }

    /// Sends SIG`sig` (`TERM`, `INT`, …) to the app, by its PID.
    pub fn signal(&self, sig: &str) {
        let sig = format!("SIG{sig}")
            .parse()
            .unwrap_or_else(|e| panic!("no signal SIG{sig}: {e}"));
        signal(self.child.id(), sig);
    }

    /// Waits for the process to exit (panics after `TIMEOUT`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, TIMEOUT).expect("testapp did not exit in time")
    }

    pub fn stderr_text(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for runs that should exit by themselves).
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("PORT").stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A keep-alive client connection to the app on `port` (`Host: 127.0.0.1`).
pub fn connect(port: u16) -> Connection {
    Connection::open(port)
        .expect("connect to testapp")
        .host("127.0.0.1")
        .user_agent(None)
}
