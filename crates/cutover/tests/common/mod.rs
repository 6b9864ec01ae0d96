//! The end-to-end harness: a real `cutover serve` process with a real
//! state directory, real release processes (the workspace's test app) and
//! real keep-alive HTTP clients on loopback.

#![allow(dead_code, clippy::unwrap_used)]

pub mod docker;
pub mod git;
pub mod http;
pub mod load;
pub mod nginx;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn cutover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cutover"))
}

pub fn testapp_bin() -> PathBuf {
    let path = cutover_bin().with_file_name("cutover-testapp");
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, done by scripts/test)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
            testapp = testapp_bin().display(),
            behaviours = behaviours.display(),
        );
        let config_path = dir.path().join("cutover.toml");
        fs::write(&config_path, config).unwrap();
        let mut daemon = Daemon {
            dir,
            config: config_path,
            proxy_port,
            child: None,
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
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new(cutover_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.cli(&["status", "--json"]);
            if status.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cutover serve did not come up:\n{}",
                self.serve_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn serve_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(cutover_bin())
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

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "cutover serve did not exit after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
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
        use std::io::{Read, Write};
        let mut stream =
            std::os::unix::net::UnixStream::connect(self.state_dir().join("admin.sock")).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: cutover\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or_default();
        serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("admin GET {path}: not JSON ({e}): {answer}"))
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
                if response.status == 200 && response.body.trim() == format!("version={version}") {
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
            "state_dir = \"state\"\n\n[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\n{apps}\n"
        );
        let config_path = dir.path().join("cutover.toml");
        fs::write(&config_path, config).unwrap();
        let mut daemon = Daemon {
            dir,
            config: config_path,
            proxy_port,
            child: None,
        };
        daemon.spawn();
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for (pid, _) in self.releases() {
            kill_release_group(pid);
        }
    }
}

/// Sends a signal to one process. Never to pid 0 or 1: those would mean
/// "my group" or "everything".
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }
}

/// SIGKILLs a release's whole process group (releases lead their own group).
pub fn kill_release_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Scans /proc for processes whose environment marks them as releases of
/// the cutover instance with this state directory.
pub fn releases_of_instance(state_dir: &Path) -> Vec<(u32, String)> {
    let marker = format!("CUTOVER_INSTANCE={}", state_dir.display());
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        // Zombies have an empty environ; skip processes that are exiting.
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if vars.contains(&marker.as_bytes()) {
            let version = vars
                .iter()
                .find_map(|v| v.strip_prefix(b"CUTOVER_VERSION="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            found.push((pid, version));
        }
    }
    found
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

/// Polls `condition` until it holds, failing with `what` after `within`.
pub fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
