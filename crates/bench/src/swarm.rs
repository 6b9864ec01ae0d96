//! What the swarm mode needs from Docker, through the `docker` CLI: the
//! check that this engine is a swarm manager, the release image (the
//! release `cutover-testapp` with the shared libraries `ldd` names, `FROM
//! scratch`, one tag per version), the `[app.swarm]` config, and the
//! removal of everything it created — the services of its own cutover
//! instances (by their `cutover.instance` label) and its own image tags —
//! when the guard drops or a signal stops the bench.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// The port the testapp listens on in its task (env PORT from the driver).
const TASK_PORT: u16 = 8080;

/// What this run created: removed once, by the guard or the signal handler.
#[derive(Debug, Default)]
struct Leftovers {
    /// `cutover.instance` labels (absolute state dirs) of our instances.
    instances: Vec<String>,
    /// `repository:tag` of our images.
    images: Vec<String>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    instances: Vec::new(),
    images: Vec::new(),
});

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the services and images this run created (nothing else): called
/// by [`SwarmGuard`]'s drop and by the bench's signal handler.
pub fn remove_leftovers() {
    let taken = std::mem::take(&mut *leftovers());
    for instance in &taken.instances {
        remove_services(instance);
    }
    if !taken.images.is_empty() {
        let mut argv = vec!["rmi", "-f"];
        argv.extend(taken.images.iter().map(String::as_str));
        let _ = docker(&argv);
    }
}

/// Removes every service labelled with `instance` and waits (up to 30 s)
/// until their containers are gone.
pub fn remove_services(instance: &str) {
    let filter = format!("label=cutover.instance={instance}");
    let Ok(ids) = docker(&["service", "ls", "-q", "--filter", &filter]) else {
        return;
    };
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return;
    }
    let mut argv = vec!["service", "rm"];
    argv.extend(ids.iter().copied());
    let _ = docker(&argv);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && docker(&["ps", "-q", "--filter", &filter]).is_ok_and(|ps| !ps.trim().is_empty())
    {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes this run's services and images when dropped, however the mode
/// ends (an error, a panic).
pub struct SwarmGuard;

impl SwarmGuard {
    /// From now on the services of `state_dir`'s instance are removed at the end.
    pub fn track_instance(&self, state_dir: &Path) {
        leftovers().instances.push(state_dir.display().to_string());
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        remove_leftovers();
    }
}

/// `docker ARGS`, its standard output; an error with its standard error.
pub fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker")?;
    if !output.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails clearly unless this engine is an active swarm manager.
pub fn require_manager() -> Result<()> {
    let format = "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}";
    let state = docker(&["info", "--format", format]).context("no Docker engine answers")?;
    if state.trim() != "active true" {
        bail!(
            "this Docker engine is not a swarm manager ({}): run `docker swarm init --advertise-addr 127.0.0.1`",
            state.trim()
        );
    }
    Ok(())
}

/// A repository name no other run uses: `cutover-bench/swarm-<pid>-<ns>`.
pub fn unique_repository() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("cutover-bench/swarm-{}-{nanos}", std::process::id())
}

