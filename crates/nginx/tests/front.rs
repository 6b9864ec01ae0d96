//! `cutover-nginx` against Debian's real nginx (and sshd), each started by
//! the test in a temporary directory: the include, `nginx -t`, the reload,
//! the restore on failure, the drain of old workers, and the remote mode
//! over ssh with hostile values.

#![allow(clippy::unwrap_used)]

mod common;

use common::{http_get, Backend};
use cutover_config::Config;
use cutover_nginx::{Nginx, WorkersExit};
use cutover_test_support::nginx::NginxServer;
use cutover_test_support::ports::free_port;
use cutover_test_support::process::alive;
use cutover_test_support::sshd::SshServer;
use cutover_test_support::toml::toml_str;
use cutover_test_support::wait::eventually;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A site served by a test nginx, driven by a `Nginx` from a parsed config.
struct Setup {
    dir: tempfile::TempDir,
    server: NginxServer,
    nginx: Nginx,
    config: Config,
    port: u16,
}

fn addr(port: u16) -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// nginx including `sites/*.conf` and `extra/*.conf` of `dir`; cutover's
/// include directory `dir/upstreams`, the site from
/// `site_config` written once the first include exists.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("nginx");
    let sites = dir.path().join("sites");
    let extra = dir.path().join("extra");
    let include_dir = dir.path().join("upstreams");
    for d in [&sites, &extra, &include_dir] {
        fs::create_dir_all(d).unwrap();
    }
    let server = NginxServer::start(&prefix, &[extra.join("*.conf"), sites.join("*.conf")]);
    let port = free_port();
    let text = format!(
        r#"
[proxy]
mode = "nginx"
listen = ["127.0.0.1:{port}"]
max_body = "8MB"
[proxy.nginx]
{nginx_keys}
[[app]]
name = "web"
[app.process]
command = ["true"]
"#,
        nginx_keys = server.cutover_keys(&include_dir, &server.reload_argv()),
    );
    let config = Config::parse(&dir.path().join("cutover.toml"), &text).unwrap();
    let nginx = Nginx::new(config.proxy.nginx.clone().unwrap());
    Setup {
        dir,
        server,
        nginx,
        config,
        port,
    }
}

impl Setup {
    /// Enables the site (as a team would after the first deployment).
    fn enable_site(&self) {
        let nginx = self.config.proxy.nginx.as_ref().unwrap();
        let app = self.config.app("web").unwrap();
        let site = cutover_nginx::site_config(nginx, app, self.config.proxy.max_body, false);
        fs::write(self.dir.path().join("sites/web.conf"), site).unwrap();
        self.server.reload();
    }

    fn include(&self) -> Option<String> {
        fs::read_to_string(self.nginx.include_path("web")).ok()
    }

