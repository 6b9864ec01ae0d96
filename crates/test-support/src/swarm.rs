//! Docker Swarm fixtures, through the `docker` CLI: the check that this
//! engine is a swarm manager (scripts/test runs `docker swarm init
//! --advertise-addr 127.0.0.1` when it is not), service listings by
//! cutover's labels, and a guard that removes a test's services (and then
//! its containers and images) even when the test fails.

use crate::docker::{docker, docker_ok, require_docker, Cleanup};
use std::path::Path;
use std::time::{Duration, Instant};

/// Fails the test at once, clearly, when the engine is not a swarm manager.
pub fn require_swarm() {
    require_docker();
    let state = docker_ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    assert_eq!(
        state.trim(),
        "active true",
        "these tests need this Docker engine to be a swarm manager: scripts/test runs `docker swarm init --advertise-addr 127.0.0.1` (and leaves the swarm again at its end)"
    );
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub version: String,
}

/// Services labelled with this cutover instance.
pub fn services(instance: &str) -> Vec<Service> {
    let filter = format!("label=cutover.instance={instance}");
    let listing = docker_ok(&["service", "ls", "-q", "--filter", &filter]);
    listing
        .split_whitespace()
        .filter_map(|id| {
            let output = docker(&[
                "service",
                "inspect",
                id,
                "--format",
                "{{.ID}}\t{{.Spec.Name}}\t{{index .Spec.Labels \"cutover.release\"}}",
            ]);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let mut fields = text.trim().split('\t');
            Some(Service {
                id: fields.next()?.to_string(),
                name: fields.next()?.to_string(),
                version: fields.next()?.to_string(),
            })
        })
        .collect()
}

