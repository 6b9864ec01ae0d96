//! Debian's sshd on 127.0.0.1 and a free port, started by a test as a
//! non-daemon child with a throwaway host key and user key in a directory
//! of its own: never the system's sshd or keys.

use crate::ports::free_port;
use crate::process::{spawn_logged, stop_child, wait_ready};
use crate::toml::toml_str;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SSHD: &str = "/usr/sbin/sshd";

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
        let mut child = spawn_logged(
            Command::new(SSHD).args(["-D", "-e", "-f"]).arg(&config),
            &dir.join("sshd.log"),
        )
        .unwrap();
        let mut server = SshServer {
            port,
            user,
            identity_file,
            known_hosts_file,
            dir: dir.to_path_buf(),
            child: None,
        };
        wait_ready(
            &mut child,
            "sshd (accepting a login)",
            (Duration::from_secs(10), Duration::from_millis(50)),
            || server.ssh(&["true"]).status.success(),
            || server.log(),
        );
        server.child = Some(child);
        server
    }

    /// The `ssh = { … }` key of cutover's `[proxy.nginx]` table for this server.
    pub fn cutover_key(&self) -> String {
        format!(
            "ssh = {{ host = \"127.0.0.1\", port = {}, user = {}, identity_file = {}, known_hosts_file = {} }}",
            self.port,
            toml_str(&self.user),
            toml_str(&self.identity_file.display().to_string()),
            toml_str(&self.known_hosts_file.display().to_string()),
        )
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
            stop_child(&mut child, Duration::from_secs(5));
        }
    }
}