    fn serving(&self, body: &str) {
        eventually(
            Duration::from_secs(10),
            &format!("nginx serving {body}"),
            || http_get(self.port, "/").is_ok_and(|(status, b)| status == 200 && b == body),
        );
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn switch_writes_the_include_reloads_and_the_old_workers_exit() {
    let s = setup();
    let (a, b) = (Backend::start("A"), Backend::start("B"));
    let rt = rt();
    let first = rt.block_on(s.nginx.switch("web", addr(a.port))).unwrap();
    assert!(first.reloaded);
    s.enable_site();
    s.serving("A");
    let include = s.include().unwrap();
    assert!(
        include.contains(&format!(
            "upstream cutover_web {{\n    server 127.0.0.1:{};\n    keepalive 32;\n}}",
            a.port
        )),
        "{include}"
    );
    // No temporary file is left next to it.
    let names: Vec<String> = fs::read_dir(s.nginx.include_path("web").parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["web.upstream.conf"]);

    let before = s.server.workers();
    let switched = rt.block_on(s.nginx.switch("web", addr(b.port))).unwrap();
    assert!(switched.reloaded);
    assert_eq!(switched.old_workers.pids, before);
    s.serving("B");
    let exit = rt.block_on(
        s.nginx
            .wait_exited(&switched.old_workers, Duration::from_secs(20)),
    );
    assert!(
        matches!(exit, WorkersExit::Exited { workers: 2.., .. }),
        "{exit:?}"
    );
    assert!(before.iter().all(|w| !alive(*w)));

    // The same address again changes nothing and reloads nothing.
    let workers = s.server.workers();
    let again = rt.block_on(s.nginx.switch("web", addr(b.port))).unwrap();
    assert!(!again.reloaded && again.old_workers.is_empty());
    assert_eq!(s.server.workers(), workers);
}

#[test]
fn drain_waits_for_a_long_request_held_by_an_old_worker() {
    let s = setup();
    let (a, b) = (Backend::start("A"), Backend::start("B"));
    let rt = rt();
    rt.block_on(s.nginx.switch("web", addr(a.port))).unwrap();
    s.enable_site();
    s.serving("A");
    let port = s.port;
    let slow = std::thread::spawn(move || http_get(port, "/slow?ms=2500"));
    std::thread::sleep(Duration::from_millis(300));
    let switched = rt.block_on(s.nginx.switch("web", addr(b.port))).unwrap();
    s.serving("B");
    let started = Instant::now();
    let exit = rt.block_on(
        s.nginx
            .wait_exited(&switched.old_workers, Duration::from_secs(30)),
    );
    let waited = started.elapsed();
    assert!(matches!(exit, WorkersExit::Exited { .. }), "{exit:?}");
    assert_eq!(slow.join().unwrap().unwrap(), (200, "A".to_string()));
    assert!(
        waited >= Duration::from_millis(1500),
        "the drain ended before the old worker's request did: {waited:?}"
    );

    // With a shorter timeout than the request: TimedOut, naming the rest.
    let slow = std::thread::spawn(move || http_get(port, "/slow?ms=2000"));
    std::thread::sleep(Duration::from_millis(300));
    let switched = rt.block_on(s.nginx.switch("web", addr(a.port))).unwrap();
    let exit = rt.block_on(
        s.nginx
            .wait_exited(&switched.old_workers, Duration::from_millis(300)),
    );
    assert!(
        matches!(exit, WorkersExit::TimedOut { remaining: 1.., .. }),
        "{exit:?}"
    );
    assert_eq!(slow.join().unwrap().unwrap(), (200, "B".to_string()));
}

#[test]
fn rejected_configuration_restores_the_include_with_nginx_message() {
    let s = setup();
    let (a, b) = (Backend::start("A"), Backend::start("B"));
    let rt = rt();
    rt.block_on(s.nginx.switch("web", addr(a.port))).unwrap();
    s.enable_site();
    s.serving("A");
    let good = s.include().unwrap();
    fs::write(
        s.dir.path().join("extra/broken.conf"),
        "this_is_not_nginx on;\n",
    )
    .unwrap();
    let workers = s.server.workers();

    let error = rt
        .block_on(s.nginx.switch("web", addr(b.port)))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown directive \"this_is_not_nginx\""),
        "{error}"
    );
    assert!(error.contains("was restored"), "{error}");
    assert_eq!(s.include().unwrap(), good);
    assert_eq!(
        s.server.workers(),
        workers,
        "nginx must not have been reloaded"
    );
    s.serving("A");

    // Fixed: the switch goes through.
    fs::remove_file(s.dir.path().join("extra/broken.conf")).unwrap();
    rt.block_on(s.nginx.switch("web", addr(b.port))).unwrap();
    s.serving("B");
}

