//! Docker fixtures for tests against a real dockerd, through the `docker`
//! CLI: test images built `FROM scratch` with a static busybox (see
//! `tests/fixtures/docker/`), container listings by cutover's labels, and a
//! guard that removes a test's containers and images even when it fails,
//! and a local registry.

use crate::ports::free_port;
use crate::process::spawn_logged;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The static busybox the images are made of (Debian's `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";

/// Runs `docker` with `args`; stdin closed.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker`: {e}; scripts/test installs docker.io"))
}

/// Runs `docker` and returns its stdout; panics with its stderr if it fails.
pub fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "`docker {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fails the test at once, clearly, when no Docker engine answers.
pub fn require_docker() {
    let output = docker(&["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        output.status.success(),
        "these tests need a running Docker engine (dockerd) on /var/run/docker.sock; scripts/test installs and starts one:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("{BUSYBOX} is missing ({e}): install Debian's busybox-static (scripts/test does)")
    });
    assert!(
        !busybox
            .windows(12)
            .any(|w| w == b"/lib64/ld-li" || w == b"/lib/ld-linu"),
        "{BUSYBOX} is dynamically linked: install Debian's busybox-static (scripts/test does)"
    );
}

/// A name no other test (or earlier run) uses: `<prefix>-<pid>-<n>`, short
/// enough for an app name.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}{}", std::process::id(), nanos % 1000)
}

/// The fixture files, in the workspace's `tests/fixtures/docker`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/fixtures/docker"))
        .find(|dir| dir.join("entrypoint.sh").is_file())
        .expect("tests/fixtures/docker not found above the crate")
}

/// A build context: the fixture files plus the static busybox.
pub fn build_context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::copy(BUSYBOX, dir.path().join("busybox")).unwrap();
    dir
}

/// Builds a test image from `dockerfile` of the fixtures with build
/// arguments, tagged with every tag in `tags`.
pub fn build_image(tags: &[&str], dockerfile: &str, args: &[(&str, &str)]) {
    let context = build_context();
    let mut argv: Vec<String> = vec!["build".into(), "-q".into(), "-f".into()];
    argv.push(context.path().join(dockerfile).display().to_string());
    for tag in tags {
        argv.push("-t".into());
        argv.push((*tag).to_string());
    }
    for (name, value) in args {
        argv.push("--build-arg".into());
        argv.push(format!("{name}={value}"));
    }
    argv.push(context.path().display().to_string());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // Concurrent first builds of identical layers can race inside the
    // legacy builder ("failed to register layer"); a second try succeeds.
    for _ in 0..2 {
        if docker(&argv).status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    docker_ok(&argv);
}

#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub version: String,
    pub state: String,
}

/// Containers (running or not) labelled with this cutover instance.
pub fn containers(instance: &str) -> Vec<Container> {
    let filter = format!("label=cutover.instance={instance}");
    let listing = docker_ok(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        "{{.ID}}\t{{.Names}}\t{{.Label \"cutover.release\"}}\t{{.State}}",
    ]);
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            Some(Container {
                id: fields.next()?.to_string(),
                name: fields.next()?.to_string(),
                version: fields.next()?.to_string(),
                state: fields.next()?.to_string(),
            })
        })
        .collect()
}

/// Versions of the instance's containers, sorted.
pub fn container_versions(instance: &str) -> Vec<String> {
    let mut versions: Vec<String> = containers(instance)
        .into_iter()
        .map(|c| c.version)
        .collect();
    versions.sort();
    versions
}

pub fn image_exists(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).status.success()
}

/// Removes, when dropped, every container of a cutover instance and every
/// image of the listed repositories (also when the test failed).
pub struct Cleanup {
    pub instance: String,
    pub repositories: Vec<String>,
}

impl Cleanup {
    pub fn new(instance: &Path, repositories: &[&str]) -> Cleanup {
        Cleanup {
            instance: instance.display().to_string(),
            repositories: repositories.iter().map(|r| (*r).to_string()).collect(),
        }
    }

    pub fn remove_containers(&self) {
        let ids: Vec<String> = containers(&self.instance)
            .into_iter()
            .map(|c| c.id)
            .collect();
        if !ids.is_empty() {
            let mut argv = vec!["rm", "-f", "-v"];
            argv.extend(ids.iter().map(String::as_str));
            let _ = docker(&argv);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove_containers();
        for repository in &self.repositories {
            let filter = format!("reference={repository}");
            let listing = docker(&[
                "images",
                "--filter",
                &filter,
                "--format",
                "{{.Repository}}:{{.Tag}}",
            ]);
            let references: Vec<String> = String::from_utf8_lossy(&listing.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !references.is_empty() {
                let mut argv = vec!["rmi", "-f"];
                argv.extend(references.iter().map(String::as_str));
                let _ = docker(&argv);
            }
        }
        // Dangling images this instance's builds left (they carry its label).
        let filter = format!("label=cutover.instance={}", self.instance);
        let listing = docker(&["images", "-q", "--filter", &filter]);
        let ids: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut argv = vec!["rmi", "-f"];
            argv.extend(ids.iter().map(String::as_str));
            let _ = docker(&argv);
        }
    }
}

/// A local registry (Debian's `docker-registry`) on 127.0.0.1, stopped
/// (by its pid) when dropped.
pub struct Registry {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = spawn_logged(
            Command::new("docker-registry").arg("serve").arg(&config),
            &dir.path().join("registry.log"),
        )
            .unwrap_or_else(|e| {
                panic!("cannot run docker-registry ({e}): install Debian's docker-registry (scripts/test does)")
            });
        let registry = Registry {
            port,
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        registry
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