/// Names of the instance's services, sorted.
pub fn service_names(instance: &str) -> Vec<String> {
    let mut names: Vec<String> = services(instance).into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// The containers of service `name`'s running tasks on this node.
pub fn task_containers(name: &str) -> Vec<String> {
    let filter = format!("label=com.docker.swarm.service.name={name}");
    docker_ok(&["ps", "-q", "--no-trunc", "--filter", &filter])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes, when dropped, every service of a cutover instance, waits for
/// their containers to go, then does what [`Cleanup`] does (containers and
/// images of the listed repositories).
pub struct SwarmCleanup {
    pub images: Cleanup,
}

impl SwarmCleanup {
    pub fn new(instance: &Path, repositories: &[&str]) -> SwarmCleanup {
        SwarmCleanup {
            images: Cleanup::new(instance, repositories),
        }
    }

    pub fn instance(&self) -> &str {
        &self.images.instance
    }

    pub fn remove_services(&self) {
        let services = services(self.instance());
        for service in &services {
            let _ = docker(&["service", "rm", &service.id]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for service in &services {
            while !task_containers(&service.name).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl Drop for SwarmCleanup {
    fn drop(&mut self) {
        self.remove_services();
    }
}

/// A second Docker engine joined to this swarm as a worker: its own
/// network namespace (created here: a veth pair on 10.77.<k>.0/24), its own
/// dockerd (data root, exec root, pid file and socket under a temporary
/// directory, entered with `nsenter --net` so that it keeps the host's
/// cgroup mounts, which `ip netns exec` would hide), and a forwarder from
/// 127.0.0.1:2377 in the namespace to the manager: this manager advertises
/// 127.0.0.1 (`swarm init --advertise-addr 127.0.0.1`), which a worker
/// dials again after the join. Everything is undone when dropped: the node
/// leaves and is removed, the processes stopped by pid, the namespace
/// deleted. Needs root (the tests run as root, like dockerd).
pub struct WorkerNode {
    pub namespace: String,
    /// The worker's address (its swarm `Status.Addr`).
    pub addr: String,
    pub node_id: String,
    socket: String,
    host_veth: String,
    dockerd: Option<std::process::Child>,
    forwarder: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl WorkerNode {
    pub fn start() -> WorkerNode {
        let (mut node, host_ip) = WorkerNode::start_engine();
        node.start_forwarder(&host_ip);
        node.join(&host_ip);
        node
    }

    /// The same engine in its namespace, but it joins no swarm: a plain
    /// Docker engine, which is not a swarm manager.
    pub fn start_unjoined() -> WorkerNode {
        WorkerNode::start_engine().0
    }

    /// The engine's socket, `unix://<path>`.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Namespace, veth pair and dockerd; returns the host's address on the veth.
    fn start_engine() -> (WorkerNode, String) {
        let k = 20 + std::process::id() % 200;
        let namespace = format!("cvw{k}");
        let (host_veth, node_veth) = (format!("cvh{k}"), format!("cvn{k}"));
        let (host_ip, addr) = (format!("10.77.{k}.1"), format!("10.77.{k}.2"));
        let dir = tempfile::Builder::new()
            .prefix("cvw")
            .tempdir_in("/tmp")
            .unwrap();
        let mut node = WorkerNode {
            namespace,
            addr,
            node_id: String::new(),
            socket: format!("unix://{}", dir.path().join("docker.sock").display()),
            host_veth,
            dockerd: None,
            forwarder: None,
            dir,
        };
        node.network(&node_veth, &host_ip);
        node.start_dockerd(k);
        (node, host_ip)
    }

    fn network(&self, node_veth: &str, host_ip: &str) {
        let ns = self.namespace.as_str();
        for argv in [
            vec!["netns", "add", ns],
            vec![
                "link",
                "add",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                node_veth,
            ],
            vec!["link", "set", node_veth, "netns", ns],
            vec![
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &self.host_veth,
            ],
            vec!["link", "set", &self.host_veth, "up"],
            vec![
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", self.addr),
                "dev",
                node_veth,
            ],
            vec!["-n", ns, "link", "set", node_veth, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ] {
            run_ok("ip", &argv);
        }
    }

    /// `nsenter --net=/var/run/netns/<ns> PROGRAM ARGS`, output to `log`.
    fn in_namespace(&self, program: &str, args: &[String], log: &str) -> std::process::Child {
        let mut command = std::process::Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.namespace))
            .arg(program)
            .args(args);
        crate::process::spawn_logged(&mut command, &self.dir.path().join(log)).unwrap()
    }

    fn start_dockerd(&mut self, k: u32) {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        let args = vec![
            format!("--data-root={}", path("data")),
            format!("--exec-root={}", path("exec")),
            format!("--pidfile={}", path("dockerd.pid")),
            format!("--host={}", self.socket),
            format!("--bip=172.31.{k}.1/24"),
        ];
        self.dockerd = Some(self.in_namespace("dockerd", &args, "dockerd.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the worker's dockerd did not answer: {}",
                self.log("dockerd.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_forwarder(&mut self, host_ip: &str) {
        let script = format!(
            r#"
import socket, threading
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except OSError: pass
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 2377)); s.listen(64)
while True:
    c, _ = s.accept()
    try: u = socket.create_connection(("{host_ip}", 2377))
    except OSError: c.close(); continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"#
        );
        let args = vec!["-c".to_string(), script];
        self.forwarder = Some(self.in_namespace("python3", &args, "forwarder.log"));
    }

    fn join(&mut self, host_ip: &str) {
        let token = docker_ok(&["swarm", "join-token", "-q", "worker"]);
        let listen = format!("{}:2377", self.addr);
        let manager = format!("{host_ip}:2377");
        let joined = self.docker(&[
            "swarm",
            "join",
            "--token",
            token.trim(),
            "--advertise-addr",
            &self.addr,
            "--listen-addr",
            &listen,
            &manager,
        ]);
        assert!(
            joined.status.success(),
            "the worker could not join: {}",
            String::from_utf8_lossy(&joined.stderr)
        );
        let id = self.docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
        self.node_id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while docker_ok(&[
            "node",
            "inspect",
            &self.node_id,
            "--format",
            "{{.Status.State}}",
        ])
        .trim()
            != "ready"
        {
            assert!(Instant::now() < deadline, "the worker never became ready");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker` against the worker's engine.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        let mut argv = vec!["--host", self.socket.as_str()];
        argv.extend_from_slice(args);
        docker(&argv)
    }

    /// Copies an image of this engine to the worker (`docker save | load`).
    pub fn load_image(&self, reference: &str) {
        let saved = self.dir.path().join("image.tar");
        let path = saved.display().to_string();
        docker_ok(&["save", "-o", &path, reference]);
        let loaded = self.docker(&["load", "-q", "-i", &path]);
        assert!(
            loaded.status.success(),
            "{}",
            String::from_utf8_lossy(&loaded.stderr)
        );
        let _ = std::fs::remove_file(saved);
    }

    /// Stops the worker's engine (SIGTERM by pid: it stops its containers),
    /// as a node lost under load.
    pub fn stop_engine(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            crate::process::signal(dockerd.id(), nix::sys::signal::Signal::SIGTERM);
            if crate::process::wait_exit(&mut dockerd, Duration::from_secs(20)).is_none() {
                let _ = dockerd.kill();
                let _ = dockerd.wait();
            }
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for WorkerNode {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let _ = self.docker(&["swarm", "leave", "--force"]);
        }
        if !self.node_id.is_empty() {
            let _ = docker(&["node", "rm", "--force", &self.node_id]);
        }
        self.stop_engine();
        if let Some(mut forwarder) = self.forwarder.take() {
            let _ = forwarder.kill();
            let _ = forwarder.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
    }
}

fn run_ok(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        status.success(),
        "`{program} {}` failed: {status}",
        args.join(" ")
    );
}
