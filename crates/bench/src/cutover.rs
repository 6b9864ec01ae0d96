//! The cutover target: `cutover serve` with a generated config (app `bench`,
//! process driver running the testapp), made live with `cutover deploy
//! bench --version v1`. The CLI and config are the ones in PRODUCT.md.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::net;
use crate::pin::Pin;
use crate::processes::{Proc, Processes};
use crate::procfs;

/// A deploy that takes longer is a failed switch.
const DEPLOY_LIMIT: Duration = Duration::from_secs(120);

/// The ports of one cutover instance.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listen: u16,
    pub blue: u16,
    pub green: u16,
}

/// `cutover.toml`: one app on every host, access log off, W proxy workers,
/// `[proxy] io` as given.
pub fn config(dir: &Path, ports: Ports, workers: u32, io: &str, testapp: &Path) -> String {
    let dir = dir.display();
    let testapp = testapp.display();
    let Ports {
        listen,
        blue,
        green,
    } = ports;
    format!(
        r#"state_dir = "{dir}/state"

[proxy]
listen = ["127.0.0.1:{listen}"]
access_log = "off"
workers = {workers}
io = "{io}"
# Every load client connects from 127.0.0.1: no per-address cap.
max_connections_per_client = 0

[admin]
socket = "{dir}/state/admin.sock"

[[app]]
name = "bench"
hosts = ["*"]
drain_timeout = "5s"

[app.health]
path = "/health"
interval = "1s"
timeout = "2s"
deploy_timeout = "30s"

[app.process]
command = ["{testapp}", "--port", "{{port}}", "--version", "{{version}}", "--threads", "{workers}"]
ports = {{ blue = {blue}, green = {green} }}
stop_timeout = "5s"
"#
    )
}

/// How to start one cutover instance.
pub struct CutoverSpec<'a> {
    pub binary: &'a Path,
    pub testapp: &'a Path,
    pub pin: &'a Pin,
    pub workers: u32,
    /// `[proxy] io`: "auto" (io_uring here), "uring" or "epoll".
    pub io: &'a str,
    /// A fresh directory: no recovery of a previous run.
    pub dir: PathBuf,
}

/// `cutover serve` running, with v1 live.
pub struct Cutover {
    pub proc: Proc,
    pub port: u16,
    dir: PathBuf,
    binary: PathBuf,
}

impl Cutover {
    /// Starts `cutover serve`, deploys v1 and checks it answers; on failure
    /// the error carries the log tails and nothing of it is left running.
    pub fn start(processes: &Processes, spec: CutoverSpec<'_>) -> Result<Cutover> {
        let ports = Ports {
            listen: net::free_port()?,
            blue: net::free_port()?,
            green: net::free_port()?,
        };
        let config_text = config(&spec.dir, ports, spec.workers, spec.io, spec.testapp);
        Cutover::start_with_config(processes, &spec, ports.listen, &config_text)
    }

