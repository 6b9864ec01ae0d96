//! The end-to-end harness: a real `cutover serve` process with a real
//! state directory, real release processes (the workspace's test app) and
//! real keep-alive HTTP clients on loopback.

#![allow(dead_code, clippy::unwrap_used)]

pub mod git;
pub mod nginx;
pub mod proxy;

use cutover_test_support::binaries;
use cutover_test_support::http::{self, Connection};
use cutover_test_support::ports::free_port;
use cutover_test_support::process::{self, signal, spawn_logged, wait_exit, wait_ready};
use nix::sys::signal::Signal;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Options of the one app (`web`) that the harness configures.
pub struct AppOptions {
    pub drain_timeout: &'static str,
    pub deploy_timeout: &'static str,
    pub fixed_ports: Option<(u16, u16)>,
    pub max_queued: Option<u32>,
    pub extra: String,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            drain_timeout: "30s",
            deploy_timeout: "20s",
            fixed_ports: None,
            max_queued: None,
            extra: String::new(),
        }
    }
}

/// A `cutover serve` daemon in its own temporary directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub proxy_port: u16,
    child: Option<Child>,
    /// Processes that took over through `cutover upgrade` (not children
    /// of the test), newest last.
    pub upgraded: Vec<u32>,
}

impl Daemon {
    pub fn start(options: AppOptions) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let proxy_port = free_port();
        let behaviours = dir.path().join("behaviours");
        fs::create_dir_all(&behaviours).unwrap();
        let ports = match options.fixed_ports {
            Some((blue, green)) => format!("ports = {{ blue = {blue}, green = {green} }}"),
            None => String::new(),
        };
        let max_queued = options
            .max_queued
            .map(|n| format!("max_queued = {n}"))
            .unwrap_or_default();
        // The wrapper passes placeholders as positional arguments (data, never
        // interpolated into the script) and appends per-version behaviour
        // flags that a test wrote to behaviours/<version>.args.
        let config = format!(
            r#"
state_dir = "state"

[proxy]
listen = ["127.0.0.1:{proxy_port}"]
# The io_uring data plane ("auto" picks it only on one CPU).
io = "uring"

[[app]]
name = "web"
drain_timeout = "{drain}"
{max_queued}
{extra}

[app.health]
path = "/health"
deploy_timeout = "{deploy}"
interval = "1s"

[app.process]
command = ["sh", "-c", 'exec "$0" --port "$1" --version "$2" $(cat "$3/$2.args" 2>/dev/null)', "{testapp}", "{{port}}", "{{version}}", "{behaviours}"]
stop_timeout = "5s"
{ports}
"#,
            drain = options.drain_timeout,
            deploy = options.deploy_timeout,
            extra = options.extra,
            testapp = binaries::testapp().display(),
            behaviours = behaviours.display(),
        );
        Daemon::launch(dir, proxy_port, &config)
    }

    /// Writes `config` to `<dir>/cutover.toml` and starts the daemon on it.
    fn launch(dir: tempfile::TempDir, proxy_port: u16, config: &str) -> Daemon {
        let config_path = dir.path().join("cutover.toml");
        fs::write(&config_path, config).unwrap();
        let mut daemon = Daemon {
            dir,
            config: config_path,
            proxy_port,
            child: None,
            upgraded: Vec::new(),
        };
        daemon.spawn();
        daemon
    }

    /// Makes version `version` of the test app start with these extra flags.
    pub fn behave(&self, version: &str, flags: &str) {
        fs::write(
            self.dir
                .path()
                .join("behaviours")
                .join(format!("{version}.args")),
            flags,
        )
        .unwrap();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn spawn(&mut self) {
        let mut child = spawn_logged(
            Command::new(binaries::cutover())
                .arg("serve")
                .arg("--config")
                .arg(&self.config),
            &self.dir.path().join("serve.log"),
        )
        .unwrap();
        wait_ready(
            &mut child,
            "cutover serve",
            (Duration::from_secs(20), Duration::from_millis(50)),
            || self.cli(&["status", "--json"]).status.success(),
            || self.serve_log(),
        );
        self.child = Some(child);
    }

    pub fn serve_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binaries::cutover())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "`cutover {}` failed ({}):\nstdout:\n{}\nstderr:\n{}\nserve log:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.serve_log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let stdout = self.ok(&with_json);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "`cutover {}` printed no JSON ({e}):\n{stdout}",
                args.join(" ")
            )
        })
    }

    pub fn deploy(&self, version: &str) -> String {
        self.ok(&["deploy", "web", "--version", version])
    }

    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "web"])
    }

    /// `web`'s deployments, newest first.
    pub fn history(&self) -> Vec<serde_json::Value> {
        self.json(&["history", "web"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), Signal::SIGTERM);
            assert!(
                wait_exit(&mut child, Duration::from_secs(15)).is_some(),
                "cutover serve did not exit after SIGTERM"
            );
        }
    }

    /// PIDs of release processes this daemon started, with their versions.
    pub fn releases(&self) -> Vec<(u32, String)> {
        releases_of_instance(&self.state_dir())
    }

    pub fn release_versions(&self) -> Vec<String> {
        let mut versions: Vec<String> = self.releases().into_iter().map(|(_, v)| v).collect();
        versions.sort();
        versions
    }

    /// GET on the admin API over its unix socket; the JSON answer.
    pub fn admin_get(&self, path: &str) -> serde_json::Value {
        let answer = self.admin_request(path);
        serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("admin GET {path}: not JSON ({e}): {answer:?}"))
    }

    /// GET on the admin API over its unix socket, on a connection of its own.
    pub fn admin_request(&self, path: &str) -> http::Response {
        Connection::unix(&self.state_dir().join("admin.sock"), "cutover")
            .and_then(|mut admin| admin.get_with(path, &[("Connection", "close")]))
            .unwrap_or_else(|e| panic!("admin GET {path} failed: {e}"))
    }

    /// Opens a streaming admin GET (SSE); read it with [`read_until`].
    pub fn admin_stream(&self, path: &str) -> std::os::unix::net::UnixStream {
        use std::io::Write;
        let mut stream =
            std::os::unix::net::UnixStream::connect(self.state_dir().join("admin.sock")).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: cutover\r\n\r\n").unwrap();
        stream
    }

    /// Messages of a deployment's events, oldest first.
    pub fn event_messages(&self, deployment: i64) -> Vec<String> {
        let detail = self.admin_get(&format!("/v1/deployments/{deployment}"));
        detail["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::get(self.proxy_port, path)
    }

    /// Waits until the proxy answers `/` with this version.
    pub fn wait_serving(&self, version: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(response) = http::try_get(self.proxy_port, "/") {
                if response.status == 200 && response.text().trim() == format!("version={version}")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "proxy never served {version}:\n{}",
                self.serve_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Daemon {
    /// A daemon whose config is the harness's state dir and proxy plus
    /// `apps` (one or more `[[app]]` tables, written by the test).
    pub fn start_with_apps(apps: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let proxy_port = free_port();
        let config = format!(
            "state_dir = \"state\"\n\n[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\nio = \"uring\"\n\n{apps}\n"
        );
        Daemon::launch(dir, proxy_port, &config)
    }
}

impl Daemon {
    /// The PID of the original `cutover serve`, while it runs.
    pub fn first_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `cutover upgrade [--binary PATH]`; on success the new PID is recorded.
    pub fn upgrade(&mut self, binary: Option<&Path>) -> Output {
        self.upgrade_with(binary, &[])
    }

    /// `cutover upgrade` with more arguments (e.g. `--no-wait`).
    pub fn upgrade_with(&mut self, binary: Option<&Path>, extra: &[&str]) -> Output {
        let mut args = vec!["upgrade", "--json"];
        args.extend(extra);
        let binary = binary.map(|b| b.display().to_string());
        if let Some(binary) = &binary {
            args.extend(["--binary", binary.as_str()]);
        }
        let output = self.cli(&args);
        if output.status.success() {
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let pid = report["pid"].as_u64().unwrap();
            self.upgraded.push(u32::try_from(pid).unwrap());
        }
        output
    }

    /// Whether `pid` is a `cutover serve` of this daemon's config still running.
    pub fn is_serve_process(&self, pid: u32) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // A zombie has exited (its parent, the test, reaps it later).
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let config = self.config.display().to_string();
        !zombie
            && String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|arg| arg == config)
    }

    /// Stops processes that took over by upgrades (by PID, checked first).
    fn stop_upgraded(&mut self) {
        for pid in std::mem::take(&mut self.upgraded) {
            if self.is_serve_process(pid) {
                signal(pid, Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        self.stop_upgraded();
        // Releases lead their own process group.
        for (pid, _) in self.releases() {
            process::kill_group(pid);
        }
    }
}

/// Scans /proc for processes whose environment marks them as releases of
/// the cutover instance with this state directory. A release's own
/// children inherit its environment (the launch shell's `$(cat …)` runs in
/// a subshell for a moment), so a marked process whose parent is marked too
/// belongs to that release and is not counted as one.
pub fn releases_of_instance(state_dir: &Path) -> Vec<(u32, String)> {
    let marker = format!("CUTOVER_INSTANCE={}", state_dir.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let marked: Vec<(u32, Option<u32>, String)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| Some((pid, release_version(pid, &marker)?)))
        .map(|(pid, version)| (pid, process::stat(pid).map(|s| s.parent), version))
        .collect();
    let marked_pids: Vec<u32> = marked.iter().map(|(pid, _, _)| *pid).collect();
    marked
        .into_iter()
        .filter(|(_, parent, _)| !parent.is_some_and(|p| marked_pids.contains(&p)))
        .map(|(pid, _, version)| (pid, version))
        .collect()
}

/// The CUTOVER_VERSION of a live process carrying `marker` in its
/// environment.
fn release_version(pid: u32, marker: &str) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    // Zombies have an empty environ; skip processes that are exiting.
    if !process::alive(pid) {
        return None;
    }
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    if !vars.contains(&marker.as_bytes()) {
        return None;
    }
    let version = vars
        .iter()
        .find_map(|v| v.strip_prefix(b"CUTOVER_VERSION="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    Some(version)
}

/// Reads from `stream` until `needle` shows up (or `within` passes) and
/// returns what was read.
pub fn read_until(
    stream: &mut std::os::unix::net::UnixStream,
    needle: &str,
    within: Duration,
) -> String {
    use std::io::Read;
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the admin stream failed: {e}"),
        }
        if String::from_utf8_lossy(&seen).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}