/// The absolute files `ldd` names for `binary` (libraries and loader),
/// from lines like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`
/// and `/lib64/ld-linux-x86-64.so.2 (0x…)`.
pub fn shared_libraries(ldd_output: &str) -> Vec<PathBuf> {
    ldd_output
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The Dockerfile of one version: the copied root, listening on every
/// address of the task (a published port does not reach 127.0.0.1).
pub fn dockerfile(repository: &str, version: &str, threads: u32) -> String {
    format!(
        "FROM scratch
LABEL cutover-bench.repository=\"{repository}\"
COPY rootfs/ /
ENV LISTEN_HOST=0.0.0.0
ENTRYPOINT [\"/cutover-testapp\", \"--version\", \"{version}\", \"--threads\", \"{threads}\"]
"
    )
}

/// Builds `repository:VERSION` for every version from the testapp and its
/// libraries (a temporary context); each tag is removed at the end.
pub fn build_images(
    testapp: &Path,
    repository: &str,
    versions: &[&str],
    threads: u32,
) -> Result<()> {
    let context = tempfile::tempdir()?;
    let root = context.path().join("rootfs");
    std::fs::create_dir_all(&root)?;
    std::fs::copy(testapp, root.join("cutover-testapp"))?;
    let ldd = Command::new("ldd")
        .arg(testapp)
        .output()
        .context("running ldd")?;
    for library in shared_libraries(&String::from_utf8_lossy(&ldd.stdout)) {
        let inside = root.join(library.strip_prefix("/")?);
        std::fs::create_dir_all(
            inside
                .parent()
                .context("a library path without a directory")?,
        )?;
        // Follows symlinks: the image gets the file under the name the loader asks for.
        std::fs::copy(&library, &inside)
            .with_context(|| format!("copying {}", library.display()))?;
    }
    for version in versions {
        let tag = format!("{repository}:{version}");
        let file = context.path().join(format!("Dockerfile.{version}"));
        std::fs::write(&file, dockerfile(repository, version, threads))?;
        leftovers().images.push(tag.clone());
        let context_path = context.path().display().to_string();
        let file = file.display().to_string();
        docker(&["build", "-q", "-f", &file, "-t", &tag, &context_path])?;
    }
    Ok(())
}

/// `cutover.toml` with app `bench` as a swarm service of `replicas` tasks
/// on this node; the proxy and control plane as in the other modes.
pub fn cutover_config(
    dir: &Path,
    listen: u16,
    workers: u32,
    repository: &str,
    replicas: u32,
) -> String {
    let dir = dir.display();
    format!(
        r#"state_dir = "{dir}/state"

[proxy]
listen = ["127.0.0.1:{listen}"]
access_log = "off"
workers = {workers}

[admin]
socket = "{dir}/state/admin.sock"

[[app]]
name = "bench"
hosts = ["*"]
drain_timeout = "5s"

[app.health]
path = "/health"
interval = "500ms"
timeout = "2s"
deploy_timeout = "90s"

[app.swarm]
image = "{repository}:{{version}}"
port = {TASK_PORT}
replicas = {replicas}
stop_timeout = "5s"
constraints = ["node.role == manager"]
"#
    )
}

/// Milliseconds from the event "… is healthy after …" (every task passed)
/// to the switch (the `draining` transition) in a deployment's detail
/// (`GET /v1/deployments/{id}`), as the swarm e2e test computes it.
pub fn switch_delay_ms(deployment: &serde_json::Value) -> Option<i64> {
    let events = deployment["events"].as_array()?;
    let at = |found: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .find(|e| found(e))
            .and_then(|e| e["at"].as_i64())
    };
    let healthy = at(&|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("is healthy after"))
    })?;
    let switched = at(&|e| e["state"] == "draining")?;
    Some(switched - healthy)
}

/// The host pids of the containers of service `name`'s tasks (their CPU
/// is the app's).
pub fn task_pids(service: &str) -> Vec<i32> {
    let filter = format!("label=com.docker.swarm.service.name={service}");
    let Ok(ids) = docker(&["ps", "-q", "--filter", &filter]) else {
        return Vec::new();
    };
    ids.split_whitespace()
        .filter_map(|id| docker(&["inspect", "--format", "{{.State.Pid}}", id]).ok())
        .filter_map(|pid| pid.trim().parse().ok())
        .filter(|pid| *pid > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader_by_absolute_path() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            shared_libraries(output),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_switch_delay_runs_from_the_last_healthy_task_to_draining() {
        let detail = serde_json::json!({"events": [
            {"at": 1000, "state": "starting", "message": "starting v2"},
            {"at": 4000, "state": "health_checking", "message": "v2 is healthy after 3 s"},
            {"at": 4003, "state": "draining", "message": "switched"},
        ]});
        assert_eq!(switch_delay_ms(&detail), Some(3));
        assert_eq!(switch_delay_ms(&serde_json::json!({"events": []})), None);
    }

    #[test]
    fn the_config_runs_replicas_tasks_of_the_versioned_image_on_this_node() {
        let text = cutover_config(
            Path::new("/tmp/b/sw"),
            8080,
            1,
            "cutover-bench/swarm-1-2",
            4,
        );
        let parsed =
            cutover_config::Config::parse(Path::new("/tmp/b/sw/cutover.toml"), &text).unwrap();
        assert_eq!(parsed.apps[0].name, "bench");
        assert!(text.contains("image = \"cutover-bench/swarm-1-2:{version}\"\n"));
        assert!(text.contains("replicas = 4\n"));
        assert!(text.contains("constraints = [\"node.role == manager\"]\n"));
    }

    #[test]
    fn each_version_image_runs_the_testapp_on_every_address() {
        let file = dockerfile("cutover-bench/swarm-1-2", "v2", 1);
        assert!(file.starts_with("FROM scratch\n"), "{file}");
        assert!(file.contains("ENV LISTEN_HOST=0.0.0.0\n"));
        assert!(
            file.contains("[\"/cutover-testapp\", \"--version\", \"v2\", \"--threads\", \"1\"]")
        );
    }
}
