//! nginx targets: the seed's site (`proxy_pass $service_url`, no upstream
//! pool) and the same location with an upstream keep-alive pool. nginx
//! runs in the foreground (`daemon off`) as a child of the bench, with its
//! own prefix, config, pid, error log and temp paths in a scratch directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::NginxHeaders;
use crate::net;
use crate::pin::Pin;
use crate::processes::{Proc, Processes};
use crate::procfs;

/// worker_connections unless the idle mode needs more.
pub const DEFAULT_WORKER_CONNECTIONS: u32 = 4096;

/// The server-wide part, the same for both nginx targets.
pub fn main_conf(dir: &Path, workers: u32, worker_connections: u32, as_root: bool) -> String {
    let dir = dir.display();
    // Workers run as root only because the master does (a throwaway
    // loopback benchmark); it keeps the temp paths in the dir usable.
    let user = if as_root { "user root root;" } else { "" };
    let nofile = worker_connections * 2 + 1024;
    format!(
        "{user}
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    # Same for both nginx targets (server-wide, not part of the seed's site
    # config): do not close client keep-alive connections every 1000
    # requests, as cutover does not either.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    include {dir}/site.conf;
}}
"
    )
}

/// The seed's include, exactly as its deploy script writes it.
pub fn service_url_include(backend_port: u16) -> String {
    format!("set $service_url http://127.0.0.1:{backend_port};\n")
}

/// The location both sites share (the seed's headers).
const SEED_LOCATION: &str = "        proxy_redirect off;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Connection \"\";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Host $server_name;
";

/// The header work cutover does on every request (X-Forwarded-Proto and a
/// made-up X-Request-Id, sent upstream and returned to the client).
const SAME_HEADERS: &str = "        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-Id $request_id;
        add_header X-Request-Id $request_id always;
";

/// The seed's site: the backend comes from an include its deploy rewrites.
pub fn seed_site(port: u16, dir: &Path) -> String {
    format!(
        "server {{
    listen 127.0.0.1:{port};
    server_name localhost;
    include {}/service-url.inc;
    location / {{
        proxy_pass $service_url;
{SEED_LOCATION}    }}
    client_max_body_size 100M;
}}
",
        dir.display()
    )
}

/// The same location with an upstream keep-alive pool.
pub fn keepalive_site(port: u16, backend_port: u16, headers: NginxHeaders) -> String {
    upstream_site(port, &[format!("127.0.0.1:{backend_port}")], headers)
}

/// The keep-alive pool over several backends (`host:port`), balanced
/// round-robin (nginx's default), as the swarm mode compares.
pub fn upstream_site(port: u16, backends: &[String], headers: NginxHeaders) -> String {
    let same = match headers {
        NginxHeaders::Same => SAME_HEADERS,
        NginxHeaders::Seed => "",
    };
    let servers: String = backends
        .iter()
        .map(|addr| format!("    server {addr};\n"))
        .collect();
    format!(
        "upstream backend {{
{servers}    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
}}
server {{
    listen 127.0.0.1:{port};
    server_name localhost;
    location / {{
        proxy_pass http://backend;
{SEED_LOCATION}{same}    }}
    client_max_body_size 100M;
}}
"
    )
}

/// Where nginx is: on PATH, or in the sbin directories a non-root PATH lacks.
pub fn binary() -> Option<PathBuf> {
    crate::tools::find("nginx", &["/usr/sbin", "/sbin"])
}

/// How to start one nginx.
pub struct NginxSpec<'a> {
    pub dir: PathBuf,
    pub port: u16,
    pub workers: u32,
    pub worker_connections: u32,
    pub site: String,
    /// Written as `service-url.inc` (the seed site) before the start.
    pub include: Option<String>,
    pub pin: &'a Pin,
}

/// A running nginx (master in the foreground).
pub struct Nginx {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    binary: PathBuf,
}

impl Nginx {
    /// Writes the configs, tests them and starts nginx; waits until it listens.
    pub fn start(processes: &Processes, spec: NginxSpec<'_>) -> Result<Nginx> {
        let binary = binary().context("nginx not found")?;
        let dir = spec.dir;
        std::fs::create_dir_all(dir.join("tmp"))?;
        let as_root = nix::unistd::geteuid().is_root();
        let conf = main_conf(&dir, spec.workers, spec.worker_connections, as_root);
        std::fs::write(dir.join("nginx.conf"), conf)?;
        std::fs::write(dir.join("site.conf"), &spec.site)?;
        if let Some(include) = &spec.include {
            std::fs::write(dir.join("service-url.inc"), include)?;
        }
        let test = nginx_command(Command::new(&binary), &dir)
            .args(["-t", "-q"])
            .output()
            .context("running nginx -t")?;
        if !test.status.success() {
            bail!(
                "nginx config test failed: {}",
                String::from_utf8_lossy(&test.stderr)
            );
        }
        let mut command = nginx_command(spec.pin.command(&binary), &dir);
        command
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout"))?)
            .stderr(File::create(dir.join("stderr"))?);
        let proc = processes.spawn("nginx", command)?.proc;
        let nginx = Nginx {
            proc,
            port: spec.port,
            dir,
            binary,
        };
        if !net::wait_listening(nginx.port, Duration::from_secs(10), || {
            processes.is_running(&nginx.proc)
        }) {
            let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
            processes.stop(&nginx.proc);
            bail!("nginx did not start: {log}");
        }
        Ok(nginx)
    }

