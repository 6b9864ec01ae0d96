//! Debian's nginx started by a test as a non-daemon child with its own
//! prefix, configuration, pid file and logs in a temporary directory:
//! never the system's nginx, never /etc/nginx.

use crate::process::{alive, children_of, signal, spawn_logged, stop_child, wait_ready};
use crate::toml::{toml_list, toml_str};
use nix::sys::signal::Signal;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const NGINX: &str = "/usr/sbin/nginx";

/// Debian's nginx with its own prefix, configuration, pid file and logs.
pub struct NginxServer {
    pub prefix: PathBuf,
    pub conf: PathBuf,
    pub pid_file: PathBuf,
    pub error_log: PathBuf,
    child: Option<Child>,
}

impl NginxServer {
    /// Starts nginx with an `http` block that includes each of `includes`
    /// (paths or globs), in `prefix` (created).
    pub fn start(prefix: &Path, includes: &[PathBuf]) -> NginxServer {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: install Debian's nginx (scripts/test does)"
        );
        fs::create_dir_all(prefix.join("tmp")).unwrap();
        let p = prefix.display();
        let include_lines: String = includes
            .iter()
            .map(|i| format!("    include {};\n", i.display()))
            .collect();
        // `user root`: the master runs as root here (tests run as root) and
        // the workers need the temporary directories under `prefix`.
        let conf_text = format!(
            r#"# nginx of a cutover test (not the system's)
daemon off;
master_process on;
worker_processes 2;
user root;
pid {p}/nginx.pid;
error_log {p}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
{include_lines}}}
"#
        );
        let conf = prefix.join("nginx.conf");
        fs::write(&conf, conf_text).unwrap();
        let mut server = NginxServer {
            prefix: prefix.to_path_buf(),
            conf,
            pid_file: prefix.join("nginx.pid"),
            error_log: prefix.join("error.log"),
            child: None,
        };
        let mut child = spawn_logged(
            Command::new(NGINX).args(server.base_args()),
            &prefix.join("nginx.out"),
        )
        .unwrap();
        wait_ready(
            &mut child,
            "nginx",
            (Duration::from_secs(10), Duration::from_millis(20)),
            || {
                server
                    .try_master()
                    .is_some_and(|m| children_of(m).len() >= 2)
            },
            || {
                format!(
                    "{}\n{}",
                    fs::read_to_string(prefix.join("nginx.out")).unwrap_or_default(),
                    server.error_log_text()
                )
            },
        );
        server.child = Some(child);
        server
    }

    fn base_args(&self) -> Vec<String> {
        vec![
            "-p".to_string(),
            format!("{}/", self.prefix.display()),
            "-c".to_string(),
            self.conf.display().to_string(),
            "-e".to_string(),
            self.error_log.display().to_string(),
        ]
    }

    /// `nginx -t` for this instance.
    pub fn test_argv(&self) -> Vec<String> {
        let mut argv = vec![NGINX.to_string(), "-t".to_string()];
        argv.extend(self.base_args());
        argv
    }

    /// `nginx -s reload` for this instance.
    pub fn reload_argv(&self) -> Vec<String> {
        let mut argv = vec![NGINX.to_string(), "-s".to_string(), "reload".to_string()];
        argv.extend(self.base_args());
        argv
    }

    /// The keys of cutover's `[proxy.nginx]` table for this instance, with
    /// cutover's include directory `include_dir` and `reload` as the reload
    /// command (`reload_argv()` unless a test wraps it).
    pub fn cutover_keys(&self, include_dir: &Path, reload: &[String]) -> String {
        format!(
            "conf = {}\ninclude_dir = {}\npid_file = {}\nlog_dir = {}\ntest = {}\nreload = {}\n",
            toml_str(&self.conf.display().to_string()),
            toml_str(&include_dir.display().to_string()),
            toml_str(&self.pid_file.display().to_string()),
            toml_str(&self.prefix.display().to_string()),
            toml_list(&self.test_argv()),
            toml_list(reload),
        )
    }

    fn try_master(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    pub fn master(&self) -> u32 {
        self.try_master().expect("nginx's pid file")
    }

    pub fn workers(&self) -> Vec<u32> {
        children_of(self.master())
    }

    /// Reloads and waits until the new workers run and the old ones are gone.
    pub fn reload(&self) {
        let before = self.workers();
        let output = Command::new(&self.reload_argv()[0])
            .args(&self.reload_argv()[1..])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "nginx -s reload failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.workers().iter().any(|w| !before.contains(w)) {
            assert!(
                Instant::now() < deadline,
                "nginx did not reload:\n{}",
                self.error_log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        while self.workers().iter().any(|w| before.contains(w)) {
            assert!(
                Instant::now() < deadline,
                "nginx's old workers did not exit:\n{}",
                self.error_log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log_text(&self) -> String {
        fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let master = child.id();
        let workers = children_of(master);
        // Fast shutdown: the master stops its workers, then exits.
        stop_child(&mut child, Duration::from_secs(5));
        for worker in workers.into_iter().chain(children_of(master)) {
            if alive(worker) {
                signal(worker, Signal::SIGKILL);
            }
        }
    }
}
