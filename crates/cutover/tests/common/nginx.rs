//! The nginx front mode end to end: a real `cutover serve` with `[proxy]
//! mode = "nginx"`, driving a real nginx (Debian's, started by the test
//! with its own prefix and configuration in the temporary directory), the
//! test app as releases; optionally over a real sshd on 127.0.0.1.

use super::Daemon;
use cutover_test_support::binaries;
use cutover_test_support::nginx::NginxServer;
use cutover_test_support::ports::free_port;
use cutover_test_support::sshd::SshServer;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the nginx-mode daemon is configured.
pub struct FrontOptions {
    pub drain_timeout: &'static str,
    /// Drive nginx through this sshd instead of locally.
    pub ssh: Option<PathBuf>,
    /// cutover's include directory (default: `<dir>/upstreams`).
    pub include_dir: Option<PathBuf>,
    /// Extra arguments passed to the reload wrapper as data (see
    /// [`NginxFront::reload_arguments`]).
    pub reload_argument: Option<String>,
    /// Extra lines for the `[[app]]` table.
    pub app_extra: String,
    /// Extra lines for `[app.process]` (e.g. `advertise`).
    pub process_extra: String,
    /// The app's driver section instead of the test app as a process
    /// (e.g. an `[app.swarm]` table).
    pub driver: Option<String>,
}

impl Default for FrontOptions {
    fn default() -> Self {
        FrontOptions {
            drain_timeout: "30s",
            ssh: None,
            include_dir: None,
            reload_argument: None,
            app_extra: String::new(),
            process_extra: String::new(),
            driver: None,
        }
    }
}

/// nginx, the cutover daemon driving it, and the paths a test touches.
/// nginx is declared first so it stops before the daemon's directory goes.
pub struct NginxFront {
    pub nginx: NginxServer,
    pub sshd: Option<SshServer>,
    pub daemon: Daemon,
    pub include_dir: PathBuf,
    /// nginx includes `*.conf` from here in `http` (the site goes here).
    pub sites: PathBuf,
    /// nginx includes `*.conf` from here too (tests break nginx here).
    pub extra: PathBuf,
}

impl NginxFront {
    pub fn start(options: FrontOptions) -> NginxFront {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (sites, extra) = (root.join("sites"), root.join("extra"));
        let include_dir = options
            .include_dir
            .clone()
            .unwrap_or_else(|| root.join("upstreams"));
        let behaviours = root.join("behaviours");
        for d in [&sites, &extra, &include_dir, &behaviours] {
            fs::create_dir_all(d).unwrap();
        }
        let prefix = root.join("nginx");
        let nginx = NginxServer::start(&prefix, &[extra.join("*.conf"), sites.join("*.conf")]);
        let sshd = options.ssh.as_ref().map(|d| SshServer::start(d));
        let port = free_port();

        // The reload: nginx's own, behind a wrapper that fails (printing
        // the file) while `<dir>/fail-reload` exists, and that records its
        // data argument in `<dir>/reload-argument`. The wrapper's script
        // is fixed; every value reaches it as a positional argument.
        let mut reload = vec![
            "sh".to_string(),
            "-c".to_string(),
            r#"if [ -e "$1" ]; then cat -- "$1" >&2; exit 1; fi; printf '%s' "$3" > "$2"; shift 3; exec "$@""#.to_string(),
            "reload-wrapper".to_string(),
            root.join("fail-reload").display().to_string(),
            root.join("reload-argument").display().to_string(),
            options.reload_argument.clone().unwrap_or_default(),
        ];
        reload.extend(nginx.reload_argv());
        let ssh = sshd
            .as_ref()
            .map(SshServer::cutover_key)
            .unwrap_or_default();
        let config = format!(
            r#"
state_dir = "state"

[proxy]
mode = "nginx"
listen = ["127.0.0.1:{port}"]
max_body = "16MB"

[proxy.nginx]
{nginx_keys}{ssh}

[[app]]
name = "web"
drain_timeout = "{drain}"
{app_extra}

[app.health]
path = "/health"
deploy_timeout = "20s"
interval = "1s"

{driver}
"#,
            nginx_keys = nginx.cutover_keys(&include_dir, &reload),
            drain = options.drain_timeout,
            app_extra = options.app_extra,
            driver = options.driver.clone().unwrap_or_else(|| format!(
                r#"[app.process]
command = ["sh", "-c", 'exec "$0" --port "$1" --version "$2" $(cat "$3/$2.args" 2>/dev/null)', "{testapp}", "{{port}}", "{{version}}", "{behaviours}"]
stop_timeout = "5s"
{process_extra}"#,
                testapp = binaries::testapp().display(),
                behaviours = behaviours.display(),
                process_extra = options.process_extra,
            )),
        );
        let config_path = root.join("cutover.toml");
        fs::write(&config_path, config).unwrap();
        let mut daemon = Daemon {
            dir,
            config: config_path,
            proxy_port: port,
            child: None,
            upgraded: Vec::new(),
        };
        daemon.spawn();
        NginxFront {
            nginx,
            sshd,
            daemon,
            include_dir,
            sites,
            extra,
        }
    }

    pub fn root(&self) -> &Path {
        self.daemon.dir.path()
    }

    pub fn include_path(&self) -> PathBuf {
        self.include_dir.join("web.upstream.conf")
    }

    pub fn include(&self) -> String {
        fs::read_to_string(self.include_path()).unwrap_or_default()
    }

    /// Deploys the first version, then enables the site printed by
    /// `cutover nginx-config web` (as the README tells teams) and waits
    /// until nginx serves it.
    pub fn deploy_first(&self, version: &str) -> String {
        let output = self.daemon.deploy(version);
        let site = self.daemon.ok(&["nginx-config", "web"]);
        fs::write(self.sites.join("web.conf"), site).unwrap();
        self.nginx.reload();
        self.daemon.wait_serving(version, Duration::from_secs(10));
        output
    }

    /// Makes the reload command fail with `message` on stderr (None: work).
    pub fn fail_reload(&self, message: Option<&str>) {
        let flag = self.root().join("fail-reload");
        match message {
            Some(message) => fs::write(flag, message).unwrap(),
            None => {
                let _ = fs::remove_file(flag);
            }
        }
    }

    /// What the reload wrapper received as its data argument, last time.
    pub fn reload_argument(&self) -> Option<String> {
        fs::read_to_string(self.root().join("reload-argument")).ok()
    }

    /// The pid of the release running `version`.
    pub fn release_pid(&self, version: &str) -> Option<u32> {
        self.daemon
            .releases()
            .into_iter()
            .find(|(_, v)| v == version)
            .map(|(pid, _)| pid)
    }
}