    /// Like [`Cutover::start`] with a config of the caller's (app `bench`,
    /// proxy on `listen`, state and admin socket under `spec.dir/state`).
    pub fn start_with_config(
        processes: &Processes,
        spec: &CutoverSpec<'_>,
        listen: u16,
        config_text: &str,
    ) -> Result<Cutover> {
        let dir = spec.dir.clone();
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::write(dir.join("cutover.toml"), config_text)?;
        let log = File::create(dir.join("serve.log"))?;
        let mut command = spec.pin.command(spec.binary);
        // The proxy's worker threads are `workers = W` (nginx:
        // worker_processes W); the control plane's runtime gets as many.
        command
            .env("TOKIO_WORKER_THREADS", spec.workers.to_string())
            .arg("serve")
            .arg("--config")
            .arg(dir.join("cutover.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = processes.spawn("cutover serve", command)?.proc;
        let cutover = Cutover {
            proc,
            port: listen,
            dir,
            binary: spec.binary.to_path_buf(),
        };
        if let Err(e) = cutover.make_v1_live(processes) {
            processes.stop(&cutover.proc);
            return Err(e);
        }
        Ok(cutover)
    }

    fn make_v1_live(&self, processes: &Processes) -> Result<()> {
        let listening = net::wait_listening(self.port, Duration::from_secs(30), || {
            processes.is_running(&self.proc)
        });
        if !listening {
            bail!(
                "'cutover serve' did not listen on {}; log tail:\n{}",
                self.port,
                self.tail("serve.log")
            );
        }
        self.deploy(processes, "v1")
            .and_then(|()| net::check_version(self.port, "version=v1"))
            .map_err(|e| {
                anyhow!(
                    "deploy did not make v1 live ({e:#}); deploy output:\n{}\n{}",
                    self.tail("deploy.log"),
                    self.tail("serve.log")
                )
            })
    }

    /// `cutover deploy bench --version VERSION`, up to two minutes.
    pub fn deploy(&self, processes: &Processes, version: &str) -> Result<()> {
        let log = File::create(self.dir.join("deploy.log"))?;
        let mut command = std::process::Command::new(&self.binary);
        command
            .args(["deploy", "bench", "--version", version, "--config"])
            .arg(self.dir.join("cutover.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let deploy = processes.spawn("cutover deploy", command)?.proc;
        match processes.wait(&deploy, DEPLOY_LIMIT)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("cutover deploy {version}: {status}"),
            None => {
                processes.stop(&deploy);
                bail!("cutover deploy {version} took over {DEPLOY_LIMIT:?}")
            }
        }
    }

    /// `cutover upgrade`: the daemon hands over to a new process of the
    /// same binary; the new PID.
    pub fn upgrade(&self, processes: &Processes) -> Result<u32> {
        let out = self.dir.join("upgrade.out");
        let mut command = std::process::Command::new(&self.binary);
        command
            .args(["upgrade", "--config"])
            .arg(self.dir.join("cutover.toml"))
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(self.dir.join("upgrade.err"))?);
        let upgrade = processes.spawn("cutover upgrade", command)?.proc;
        match processes.wait(&upgrade, DEPLOY_LIMIT)? {
            Some(status) if status.success() => {}
            Some(status) => bail!("cutover upgrade: {status}: {}", self.tail("upgrade.err")),
            None => {
                processes.stop(&upgrade);
                bail!("cutover upgrade took over {DEPLOY_LIMIT:?}")
            }
        }
        let output = std::fs::read_to_string(&out)?;
        output
            .lines()
            .find_map(|line| line.strip_prefix("upgraded: cutover now runs as pid "))
            .and_then(|pid| pid.trim().parse().ok())
            .ok_or_else(|| anyhow!("cutover upgrade named no PID: {output}"))
    }

    /// `cutover ARGS --json --config …` (a quick read: history, status).
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let output = std::process::Command::new(&self.binary)
            .args(args)
            .arg("--json")
            .arg("--config")
            .arg(self.dir.join("cutover.toml"))
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            bail!(
                "cutover {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// GET `path` on the admin API (its unix socket), as JSON.
    pub fn admin_get(&self, path: &str) -> Result<serde_json::Value> {
        use std::io::{Read, Write};
        let socket = self.dir.join("state/admin.sock");
        let mut conn = std::os::unix::net::UnixStream::connect(&socket)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        // HTTP/1.0: the answer ends when the connection closes, never chunked.
        write!(conn, "GET {path} HTTP/1.0\r\nHost: cutover\r\n\r\n")?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("admin GET {path}: no complete answer"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!(
                "admin GET {path}: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(serde_json::from_str(body)?)
    }

    /// The app slots `cutover serve` runs now (its descendants).
    pub fn slot_pids(&self) -> Vec<i32> {
        procfs::descendants(self.proc.pid)
            .into_iter()
            .map(|s| s.pid)
            .collect()
    }

    /// Stops `cutover serve` and then its app slots, which it leaves running
    /// on purpose when it stops.
    pub fn stop(self, processes: &Processes) {
        processes.stop(&self.proc);
    }

    fn tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_runs_the_testapp_on_the_blue_and_green_ports() {
        let ports = Ports {
            listen: 8080,
            blue: 8081,
            green: 8082,
        };
        let text = config(
            Path::new("/tmp/b/cut"),
            ports,
            2,
            "epoll",
            Path::new("/r/cutover-testapp"),
        );
        assert!(text.starts_with("state_dir = \"/tmp/b/cut/state\"\n\n[proxy]\nlisten = [\"127.0.0.1:8080\"]\naccess_log = \"off\"\nworkers = 2\nio = \"epoll\"\n"), "{text}");
        assert!(text.contains("socket = \"/tmp/b/cut/state/admin.sock\""));
        assert!(text.contains(
            "command = [\"/r/cutover-testapp\", \"--port\", \"{port}\", \"--version\", \"{version}\", \"--threads\", \"2\"]\nports = { blue = 8081, green = 8082 }\n"
        ));
        // cutover itself must accept it.
        let parsed =
            cutover_config::Config::parse(Path::new("/tmp/b/cut/cutover.toml"), &text).unwrap();
        assert_eq!(parsed.apps[0].name, "bench");
        assert_eq!(parsed.proxy.workers.map(|w| w.get()), Some(2));
        assert_eq!(parsed.proxy.max_connections_per_client, 0);
        assert_eq!(parsed.proxy.listen[0].port(), 8080);
    }
}
