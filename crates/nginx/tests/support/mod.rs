//! Test support shared by `cutover-nginx`'s tests and cutover's end-to-end
//! tests (included there with `#[path]`): a real nginx (Debian's) and a
//! real sshd, each started as a non-daemon child with its own
//! configuration in a temporary directory, on 127.0.0.1 and free ports.
//! Never the system's nginx or sshd, never /etc/nginx.

#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NGINX: &str = "/usr/sbin/nginx";
pub const SSHD: &str = "/usr/sbin/sshd";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TOML basic string holding exactly `value`.
pub fn toml_str(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings.
pub fn toml_list(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| toml_str(v)).collect();
    format!("[{}]", items.join(", "))
}

/// Live children of `parent` (from /proc), zombies excluded.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        if fields.next().and_then(|p| p.parse().ok()) == Some(parent) && state != "Z" {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `signal` to one process; never to pid 0 or 1.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

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
        let output = fs::File::create(prefix.join("nginx.out")).unwrap();
        let child = Command::new(NGINX)
            .args(server.base_args())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server
                .try_master()
                .is_some_and(|m| children_of(m).len() >= 2)
            {
                return server;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nginx exited at start ({status}):\n{}\n{}",
                    fs::read_to_string(prefix.join("nginx.out")).unwrap_or_default(),
                    server.error_log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start:\n{}",
                server.error_log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
        signal(master, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for worker in workers.into_iter().chain(children_of(master)) {
            if alive(worker) {
                signal(worker, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Debian's sshd on 127.0.0.1:<free port> with a throwaway host key and a
/// throwaway user key (for the current user), all in `dir`.
pub struct SshServer {
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    pub known_hosts_file: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl SshServer {
    pub fn start(dir: &Path) -> SshServer {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install Debian's openssh-server (scripts/test does)"
        );
        fs::create_dir_all(dir).unwrap();
        let keygen = |path: &Path| {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "cutover-test", "-f"])
                .arg(path)
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "ssh-keygen failed");
        };
        let host_key = dir.join("host_key");
        let identity_file = dir.join("user_key");
        keygen(&host_key);
        keygen(&identity_file);
        let port = free_port();
        let authorized = dir.join("authorized_keys");
        fs::copy(dir.join("user_key.pub"), &authorized).unwrap();
        let host_pub = fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let known_hosts_file = dir.join("known_hosts");
        fs::write(
            &known_hosts_file,
            format!("[127.0.0.1]:{port} {}", host_pub.trim()),
        )
        .unwrap();
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".to_string());
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nAllowUsers {user}\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
            ),
        )
        .unwrap();
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        let log = fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = SshServer {
            port,
            user,
            identity_file,
            known_hosts_file,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.ssh(&["true"]).status.success() {
                return server;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd exited at start ({status}):\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not accept a login:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Runs a remote command line with the test's key and known_hosts.
    pub fn ssh(&self, remote: &[&str]) -> std::process::Output {
        Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts_file.display()
            ))
            .arg("-i")
            .arg(&self.identity_file)
            .args(["-p", &self.port.to_string(), "-l", &self.user, "127.0.0.1"])
            .args(remote)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tiny keep-alive HTTP/1.1 backend answering every request with `body`;
/// `/slow?ms=N` waits N ms first. Stops when dropped.
pub struct Backend {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(body: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_accepting, body) = (stop.clone(), body.to_string());
        std::thread::spawn(move || {
            while !stop_accepting.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let body = body.clone();
                        std::thread::spawn(move || serve_connection(stream, &body));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend { port, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_connection(stream: TcpStream, body: &str) {
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut discard = vec![0; length];
        if reader.read_exact(&mut discard).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        if let Some(ms) = path
            .strip_prefix("/slow?ms=")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// One GET through a new connection; the body, or the error.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls until `condition` holds, failing with `what` after `within`.
pub fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
