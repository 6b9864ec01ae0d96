//! Releases as local processes.
//!
//! Each release runs `[app.process] command` directly (no shell) in its own
//! process group, with stdin closed and stdout and stderr appended to the
//! release's log file, opened as the child's own stdio: the release keeps
//! running and logging when cutover dies (even `kill -9`) and is adopted
//! again after a restart.
//!
//! A release is found again through its [`RuntimeId`] (pid, start time,
//! port) and, for orphan clean-up, through marker variables in its
//! environment (`CUTOVER_INSTANCE`, `CUTOVER_APP`, ...), read back from
//! `/proc/<pid>/environ`. Linux only: everything here reads `/proc`.
//!
//! Stopping sends the configured signal to the whole group, waits up to
//! `stop_timeout` for the group leader to exit (the exit watch of our own
//! child, or `/proc` polled with backoff for an adopted one: nothing else
//! signals the end of a process that is not our child), then SIGKILLs the
//! group; nothing of the group is left running afterwards.

mod command;
mod procfs;
mod runtime_id;

pub use runtime_id::RuntimeId;

use crate::{Driver, DriverError, Endpoint, ExitWatch, ReleaseSpec, StartedRelease};
use async_trait::async_trait;
use command::Placeholders;
use cutover_config::{ProcessConfig, Slot, StopSignal};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Marker variables set in every release's environment.
pub const ENV_INSTANCE: &str = "CUTOVER_INSTANCE";
pub const ENV_APP: &str = "CUTOVER_APP";
pub const ENV_SLOT: &str = "CUTOVER_SLOT";
pub const ENV_VERSION: &str = "CUTOVER_VERSION";
pub const ENV_DEPLOYMENT: &str = "CUTOVER_DEPLOYMENT";
pub const ENV_PORT: &str = "CUTOVER_PORT";

/// How often an adopted release (not our child) is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// How long a SIGKILLed process may take to disappear before we give up.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);

/// Runs releases as local processes. See the [module docs](self).
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

struct Inner {
    app: String,
    config: ProcessConfig,
    /// Identifies this cutover instance (its state dir) in `CUTOVER_INSTANCE`.
    instance: String,
    /// Exit watches of the releases that are our own children, by (pid, start).
    children: Arc<Mutex<Children>>,
}

type Children = HashMap<(i32, u64), watch::Receiver<Option<String>>>;