    /// The master and its workers: what the proxy's CPU and memory are.
    pub fn pids(&self) -> Vec<i32> {
        let workers = procfs::children(self.proc.pid).into_iter().map(|s| s.pid);
        std::iter::once(self.proc.pid).chain(workers).collect()
    }

    /// The seed's switch: point the include at `backend_port`, `nginx -s reload`.
    pub fn switch_backend(&self, backend_port: u16) -> Result<()> {
        std::fs::write(
            self.dir.join("service-url.inc"),
            service_url_include(backend_port),
        )?;
        let reload = nginx_command(Command::new(&self.binary), &self.dir)
            .args(["-s", "reload"])
            .output()
            .context("running nginx -s reload")?;
        if !reload.status.success() {
            bail!(
                "nginx -s reload: {}",
                String::from_utf8_lossy(&reload.stderr)
            );
        }
        Ok(())
    }
}

fn nginx_command(mut command: Command, dir: &Path) -> Command {
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_config_keeps_everything_in_its_directory() {
        let conf = main_conf(Path::new("/tmp/b/ngx"), 2, 4096, true);
        assert!(
            conf.starts_with("user root root;\nworker_processes 2;\n"),
            "{conf}"
        );
        assert!(conf.contains("\nworker_rlimit_nofile 9216;\n"));
        assert!(conf.contains("events { worker_connections 4096; }"));
        assert!(conf.contains("    access_log off;\n    # Same"));
        assert!(conf.contains("    keepalive_requests 1000000;\n"));
        assert!(conf.contains("    proxy_temp_path /tmp/b/ngx/tmp/proxy;\n"));
        assert!(conf.contains("    include /tmp/b/ngx/site.conf;\n}\n"));
        assert!(main_conf(Path::new("/x"), 1, 1, false).starts_with("\nworker_processes 1;"));
    }

    #[test]
    fn the_seed_site_proxies_to_the_variable_from_its_include() {
        let site = seed_site(8080, Path::new("/tmp/b/seed"));
        let expected = r#"server {
    listen 127.0.0.1:8080;
    server_name localhost;
    include /tmp/b/seed/service-url.inc;
    location / {
        proxy_pass $service_url;
        proxy_redirect off;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Connection "";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Host $server_name;
    }
    client_max_body_size 100M;
}
"#;
        assert_eq!(site, expected);
        assert_eq!(
            service_url_include(4000),
            "set $service_url http://127.0.0.1:4000;\n"
        );
    }

    #[test]
    fn the_keepalive_site_pools_and_does_the_same_header_work_unless_told_not_to() {
        let site = keepalive_site(8081, 4000, NginxHeaders::Same);
        assert!(site.starts_with(
            "upstream backend {\n    server 127.0.0.1:4000;\n    keepalive 64;\n    keepalive_requests 1000000;\n"
        ));
        assert!(site.contains("    listen 127.0.0.1:8081;\n"));
        assert!(site.contains("        proxy_pass http://backend;\n        proxy_redirect off;\n"));
        assert!(site.contains(
            "X-Forwarded-Host $server_name;\n        proxy_set_header X-Forwarded-Proto $scheme;\n        proxy_set_header X-Request-Id $request_id;\n        add_header X-Request-Id $request_id always;\n    }\n"
        ));
        let seed_headers = keepalive_site(8081, 4000, NginxHeaders::Seed);
        assert!(!seed_headers.contains("X-Request-Id"));
        assert!(seed_headers.contains("X-Forwarded-Host $server_name;\n    }\n"));
    }

    #[test]
    fn the_upstream_site_lists_every_backend_in_one_keepalive_pool() {
        let backends = ["127.0.0.1:4000".to_string(), "127.0.0.1:4001".to_string()];
        let site = upstream_site(8081, &backends, NginxHeaders::Same);
        assert!(site.starts_with(
            "upstream backend {\n    server 127.0.0.1:4000;\n    server 127.0.0.1:4001;\n    keepalive 64;\n"
        ), "{site}");
        assert!(site.contains("        proxy_pass http://backend;\n"));
    }

    #[test]
    fn rendered_configs_pass_nginx_config_test() {
        // scripts/test installs nginx: a missing binary is a broken set-up, not a skip.
        let binary = binary().expect("nginx is not installed (scripts/test installs it)");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let as_root = nix::unistd::geteuid().is_root();
        for site in [
            seed_site(1, dir.path()),
            keepalive_site(1, 2, NginxHeaders::Same),
            upstream_site(
                1,
                &["127.0.0.1:2".into(), "127.0.0.1:3".into()],
                NginxHeaders::Same,
            ),
        ] {
            std::fs::write(
                dir.path().join("nginx.conf"),
                main_conf(dir.path(), 1, 64, as_root),
            )
            .unwrap();
            std::fs::write(dir.path().join("site.conf"), site).unwrap();
            std::fs::write(dir.path().join("service-url.inc"), service_url_include(2)).unwrap();
            let test = nginx_command(Command::new(&binary), dir.path())
                .args(["-t", "-q"])
                .output()
                .unwrap();
            assert!(
                test.status.success(),
                "{}",
                String::from_utf8_lossy(&test.stderr)
            );
        }
    }
}