#[test]
fn rejected_first_include_is_removed_again() {
    let s = setup();
    let a = Backend::start("A");
    fs::write(
        s.dir.path().join("extra/broken.conf"),
        "this_is_not_nginx on;\n",
    )
    .unwrap();
    let error = rt()
        .block_on(s.nginx.switch("web", addr(a.port)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("this_is_not_nginx"), "{error}");
    assert!(error.contains("removed again"), "{error}");
    assert_eq!(s.include(), None);
}

#[test]
fn failing_reload_command_restores_the_include() {
    let s = setup();
    let (a, b) = (Backend::start("A"), Backend::start("B"));
    let rt = rt();
    rt.block_on(s.nginx.switch("web", addr(a.port))).unwrap();
    s.enable_site();
    s.serving("A");
    let good = s.include().unwrap();
    let mut config = s.config.proxy.nginx.clone().unwrap();
    config.reload = vec![
        "sh".to_string(),
        "-c".to_string(),
        "echo 'reload refused: systemd says no' >&2; exit 7".to_string(),
    ];
    let failing = Nginx::new(config);
    let error = rt
        .block_on(failing.switch("web", addr(b.port)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("reload refused: systemd says no"), "{error}");
    assert!(error.contains("status 7"), "{error}");
    assert_eq!(s.include().unwrap(), good);
    s.serving("A");
}

#[test]
fn missing_pid_file_changes_nothing() {
    let s = setup();
    let a = Backend::start("A");
    let mut config = s.config.proxy.nginx.clone().unwrap();
    config.pid_file = s.dir.path().join("no-such.pid");
    let error = rt()
        .block_on(Nginx::new(config).switch("web", addr(a.port)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("pid file"), "{error}");
    assert!(error.contains("nothing changed"), "{error}");
    assert_eq!(s.include(), None);
}

/// Without `pid_file`, the pid file is the one nginx's own configuration
/// names (`nginx -T`), not a guessed default: the switch and its drain work.
#[test]
fn pid_file_is_taken_from_the_configuration_when_not_set() {
    let s = setup();
    let (a, b) = (Backend::start("A"), Backend::start("B"));
    let runtime = rt();
    runtime
        .block_on(s.nginx.switch("web", addr(a.port)))
        .unwrap();
    s.enable_site();
    s.serving("A");
    let mut config = s.config.proxy.nginx.clone().unwrap();
    config.pid_file = s.dir.path().join("not-this-one.pid");
    config.pid_file_from_conf = true;
    let nginx = Nginx::new(config);
    let before = s.server.workers();
    let switched = runtime.block_on(nginx.switch("web", addr(b.port))).unwrap();
    assert!(switched.reloaded);
    assert_eq!(
        switched.old_workers.pids, before,
        "the workers of the real master"
    );
    let found = runtime.block_on(nginx.pid_file()).unwrap().to_path_buf();
    assert_eq!(found, s.server.pid_file, "the `pid` of the test nginx conf");
    s.serving("B");
    let exit = runtime.block_on(nginx.wait_exited(&switched.old_workers, Duration::from_secs(20)));
    assert!(matches!(exit, WorkersExit::Exited { .. }), "{exit:?}");
}

/// Values a shell would act on if they were interpolated into a command
/// line: every one must arrive as data.
fn hostile(marker_dir: &Path) -> String {
    let m = marker_dir.display();
    format!(
        "it's $(touch {m}/pwned-1) `touch {m}/pwned-2` ; touch {m}/pwned-3 & \"q\" \\ | touch {m}/pwned-4\n touch {m}/pwned-5 #"
    )
}

fn assert_no_markers(marker_dir: &Path) {
    for n in 1..=5 {
        let marker = marker_dir.join(format!("pwned-{n}"));
        assert!(
            !marker.exists(),
            "{} exists: a value reached a shell",
            marker.display()
        );
    }
}

#[test]
fn quoting_keeps_hostile_values_one_word_for_a_posix_shell() {
    let dir = tempfile::tempdir().unwrap();
    let value = hostile(dir.path());
    for value in [value.as_str(), "", "'", "''", "\\'", "a'b'c", "$HOME", "\n"] {
        let line =
            cutover_nginx::remote_command_line(&["printf".into(), "%s".into(), value.into()]);
        for shell in ["sh", "bash"] {
            let output = Command::new(shell).arg("-c").arg(&line).output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                value,
                "{shell}: {line}"
            );
        }
    }
    assert_no_markers(dir.path());
}

#[test]
fn remote_mode_over_ssh_runs_argv_without_shell_interpolation() {
    let markers = tempfile::tempdir().unwrap();
    let value = hostile(markers.path());
    let outer = tempfile::tempdir().unwrap();
    // cutover's include directory has the hostile value in its path; nginx
    // reaches it through a plain symlink.
    let include_dir = outer.path().join("inc").join(&value);
    fs::create_dir_all(&include_dir).unwrap();
    let ssh_dir = outer.path().join("ssh");
    let sshd = SshServer::start(&ssh_dir);
    let argument_file = outer.path().join("reload-argument");

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("upstreams");
    std::os::unix::fs::symlink(&include_dir, &link).unwrap();
    let prefix = dir.path().join("nginx");
    let sites = dir.path().join("sites");
    fs::create_dir_all(&sites).unwrap();
    let server = NginxServer::start(&prefix, &[sites.join("*.conf")]);
    // The reload command: a fixed script that records its argument (the
    // hostile value) and reloads.
    let mut reload = vec![
        "sh".to_string(),
        "-c".to_string(),
        "printf '%s' \"$1\" > \"$2\" && shift 2 && exec \"$@\"".to_string(),
        "reload".to_string(),
        value.clone(),
        argument_file.display().to_string(),
    ];
    reload.extend(server.reload_argv());
    let port = free_port();
    let text = format!(
        r#"
[proxy]
mode = "nginx"
listen = ["127.0.0.1:{port}"]
[proxy.nginx]
{nginx_keys}{ssh}

[[app]]
name = "web"
[app.process]
command = ["true"]
"#,
        nginx_keys = server.cutover_keys(&include_dir, &reload),
        ssh = sshd.cutover_key(),
    );
    let config = Config::parse(&dir.path().join("cutover.toml"), &text).unwrap();
    let nginx_config = config.proxy.nginx.clone().unwrap();
    assert!(nginx_config.ssh.is_some());
    let nginx = Nginx::new(nginx_config.clone());
    let (a, b) = (Backend::start("A"), Backend::start("B"));
    let rt = rt();

    rt.block_on(nginx.switch("web", addr(a.port))).unwrap();
    assert_eq!(fs::read_to_string(&argument_file).unwrap(), value);
    assert!(include_dir.join("web.upstream.conf").exists());
    // The site includes the upstream through the symlink.
    let mut site_config = nginx_config.clone();
    site_config.include_dir = link.clone();
    let site = cutover_nginx::site_config(&site_config, config.app("web").unwrap(), 1 << 20, false);
    fs::write(sites.join("web.conf"), site).unwrap();
    server.reload();
    eventually(Duration::from_secs(10), "A through nginx", || {
        http_get(port, "/").is_ok_and(|(_, body)| body == "A")
    });

    let switched = rt.block_on(nginx.switch("web", addr(b.port))).unwrap();
    assert!(switched.reloaded && !switched.old_workers.is_empty());
    eventually(Duration::from_secs(10), "B through nginx", || {
        http_get(port, "/").is_ok_and(|(_, body)| body == "B")
    });
    let exit = rt.block_on(nginx.wait_exited(&switched.old_workers, Duration::from_secs(20)));
    assert!(matches!(exit, WorkersExit::Exited { .. }), "{exit:?}");

    // A failed validation over ssh restores the remote include too.
    fs::write(sites.join("broken.conf"), "this_is_not_nginx on;\n").unwrap();
    let good = fs::read_to_string(include_dir.join("web.upstream.conf")).unwrap();
    let error = rt
        .block_on(nginx.switch("web", addr(a.port)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("this_is_not_nginx"), "{error}");
    assert_eq!(
        fs::read_to_string(include_dir.join("web.upstream.conf")).unwrap(),
        good
    );

    assert_no_markers(markers.path());
    drop(sshd);
}

#[test]
fn unknown_host_key_is_refused_by_default() {
    let outer = tempfile::tempdir().unwrap();
    let sshd = SshServer::start(&outer.path().join("ssh"));
    let empty_known_hosts = outer.path().join("empty_known_hosts");
    fs::write(&empty_known_hosts, "").unwrap();
    let text = format!(
        r#"
[proxy]
mode = "nginx"
[proxy.nginx]
pid_file = "/tmp/none.pid"
include_dir = {include_dir}
ssh = {{ host = "127.0.0.1", port = {port}, user = {user}, identity_file = {key}, known_hosts_file = {known} }}
"#,
        port = sshd.port,
        user = toml_str(&sshd.user),
        key = toml_str(&sshd.identity_file.display().to_string()),
        known = toml_str(&empty_known_hosts.display().to_string()),
        include_dir = toml_str(&outer.path().display().to_string()),
    );
    let config = Config::parse(&outer.path().join("cutover.toml"), &text).unwrap();
    let nginx = Nginx::new(config.proxy.nginx.unwrap());
    let error = rt()
        .block_on(nginx.switch("web", addr(1)))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Host key verification failed"),
        "strict host key checking must refuse an unknown host: {error}"
    );
    assert!(error.contains("nothing changed"), "{error}");
    assert!(!outer.path().join("web.upstream.conf").exists());
}