impl ProcessDriver {
    /// `instance` identifies this cutover instance (its absolute state_dir),
    /// so that orphan clean-up never touches processes of another cutover on
    /// the same host.
    pub fn new(app: &str, config: ProcessConfig, instance: &str) -> ProcessDriver {
        ProcessDriver {
            inner: Arc::new(Inner {
                app: app.to_string(),
                config,
                instance: instance.to_string(),
                children: Arc::new(Mutex::new(HashMap::new())),
            }),
        }
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    /// Nothing to build for a process; checks that the working directory
    /// and the program exist, so a typo fails before anything starts.
    async fn prepare(&self, spec: &ReleaseSpec) -> Result<(), DriverError> {
        let port = self
            .inner
            .config
            .ports
            .map_or(0, |ports| ports.of(spec.slot));
        let argv = self.inner.argv(spec, port);
        self.inner.program(&argv)?;
        Ok(())
    }

    async fn start(&self, spec: &ReleaseSpec) -> Result<StartedRelease, DriverError> {
        self.inner.start(spec).await
    }

    async fn stop(&self, runtime_id: &str) -> Result<(), DriverError> {
        let id: RuntimeId = runtime_id.parse()?;
        self.inner.stop(id).await
    }

    async fn adopt(
        &self,
        runtime_id: &str,
        recorded: &[Endpoint],
    ) -> Result<Option<StartedRelease>, DriverError> {
        let id: RuntimeId = runtime_id.parse()?;
        let addr = match (id.port, recorded.first()) {
            (0, Some(endpoint)) => endpoint.addr,
            (port, _) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        };
        if !procfs::is_running(id.pid, id.start) {
            debug!(app = %self.inner.app, pid = id.pid, "release {id} is gone; nothing to adopt");
            return Ok(None);
        }
        let ours = self.inner.child_watch(id);
        let exited = match ours {
            Some(receiver) => ExitWatch::new(receiver),
            None => watch_adopted(id),
        };
        info!(app = %self.inner.app, pid = id.pid, %addr, "adopted {}", self.inner.label(id.pid));
        Ok(Some(StartedRelease::single(
            Endpoint::new(addr, format!("pid {}", id.pid)),
            id.to_string(),
            exited,
        )))
    }

    async fn stop_orphans(&self, app: &str, keep: &[String]) -> Result<Vec<String>, DriverError> {
        let keep: HashSet<(i32, u64)> = keep
            .iter()
            .filter_map(|text| match text.parse::<RuntimeId>() {
                Ok(id) => Some(id.process()),
                Err(_) => {
                    warn!(
                        app,
                        "ignoring `{text}` in the releases to keep: not a process runtime id"
                    );
                    None
                }
            })
            .collect();
        let (instance, scanned_app) = (self.inner.instance.clone(), app.to_string());
        let orphans =
            tokio::task::spawn_blocking(move || find_orphans(&instance, &scanned_app, &keep))
                .await
                .map_err(|e| DriverError::Io {
                    context: format!("scanning /proc for orphaned releases of {app} failed"),
                    source: io::Error::other(e),
                })?;
        let mut stops = JoinSet::new();
        for orphan in orphans {
            warn!(app, pid = orphan.id.pid, "stopping {} (pid {}): a release of {app} that no deployment recorded, left behind by an earlier run", orphan.slot, orphan.id.pid);
            let inner = Arc::clone(&self.inner);
            stops.spawn(async move { (orphan.id, inner.stop(orphan.id).await) });
        }
        let mut stopped = Vec::new();
        let mut first_error = None;
        while let Some(joined) = stops.join_next().await {
            match joined {
                Ok((id, Ok(()))) => stopped.push(id.to_string()),
                Ok((_, Err(e))) => {
                    warn!(app, "could not stop an orphaned release: {e}");
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(DriverError::Io {
                        context: format!("stopping an orphaned release of {app} failed"),
                        source: io::Error::other(e),
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                stopped.sort();
                Ok(stopped)
            }
        }
    }
}

impl Inner {
    /// The command with its placeholders expanded.
    fn argv(&self, spec: &ReleaseSpec, port: u16) -> Vec<OsString> {
        let placeholders = Placeholders {
            port,
            version: &spec.version,
            slot: spec.slot,
            app: &spec.app,
            artifact: spec
                .artifact
                .as_deref()
                .map(Path::as_os_str)
                .unwrap_or_default(),
        };
        self.config
            .command
            .iter()
            .map(|arg| placeholders.expand(arg))
            .collect()
    }

    /// Checks the working directory and finds the program of `argv`.
    fn program(&self, argv: &[OsString]) -> Result<PathBuf, DriverError> {
        command::check_working_dir(&self.config.working_dir)?;
        let first = argv.first().map(OsString::as_os_str).unwrap_or_default();
        let path_var = match self.config.env.get("PATH") {
            Some(path) => Some(OsString::from(path)),
            None => std::env::var_os("PATH"),
        };
        command::resolve_program(first, &self.config.working_dir, path_var.as_deref())
    }

    /// Port, command, spawn, identify the process, watch its exit.
    async fn start(&self, spec: &ReleaseSpec) -> Result<StartedRelease, DriverError> {
        let port = match self.config.ports {
            Some(ports) => {
                let port = ports.of(spec.slot);
                ensure_port_free(port, spec.slot)?;
                port
            }
            None => free_port(spec.slot)?,
        };
        let argv = self.argv(spec, port);
        let program = self.program(&argv)?;
        let (first, args) = argv.split_first().ok_or_else(|| DriverError::Program {
            program: String::new(),
            problem: "the command is empty".to_string(),
        })?;
        let log = open_log(&spec.log_path)?;
        let mut command = self.command(spec, &program, (first, args), port, log);
        let mut child = command.spawn().map_err(|e| DriverError::Spawn {
            program: first.to_string_lossy().into_owned(),
            source: io::Error::new(
                e.kind(),
                format!(
                    "{e} (executing {} in working dir {})",
                    program.display(),
                    self.config.working_dir.display()
                ),
            ),
        })?;
        let (pid, stat) = identify(&mut child, first, spec.slot).await?;
        let id = RuntimeId {
            pid,
            start: stat.start,
            port,
        };
        let exited = self.watch_child(child, id, spec.slot);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        info!(
            app = %self.app, slot = %spec.slot, version = %spec.version, pid, %addr,
            "started {} (pid {pid}) on {addr}: {}",
            spec.slot,
            display_argv(&argv)
        );
        Ok(StartedRelease::single(
            Endpoint::new(addr, format!("pid {pid}")),
            id.to_string(),
            exited,
        ))
    }

    /// The release's command: its own process group, no stdin, output to
    /// the log, and the marker variables in its environment.
    fn command(
        &self,
        spec: &ReleaseSpec,
        program: &Path,
        (first, args): (&OsString, &[OsString]),
        port: u16,
        (stdout, stderr): (File, File),
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command
            .arg0(first)
            .args(args)
            .current_dir(&self.config.working_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        // Inherited markers (cutover run from inside a release) would lie.
        for (name, _) in std::env::vars_os() {
            if name.as_encoded_bytes().starts_with(b"CUTOVER_") {
                command.env_remove(name);
            }
        }
        command
            .env("PORT", port.to_string())
            .envs(&self.config.env)
            .env(ENV_APP, &spec.app)
            .env(ENV_SLOT, spec.slot.as_str())
            .env(ENV_VERSION, &spec.version)
            .env(ENV_DEPLOYMENT, spec.deployment_id.to_string())
            .env(ENV_PORT, port.to_string())
            .env(ENV_INSTANCE, &self.instance);
        command
    }

    /// Waits for the child in the background: the exit watch of the release.
    fn watch_child(
        &self,
        mut child: tokio::process::Child,
        id: RuntimeId,
        slot: Slot,
    ) -> ExitWatch {
        let (sender, receiver) = watch::channel(None);
        self.lock_children().insert(id.process(), receiver.clone());
        let children = Arc::clone(&self.children);
        let app = self.app.clone();
        let pid = id.pid;
        tokio::spawn(async move {
            let description = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("could no longer be watched: {e}"),
            };
            info!(app = %app, pid, "{slot} (pid {pid}) {description}");
            sender.send_replace(Some(description));
            children
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id.process());
        });
        ExitWatch::new(receiver)
    }
}

/// The spawned child's pid and `/proc` stat (its start time identifies it);
/// a child that cannot be identified is killed.
async fn identify(
    child: &mut tokio::process::Child,
    first: &OsStr,
    slot: Slot,
) -> Result<(i32, procfs::Stat), DriverError> {
    // Until we wait for it, the child cannot be reaped, so its /proc
    // entry is there even if it exited already.
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    let stat = pid.and_then(procfs::stat);
    if let (Some(pid), Some(stat)) = (pid, stat) {
        return Ok((pid, stat));
    }
    match pid {
        Some(pid) => drop(killpg(Pid::from_raw(pid), Signal::SIGKILL)),
        None => drop(child.start_kill()),
    }
    let _ = child.wait().await;
    Err(DriverError::Io {
        context: format!(
            "started {} for {} but could not read its /proc entry",
            first.to_string_lossy(),
            slot
        ),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

impl Inner {
    fn lock_children(&self) -> std::sync::MutexGuard<'_, Children> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The exit watch of `id` if it is our own child and still watched.
    fn child_watch(&self, id: RuntimeId) -> Option<watch::Receiver<Option<String>>> {
        self.lock_children().get(&id.process()).cloned()
    }

    /// "blue (pid 1234)", from the release's own environment when readable.
    fn label(&self, pid: i32) -> String {
        let slot = procfs::environ(pid, &[ENV_SLOT])
            .and_then(|mut env| env.remove(ENV_SLOT))
            .map(|slot| slot.to_string_lossy().into_owned());
        format!("{} (pid {pid})", slot.as_deref().unwrap_or("release"))
    }

    /// Signal, grace period, SIGKILL; afterwards nothing of the release's
    /// process group is running.
    async fn stop(&self, id: RuntimeId) -> Result<(), DriverError> {
        let label = self.label(id.pid);
        if !procfs::is_running(id.pid, id.start) {
            debug!(app = %self.app, pid = id.pid, "{label} had already exited");
            return self.kill_leftovers(id, &label).await;
        }
        let signal = to_signal(self.config.stop_signal);
        let began = Instant::now();
        signal_group(id.pid, signal, &label)?;
        if self.wait_exit(id, self.config.stop_timeout).await {
            let leftovers = scan_group(id.pid).await.len();
            // Whatever the leader left in its group goes with it.
            signal_group(id.pid, Signal::SIGKILL, &label)?;
            if leftovers == 0 {
                info!(app = %self.app, pid = id.pid, "stopped {label} after {} with {signal}", human(began.elapsed()));
            } else {
                warn!(app = %self.app, pid = id.pid, "stopped {label} after {} with {signal}; killed {leftovers} process(es) of its group that outlived it", human(began.elapsed()));
            }
        } else {
            signal_group(id.pid, Signal::SIGKILL, &label)?;
            if !self.wait_exit(id, KILL_WAIT).await {
                return Err(DriverError::Io {
                    context: format!(
                        "{label} is still running {} after SIGKILL (stuck in the kernel?); check it with `ps -o pid,stat,wchan -p {}`",
                        human(KILL_WAIT),
                        id.pid
                    ),
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            warn!(
                app = %self.app, pid = id.pid,
                "{label} did not stop within {} of {signal}; killed its process group with SIGKILL after {}",
                human(self.config.stop_timeout),
                human(began.elapsed())
            );
        }
        wait_group_gone(id.pid, &label).await
    }

    /// The leader of `id` is gone; kills what it left running in its group.
    /// Only processes that prove to be ours (started after the leader, with
    /// this instance's marker) count: the group id may have been reused.
    async fn kill_leftovers(&self, id: RuntimeId, label: &str) -> Result<(), DriverError> {
        let instance = OsString::from(&self.instance);
        let ours: Vec<i32> = scan_group(id.pid)
            .await
            .into_iter()
            .filter(|(pid, stat)| {
                stat.start >= id.start
                    && procfs::environ(*pid, &[ENV_INSTANCE])
                        .is_some_and(|env| env.get(ENV_INSTANCE) == Some(&instance))
            })
            .map(|(pid, _)| pid)
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        warn!(app = %self.app, pid = id.pid, "{label} had exited but left {} process(es) of its group running ({ours:?}); killing them", ours.len());
        signal_group(id.pid, Signal::SIGKILL, label)?;
        wait_group_gone(id.pid, label).await
    }

    /// Waits up to `timeout` for the leader of `id` to exit; true if it did.
    async fn wait_exit(&self, id: RuntimeId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if let Some(mut receiver) = self.child_watch(id) {
            let waited =
                tokio::time::timeout_at(deadline.into(), receiver.wait_for(Option::is_some))
                    .await
                    .map(|state| state.is_ok());
            match waited {
                Ok(true) => return true,
                Err(_elapsed) => return false,
                // The waiter went away (runtime shutting down): poll instead.
                Ok(false) => {}
            }
        }
        // Not our child: nothing signals its end, so poll /proc.
        poll_until(deadline, || !procfs::is_running(id.pid, id.start)).await
    }
}

/// Polls `done` with backoff (10ms doubling to 100ms) until `deadline`.
async fn poll_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    let mut delay = POLL_FIRST;
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(POLL_MAX);
    }
}

/// Waits until no process of group `pgid` runs any more (zombies do not
/// count: pid 1 may never reap them), SIGKILLing stragglers (a fork that
/// raced the first kill) on the way.
async fn wait_group_gone(pgid: i32, label: &str) -> Result<(), DriverError> {
    let deadline = Instant::now() + KILL_WAIT;
    let mut delay = POLL_FIRST;
    loop {
        if matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH)) {
            return Ok(());
        }
        let members = scan_group(pgid).await;
        if members.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let pids: Vec<i32> = members.iter().map(|(pid, _)| *pid).collect();
            return Err(DriverError::Io {
                context: format!(
                    "processes {pids:?} of {label}'s group are still running {} after SIGKILL; check them with `ps -o pid,stat,wchan -g {pgid}`",
                    human(KILL_WAIT)
                ),
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
        signal_group(pgid, Signal::SIGKILL, label)?;
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(POLL_MAX);
    }
}

/// Running members of group `pgid`, scanned off the async threads.
async fn scan_group(pgid: i32) -> Vec<(i32, procfs::Stat)> {
    tokio::task::spawn_blocking(move || procfs::group_members(pgid))
        .await
        .unwrap_or_default()
}

/// Sends `signal` to process group `pgid`; a group that is gone is fine.
fn signal_group(pgid: i32, signal: Signal, label: &str) -> Result<(), DriverError> {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(DriverError::Io {
            context: format!("could not send {signal} to the process group of {label}"),
            source: io::Error::from(e),
        }),
    }
}

/// An exit watch for a release that is not our child, fed by polling.
fn watch_adopted(id: RuntimeId) -> ExitWatch {
    let (sender, receiver) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Nobody watches any more.
                () = sender.closed() => return,
                () = tokio::time::sleep(ADOPTED_POLL) => {}
            }
            if !procfs::is_running(id.pid, id.start) {
                sender.send_replace(Some("exited (observed after restart)".to_string()));
                return;
            }
        }
    });
    ExitWatch::new(receiver)
}

struct Orphan {
    id: RuntimeId,
    slot: String,
}

/// Group leaders started by `instance` for `app` that are not in `keep`
/// and were not started by a kept release (a daemon it spawned).
fn find_orphans(instance: &str, app: &str, keep: &HashSet<(i32, u64)>) -> Vec<Orphan> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut orphans = Vec::new();
    for pid in procfs::pids() {
        let Some(stat) = procfs::stat(pid) else {
            continue;
        };
        if pid == me || stat.pgid != pid || !stat.is_running() || keep.contains(&(pid, stat.start))
        {
            continue;
        }
        let Some(env) = procfs::environ(pid, &[ENV_INSTANCE, ENV_APP, ENV_SLOT, ENV_PORT, "PORT"])
        else {
            continue;
        };
        let is = |name: &str, value: &str| {
            env.get(name)
                .is_some_and(|v| v.as_os_str() == OsStr::new(value))
        };
        if !is(ENV_INSTANCE, instance) || !is(ENV_APP, app) || descends_from(stat.ppid, keep) {
            continue;
        }
        let port = [ENV_PORT, "PORT"]
            .iter()
            .find_map(|name| env.get(*name)?.to_str()?.parse::<u16>().ok())
            .unwrap_or(0);
        let slot = env.get(ENV_SLOT).map_or_else(
            || "release".to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        orphans.push(Orphan {
            id: RuntimeId {
                pid,
                start: stat.start,
                port,
            },
            slot,
        });
    }
    orphans
}

/// True if `pid` or one of its ancestors is a process in `keep`.
fn descends_from(mut pid: i32, keep: &HashSet<(i32, u64)>) -> bool {
    for _ in 0..64 {
        if pid <= 1 {
            return false;
        }
        let Some(stat) = procfs::stat(pid) else {
            return false;
        };
        if keep.contains(&(pid, stat.start)) {
            return true;
        }
        pid = stat.ppid;
    }
    false
}

/// Fails if something already listens on the slot's fixed port.
fn ensure_port_free(port: u16, slot: Slot) -> Result<(), DriverError> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_listener) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(DriverError::PortInUse { port, slot })
        }
        Err(e) => {
            // E.g. a privileged port the release may bind with its own
            // capabilities: let the release try.
            warn!(port, %slot, "could not check that port {port} is free ({e}); starting anyway");
            Ok(())
        }
    }
}

/// A port nothing listens on right now.
fn free_port(slot: Slot) -> Result<u16, DriverError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| DriverError::Io {
            context: format!("could not find a free port on 127.0.0.1 for slot {slot}"),
            source,
        })
}

/// Opens the log for appending, twice (stdout and stderr), creating its directory.
fn open_log(path: &Path) -> Result<(File, File), DriverError> {
    let log_error = |source| DriverError::Log {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(log_error)?;
    }
    // Release output may hold anything the app prints: the owner's alone.
    let stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(log_error)?;
    let stderr = stdout.try_clone().map_err(log_error)?;
    Ok((stdout, stderr))
}

fn to_signal(signal: StopSignal) -> Signal {
    match signal {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Usr1 => Signal::SIGUSR1,
        StopSignal::Usr2 => Signal::SIGUSR2,
    }
}

/// "exited with code 3", "killed by signal SIGKILL".
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(number) => {
            let name = Signal::try_from(number)
                .map_or_else(|_| format!("{number}"), |s| s.as_str().to_string());
            let core = if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            };
            format!("killed by signal {name}{core}")
        }
        None => format!("ended ({status})"),
    }
}

fn human(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

fn display_argv(argv: &[OsString]) -> String {
    argv.iter()
        .map(|arg| format!("{:?}", arg.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}
